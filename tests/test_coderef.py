"""How .to() finds the user's code: by module, by script, or by value."""

from __future__ import annotations

import json
import os
import pickle

import remote_code as rc
from hotpod.coderef import resolve


def test_module_function_is_referenced_by_name():
    ref = resolve(rc.train)
    assert ref.module == "remote_code" and ref.qualname == "train" and ref.by_value is None
    assert ref.root is not None and (ref.root / "pyproject.toml").exists()
    assert ref.paths == ("tests",)


def test_class_method_qualname_and_nested_function_by_value():
    assert resolve(rc.Model).qualname == "Model"

    def inner(x):
        return x

    ref = resolve(inner)
    assert ref.module is None and ref.by_value is not None
    assert pickle.loads(ref.by_value)(3) == 3


def test_lambda_is_by_value():
    ref = resolve(lambda x: x + 1)
    assert ref.by_value is not None and pickle.loads(ref.by_value)(1) == 2


def test_installed_package_function_needs_no_sync():
    ref = resolve(json.dumps)
    assert ref.root is None and ref.module == "json" and ref.qualname == "dumps"
    ref = resolve(os.path.join)
    assert ref.root is None and ref.by_value is None


def test_src_layout_import_root(tmp_path, monkeypatch):
    project = tmp_path / "proj"
    pkg = project / "src" / "hp_pkg_src"
    pkg.mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("def f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(project / "src"))
    from hp_pkg_src.mod import f

    ref = resolve(f)
    assert ref.root == project and ref.paths == ("src",) and ref.module == "hp_pkg_src.mod"
