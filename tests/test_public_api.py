"""The public API is exactly what hotpod/__init__.py lists, and importing it stays cheap."""

from __future__ import annotations

import ast
import subprocess
import sys

import hotpod


def test_all_is_sorted_and_every_name_resolves():
    assert hotpod.__all__ == sorted(hotpod.__all__)
    for name in hotpod.__all__:
        assert getattr(hotpod, name) is not None, name


def test_results_is_a_plain_list_that_knows_whose_each_result_is():
    import pickle

    r = hotpod.Results(["b", "a"], ranks=[1, 0], pods=["svc-1", "svc-0"])
    assert isinstance(r, list) and r == ["b", "a"] and r[:1] == ["b"]
    assert r.by_rank() == {1: "b", 0: "a"} and r.items() == [(1, "b"), (0, "a")]
    back = pickle.loads(pickle.dumps(r))
    assert type(back) is hotpod.Results and back.pods == ["svc-1", "svc-0"]


def test_unknown_attribute_raises_attribute_error():
    try:
        hotpod.nope  # noqa: B018
    except AttributeError as exc:
        assert "nope" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_errors_share_one_root():
    for name in hotpod.__all__:
        obj = getattr(hotpod, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, hotpod.HotpodError), name


HEAVY = ("httpx", "uvicorn", "starlette", "cloudpickle", "psutil")


def heavy_modules_after(code: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Which heavy modules a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys\nprint([m for m in {HEAVY + extra!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return ast.literal_eval(out.stdout)


def test_import_is_lazy():
    assert heavy_modules_after("import hotpod", ("hotpod.module", "hotpod.compute")) == []


def test_specs_import_nothing_heavy():
    code = (
        "import hotpod as kt\n"
        "kt.Compute(cpus='1', image=kt.Image('python:3.11'), secrets=[kt.Secret('a', 'A')],"
        " volumes=[kt.Volume('v', '/v')])"
    )
    assert heavy_modules_after(code) == []
