from __future__ import annotations

import json
from pathlib import Path

import pytest

from hotpod.errors import SpecError
from hotpod.image import Image, ImageStep


def seed_image() -> Image:
    # As written in the seed text.
    return (
        Image(image_id="pytorch/pytorch:2.0.0-cuda11.7-cudnn8-runtime")
        .pip_install(["transformers", "accelerate"])
        .set_env_vars({"HF_TOKEN": "..."})
        .run_bash("apt-get update && apt-get install -y git")
        .copy("./configs", "/app/configs")
    )


def test_seed_chain() -> None:
    image = seed_image()
    assert image.image_id == "pytorch/pytorch:2.0.0-cuda11.7-cudnn8-runtime"
    assert [s.kind for s in image.steps] == ["pip_install", "set_env_vars", "run_bash", "copy"]
    assert image.steps[0].args["packages"] == ("transformers", "accelerate")
    assert image.steps[3].args == {"local_path": "./configs", "container_path": "/app/configs"}
    assert image.env_vars == {"HF_TOKEN": "..."}


def test_seed_live_update_is_copy_on_write() -> None:
    image = Image("pytorch/pytorch:2.0.0").pip_install(["transformers"])
    updated = image.pip_install(["datasets"])
    assert len(image.steps) == 1
    assert len(updated.steps) == 2
    assert updated.steps[:1] == image.steps
    assert image != updated


def test_every_step_returns_a_new_image() -> None:
    base = Image("python:3.11")
    for derived in [
        base.pip_install("numpy"),
        base.set_env_vars({"A": "1"}),
        base.run_bash("true"),
        base.copy("a", "b"),
        base.sync_package("mylib"),
    ]:
        assert derived is not base
        assert len(derived.steps) == 1
    assert base.steps == ()


def test_immutable() -> None:
    image = Image("python:3.11")
    with pytest.raises(AttributeError):
        image.image_id = "x"  # type: ignore[misc]


def test_value_equality_and_hash() -> None:
    assert seed_image() == seed_image()
    assert hash(seed_image()) == hash(seed_image())
    assert len({seed_image(), seed_image()}) == 1
    assert Image("python:3.11") != Image("python:3.12")
    assert Image() == Image(None)


def test_pip_install_forms() -> None:
    image = Image().pip_install("numpy  pandas>=2").pip_install(("torch",), force=True)
    assert image.steps[0].args == {"packages": ("numpy", "pandas>=2"), "force": False}
    assert image.steps[1].args == {"packages": ("torch",), "force": True}
    assert str(image.steps[0]) == "pip_install numpy pandas>=2"
    assert str(image.steps[1]) == "pip_install torch --force"


@pytest.mark.parametrize("packages", [[], "", "  ", [""], ["numpy", 3], None, 3])
def test_pip_install_rejects(packages: object) -> None:
    with pytest.raises(SpecError) as info:
        Image().pip_install(packages)  # type: ignore[arg-type]
    assert str(info.value).startswith(f"packages={packages!r}: expected a non-empty list")


def test_pip_install_force_must_be_bool() -> None:
    with pytest.raises(SpecError, match=r"^force='yes': expected True or False"):
        Image().pip_install("numpy", force="yes")  # type: ignore[arg-type]


def test_env_vars_merge_in_order() -> None:
    image = Image().set_env_vars({"A": "1", "B": "2"}).set_env_vars({"B": "3", "C": 4})
    assert image.env_vars == {"A": "1", "B": "3", "C": "4"}
    image.env_vars["A"] = "changed"
    assert image.env_vars["A"] == "1"


def test_set_env_vars_rejects() -> None:
    with pytest.raises(SpecError, match="env_vars key '1BAD'"):
        Image().set_env_vars({"1BAD": "x"})
    with pytest.raises(SpecError, match=r"^env_vars=\{\}: expected a non-empty dict"):
        Image().set_env_vars({})


def test_run_bash_forms() -> None:
    image = Image().run_bash(["apt-get update", "apt-get install -y git"])
    assert image.steps[0].args["commands"] == ("apt-get update", "apt-get install -y git")
    assert str(image.steps[0]) == "run_bash apt-get update; apt-get install -y git"
    for bad in ["", [], ["ok", ""], [1], None]:
        with pytest.raises(SpecError, match=r"^commands=.*: expected a shell command"):
            Image().run_bash(bad)  # type: ignore[arg-type]


def test_copy_keeps_paths_as_given_without_io(tmp_path: Path) -> None:
    image = Image().copy("./does/not/exist", "configs").copy(tmp_path, "/abs")
    assert image.steps[0].args == {"local_path": "./does/not/exist", "container_path": "configs"}
    assert image.steps[1].args["local_path"] == str(tmp_path)
    with pytest.raises(SpecError, match=r"^local_path='': expected a non-empty path"):
        Image().copy("", "/x")
    with pytest.raises(SpecError, match=r"^container_path=None: expected a non-empty path"):
        Image().copy("x", None)  # type: ignore[arg-type]


def test_sync_package() -> None:
    image = Image().sync_package("mylib").sync_package(Path("../other"))
    assert [s.args["package"] for s in image.steps] == ["mylib", str(Path("../other"))]
    assert str(image.steps[0]) == "sync_package mylib"
    with pytest.raises(SpecError, match=r"^package=3: expected a package name"):
        Image().sync_package(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "image_id", ["", " ", "python 3.11", "python:3.11\n", "http://x/y", "repo/", 3, ["x"]]
)
def test_image_id_rejects(image_id: object) -> None:
    with pytest.raises(SpecError) as info:
        Image(image_id)  # type: ignore[arg-type]
    assert str(info.value).startswith(f"image_id={image_id!r}: expected an image reference")


@pytest.mark.parametrize(
    "image_id",
    [
        "python:3.11",
        "pytorch/pytorch:2.0.0-cuda11.7-cudnn8-runtime",
        "localhost:5000/app",
        "example.com/org/app:1.0",
        "python@sha256:" + "a" * 64,
    ],
)
def test_image_id_accepts(image_id: str) -> None:
    assert Image(image_id).image_id == image_id


def test_name() -> None:
    assert Image("python:3.11", name="trainer").name == "trainer"
    with pytest.raises(SpecError, match=r"^name='a b': "):
        Image(name="a b")
    with pytest.raises(TypeError):
        Image("python:3.11", "trainer")  # type: ignore[misc]


def test_to_dict_is_json_and_round_trips() -> None:
    image = seed_image().sync_package("mylib").pip_install("x", force=True)
    data = image.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["steps"][0] == {
        "kind": "pip_install",
        "packages": ["transformers", "accelerate"],
        "force": False,
    }
    assert Image.from_dict(json.loads(json.dumps(data))) == image


def test_step_from_dict_validates() -> None:
    step = ImageStep.from_dict({"kind": "run_bash", "commands": ["ls"]})
    assert step == Image().run_bash("ls").steps[0]
    with pytest.raises(SpecError, match="expected a dict with 'kind' one of pip_install"):
        ImageStep.from_dict({"kind": "rm_rf"})
    with pytest.raises(SpecError, match="unexpected keyword"):
        ImageStep.from_dict({"kind": "run_bash", "commands": ["ls"], "extra": 1})
    with pytest.raises(SpecError, match="packages="):
        ImageStep.from_dict({"kind": "pip_install", "packages": []})


def test_repr_is_readable_and_hides_env_values() -> None:
    text = repr(seed_image())
    assert text.startswith("Image('pytorch/pytorch:2.0.0-cuda11.7-cudnn8-runtime', steps=[")
    assert "pip_install transformers accelerate" in text
    assert "set_env_vars HF_TOKEN" in text
    secret = Image("python:3.11").set_env_vars({"HF_TOKEN": "hf_abc123"})
    assert "hf_abc123" not in repr(secret)
    assert "hf_abc123" not in str(secret.steps[0])
    assert repr(Image()) == "Image()"


def test_workdir() -> None:
    image = Image().workdir("/app").workdir(Path("sub"))
    assert [s.kind for s in image.steps] == ["workdir", "workdir"]
    assert image.steps[0].args == {"path": "/app"}
    assert image.steps[1].args == {"path": "sub"}
    assert str(image.steps[0]) == "workdir /app"
    with pytest.raises(SpecError, match=r"^path='': expected a non-empty directory path"):
        Image().workdir("")
    assert (
        ImageStep.from_dict({"kind": "workdir", "path": "/srv"}) == Image().workdir("/srv").steps[0]
    )


def test_not_live_steps_round_trip_and_report() -> None:
    data = {
        "image_id": "python:3.11",
        "name": None,
        "steps": [
            {"kind": "run_bash", "commands": ["true"]},
            {"kind": "dockerfile", "instruction": 'CMD ["app"]', "reason": "CMD only sets..."},
            {"kind": "dockerfile", "instruction": "ENV A=secret B=2", "reason": "r"},
        ],
    }
    image = Image.from_dict(data)
    assert image.to_dict() == data
    assert [s.args["instruction"] for s in image.not_live] == ['CMD ["app"]', "ENV A=secret B=2"]
    assert str(image.not_live[0]) == 'dockerfile CMD ["app"] (not live)'
    assert str(image.not_live[1]) == "dockerfile ENV A B (not live)"  # values may be secrets
    assert "secret" not in repr(image)
    assert Image().run_bash("true").not_live == ()
    with pytest.raises(SpecError, match=r"^reason='': expected a non-empty string"):
        ImageStep.from_dict({"kind": "dockerfile", "instruction": "CMD x", "reason": ""})


def test_long_not_live_instruction_is_shortened() -> None:
    step = ImageStep.from_dict(
        {"kind": "dockerfile", "instruction": "LABEL a=1 \\\n      b=2", "reason": "metadata"}
    )
    assert str(step) == "dockerfile LABEL a=1... (not live)"
