"""Code the image end-to-end tests deploy (imported by module name on the pods)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path


def versions(*names: str):
    """The __version__ of each named module, imported fresh where not yet imported."""
    return {n: importlib.import_module(n).VERSION for n in names}


def read(path: str):
    return (Path(os.environ["HOTPOD_POD_ROOT"]) / path.lstrip("/")).read_text()


def env(name: str):
    return os.environ.get(name)


def worker_pid():
    return os.getpid()


class Holder:
    """Imports a package at __init__ and keeps it: an upgrade must restart the worker."""

    def __init__(self, module: str):
        self.module = importlib.import_module(module)

    def version(self):
        return self.module.VERSION, os.getpid()


def cwd():
    return os.getcwd()
