"""The setup ledger's step identities (pure) and step runner (local, no pods)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotpod.runtime.setup import Setup, SetupError, chain
from hotpod.store import LocalStore


def image(*steps: dict) -> dict:
    return {"image_id": "python:3.11", "steps": list(steps)}


PIP_A = {"kind": "pip_install", "packages": ["a"], "force": False, "local": {}}
PIP_B = {"kind": "pip_install", "packages": ["b"], "force": False, "local": {}}
ENV = {"kind": "set_env_vars", "env_vars": {"X": "1"}}


def test_appending_a_step_keeps_the_identities_before_it():
    one = chain(image(PIP_A))
    two = chain(image(PIP_A, PIP_B))
    assert two[0] == one[0] and two[1] != one[0]


def test_changing_a_step_changes_it_and_everything_after():
    before = chain(image(PIP_A, ENV, PIP_B))
    after = chain(image(PIP_A, {**ENV, "env_vars": {"X": "2"}}, PIP_B))
    assert before[0] == after[0] and before[1] != after[1] and before[2] != after[2]


def test_base_image_is_part_of_every_identity():
    assert chain(image(PIP_A)) != chain({"image_id": "python:3.12", "steps": [PIP_A]})


def test_run_bash_copy_workdir_and_the_ledger(tmp_path: Path):
    store = LocalStore(tmp_path / "store")
    root = tmp_path / "pod"
    root.mkdir()
    lines: list[str] = []
    steps = image(
        {"kind": "set_env_vars", "env_vars": {"GREETING": "hi"}},
        {"kind": "workdir", "path": "/work"},
        {"kind": "run_bash", "commands": ["echo $GREETING > greeting.txt", "pwd"]},
        {"kind": "dockerfile", "instruction": "CMD run", "reason": "not live"},
    )
    out = Setup(root, store, None, lines.append).run(steps, {})
    assert (root / "work" / "greeting.txt").read_text() == "hi\n"
    assert len(out.ran) == 4 and out.reported == ["not applied live: CMD run (not live)"]
    assert any(line.strip() == str(root / "work") for line in lines)
    again = Setup(root, store, None, lines.append).run(steps, {})
    assert again.ran == [] and again.skipped == 4  # the ledger survives in the pod root


def test_a_failing_step_names_itself_and_records_nothing(tmp_path: Path):
    root = tmp_path / "pod"
    root.mkdir()
    setup = Setup(root, LocalStore(tmp_path / "store"), None, lambda _: None)
    failing = image(
        {"kind": "run_bash", "commands": ["echo fine"]},
        {"kind": "run_bash", "commands": ["echo about to fail; exit 3"]},
    )
    with pytest.raises(SetupError) as info:
        setup.run(failing, {})
    assert info.value.index == 2 and "exit code 3" in str(info.value)
    assert str(info.value).count("failed") == 1  # one clear message, not one per layer
    assert "about to fail" in info.value.tail
    retry = Setup(root, LocalStore(tmp_path / "store"), None, lambda _: None)
    with pytest.raises(SetupError):
        retry.run(failing, {})  # step 1 is not rerun, step 2 is tried again
    assert len(retry.ledger.applied) == 1


def test_container_paths_stay_inside_the_pod_root(tmp_path: Path):
    setup = Setup(tmp_path, LocalStore(tmp_path / "store"), None, lambda _: None)
    assert setup.container_path("/app/x", tmp_path) == tmp_path / "app" / "x"
    with pytest.raises(ValueError, match="outside the pod root"):
        setup.container_path("../../etc", tmp_path)
