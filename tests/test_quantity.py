from __future__ import annotations

import pickle

import pytest

from hotpod._quantity import (
    FrozenMap,
    check_annotation_map,
    check_dns_label,
    check_dns_subdomain,
    check_env_map,
    check_label_map,
    cpu_quantity,
    memory_quantity,
    parse_cpu,
    parse_memory,
)
from hotpod.errors import SpecError


@pytest.mark.parametrize(
    ("value", "cores"),
    [("4", 4.0), ("0.5", 0.5), ("500m", 0.5), ("1m", 0.001), (" 2 ", 2.0), (2, 2.0), (0.5, 0.5)],
)
def test_parse_cpu(value: object, cores: float) -> None:
    assert parse_cpu(value) == pytest.approx(cores)


@pytest.mark.parametrize("value", ["four", "", "-1", "0", "0m", "1.5.2", "4 cores", True, None, 0])
def test_parse_cpu_rejects(value: object) -> None:
    with pytest.raises(SpecError) as info:
        parse_cpu(value)
    assert str(info.value).startswith(f"cpus={value!r}: expected a number of cores")


def test_parse_cpu_message_matches_the_contract() -> None:
    with pytest.raises(SpecError, match=r"^cpus='four': expected a number of cores like '4', "):
        parse_cpu("four")


def test_parse_cpu_names_the_given_argument() -> None:
    with pytest.raises(SpecError, match=r"^limit='x': "):
        parse_cpu("x", arg="limit")


@pytest.mark.parametrize(
    ("value", "spelled"), [("500m", "500m"), (" 4 ", "4"), (2, "2"), (2.0, "2"), (0.5, "500m")]
)
def test_cpu_quantity(value: object, spelled: str) -> None:
    assert cpu_quantity(value) == spelled


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("16Gi", 16 * 2**30),
        ("512Mi", 512 * 2**20),
        ("1Ki", 1024),
        ("1Ti", 2**40),
        ("1Pi", 2**50),
        ("1Ei", 2**60),
        ("1k", 1000),
        ("100M", 100 * 10**6),
        ("1G", 10**9),
        ("1T", 10**12),
        ("1P", 10**15),
        ("1E", 10**18),
        ("1e9", 10**9),
        ("1.5Gi", 3 * 2**29),
        ("1000", 1000),
        ("0.5", 1),
        (1000, 1000),
        (1.5e9, 1_500_000_000),
    ],
)
def test_parse_memory(value: object, size: int) -> None:
    assert parse_memory(value, "memory") == size


@pytest.mark.parametrize(
    "value", ["16GB", "16gi", "1K", "lots", "", "0", "-1Gi", "1e", "100Ei", True, None, [1]]
)
def test_parse_memory_rejects(value: object) -> None:
    with pytest.raises(SpecError) as info:
        parse_memory(value, "memory")
    message = str(info.value)
    assert message.startswith(f"memory={value!r}: expected a quantity of bytes like '16Gi'")


def test_memory_quantity() -> None:
    assert memory_quantity(" 16Gi ") == "16Gi"
    assert memory_quantity(2048) == "2048"


def test_dns_names() -> None:
    assert check_dns_label("my-name", "name") == "my-name"
    assert check_dns_subdomain("my.name-2", "name") == "my.name-2"
    for bad in ["My-Name", "-x", "x-", "a" * 64, "a.b", "", 3]:
        with pytest.raises(SpecError, match=r"^name=.*: expected a DNS-1123 label"):
            check_dns_label(bad, "name")
    for bad in ["My.Name", ".x", "x.", "a" * 254, "a_b", None]:
        with pytest.raises(SpecError, match=r"^name=.*: expected a DNS-1123 subdomain"):
            check_dns_subdomain(bad, "name")


def test_label_map_accepts_prefixes_and_empty_values() -> None:
    labels = {"team": "ml-research", "example.com/tier": "a_b.c", "nvidia.com/gpu.product": ""}
    assert check_label_map(labels, "labels") == labels
    assert check_label_map(labels, "labels") is not labels


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        ({"Team!": "x"}, "labels key 'Team!': expected a label key"),
        ({"Bad_Prefix/x": "x"}, "labels key 'Bad_Prefix/x'"),
        ({"a" * 64: "x"}, "labels key 'aaaa"),
        ({"team": "ML research"}, "labels['team']='ML research': expected a label value"),
        ({"team": "-x"}, "labels['team']='-x'"),
        ({"team": "x" * 64}, "labels['team']='xxxx"),
        ({"team": 3}, "labels['team']=3: expected a label value"),
        (["team"], "labels=['team']: expected a dict"),
    ],
)
def test_label_map_rejects(labels: object, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        check_label_map(labels, "labels")
    assert fragment in str(info.value)


def test_annotation_map() -> None:
    notes = {"prometheus.io/scrape": "true", "note": "any text, even spaces!"}
    assert check_annotation_map(notes, "annotations") == notes
    with pytest.raises(SpecError, match=r"annotations\['prometheus.io/scrape'\]=True: .*quote"):
        check_annotation_map({"prometheus.io/scrape": True}, "annotations")
    with pytest.raises(SpecError, match="annotations key 'a b': expected an annotation key"):
        check_annotation_map({"a b": "x"}, "annotations")


def test_env_map_converts_scalars() -> None:
    result = check_env_map({"A": "x", "B": 1, "C": 0.5, "D": True, "_E2": ""}, "env_vars")
    assert result == {"A": "x", "B": "1", "C": "0.5", "D": "True", "_E2": ""}


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"1A": "x"}, "env_vars key '1A': expected an environment variable name"),
        ({"A-B": "x"}, "env_vars key 'A-B'"),
        ({"A": None}, "env_vars['A']=None: expected a string"),
        ({"A": ["x"]}, "env_vars['A']=['x']"),
        ({"A": "x\x00"}, "without NUL"),
        ("A=1", "env_vars='A=1': expected a dict"),
    ],
)
def test_env_map_rejects(env: object, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        check_env_map(env, "env_vars")
    assert fragment in str(info.value)


def test_frozen_map() -> None:
    m = FrozenMap({"b": "1", "a": "2"})
    assert m == {"a": "2", "b": "1"}
    assert list(m) == ["b", "a"]
    assert hash(m) == hash(FrozenMap({"a": "2", "b": "1"}))
    assert repr(m) == "{'b': '1', 'a': '2'}"
    assert pickle.loads(pickle.dumps(m)) == m
    with pytest.raises(TypeError):
        m["c"] = "3"  # type: ignore[index]
    assert m != {"a": "2"}
    assert m != ["a", "b"]


def test_trailing_newlines_are_not_names() -> None:
    with pytest.raises(SpecError):
        check_dns_label("abc\n", "name")
    with pytest.raises(SpecError):
        check_dns_subdomain("abc\n", "name")
    with pytest.raises(SpecError):
        check_label_map({"team\n": "x"}, "labels")
    with pytest.raises(SpecError):
        check_env_map({"A\n": "x"}, "env_vars")
