from __future__ import annotations

import dataclasses

import pytest

from hotpod.errors import SpecError
from hotpod.volume import Volume


def test_seed_constructor() -> None:
    volume = Volume(name="data", mount_path="/data", pvc="shared-data-pvc")
    assert volume.claim_name == "shared-data-pvc"
    assert not volume.creates_claim
    assert volume.size_bytes is None
    assert repr(volume) == "Volume(name='data', mount_path='/data', pvc='shared-data-pvc')"


def test_size_creates_a_claim_named_after_the_volume() -> None:
    volume = Volume("cache", "/cache", size="100Gi", storage_class="fast-ssd")
    assert volume.creates_claim
    assert volume.claim_name == "cache"
    assert volume.size_bytes == 100 * 2**30
    assert Volume("cache", "/cache", size=1024).size == "1024"


def test_neither_pvc_nor_size() -> None:
    volume = Volume("models", "/models", access_mode="ReadWriteMany")
    assert volume.claim_name == "models"
    assert volume.to_dict() == {
        "name": "models",
        "mount_path": "/models",
        "pvc": None,
        "size": None,
        "storage_class": None,
        "access_mode": "ReadWriteMany",
    }


@pytest.mark.parametrize(
    ("given", "normal"), [("/data/", "/data"), ("//data/./x/../y", "/data/y"), ("/a//b", "/a/b")]
)
def test_mount_path_is_normalised(given: str, normal: str) -> None:
    assert Volume("v", given).mount_path == normal


def test_value_semantics() -> None:
    assert Volume("v", "/data/") == Volume("v", "/data")
    assert hash(Volume("v", "/data/")) == hash(Volume("v", "/data"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        Volume("v", "/data").name = "w"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"name": "Data", "mount_path": "/d"}, "name='Data': expected a DNS-1123 label"),
        ({"name": "d", "mount_path": "data"}, "mount_path='data': expected an absolute path"),
        ({"name": "d", "mount_path": "/"}, "mount_path='/': expected an absolute path"),
        ({"name": "d", "mount_path": "/.."}, "mount_path='/..'"),
        ({"name": "d", "mount_path": "/a:b"}, "mount_path='/a:b'"),
        ({"name": "d", "mount_path": None}, "mount_path=None"),
        ({"name": "d", "mount_path": "/d", "pvc": "Bad_PVC"}, "pvc='Bad_PVC': expected a DNS"),
        ({"name": "d", "mount_path": "/d", "size": "10 GB"}, "size='10 GB': expected a quantity"),
        ({"name": "d", "mount_path": "/d", "pvc": "p", "size": "1Gi"}, "were both given"),
        ({"name": "d", "mount_path": "/d", "storage_class": "fast"}, "pass size= as well"),
        (
            {"name": "d", "mount_path": "/d", "access_mode": "RWX"},
            "access_mode='RWX': expected one",
        ),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        Volume(**kwargs)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_storage_class_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        Volume("d", "/d", None, "1Gi", "fast")  # type: ignore[misc]
