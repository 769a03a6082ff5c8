"""The setup ledger: apply an Image's steps to a pod, each once.

Each step's identity is a SHA-256 chained over the base image and every step before it, the way
Docker layers are: appending a step runs only that step; changing a step reruns it and what
follows. Steps that copy content carry the content's manifest id, so the identity changes exactly
when the content does. The ledger of applied identities lives in the pod root and survives
restarts; a failing step records nothing, stops the setup and fails the launch with the tail of
its output, and the pod goes on serving what it served before.

Pip steps install into one virtual environment per service (``HOTPOD_VENV``), made with
``--system-site-packages`` and a ``.pth`` pointing at the environment hotpod itself runs in, so
the host environment plays the base image. The service's pods share it: one pod installs, under
a lock, and its siblings find the step in the environment's own ledger.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import site
import subprocess
import sys
import sysconfig
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotpod.store import Store

LEDGER_VERSION = "hotpod-ledger-1"
OUTPUT_TAIL = 30

Emit = Callable[[str], None]
#: told of each step that ran: its kind, its duration in seconds, whether it succeeded
Observe = Callable[[str, float, bool], None]


def chain(image: dict[str, Any]) -> list[str]:
    """The identity of each step: a hash over the base image and all steps up to it."""
    h = hashlib.sha256(f"{LEDGER_VERSION}\0{image.get('image_id') or ''}".encode()).hexdigest()
    out = []
    for step in image.get("steps", []):
        body = json.dumps(step, sort_keys=True, separators=(",", ":"))
        h = hashlib.sha256(f"{h}\0{body}".encode()).hexdigest()
        out.append(h)
    return out


def summary(step: dict[str, Any]) -> str:
    kind = step.get("kind", "?")
    if kind == "pip_install":
        return "pip_install " + " ".join(step.get("packages", []))
    if kind == "set_env_vars":
        return "set_env_vars " + " ".join(sorted(step.get("env_vars", {})))
    if kind == "run_bash":
        return "run_bash " + " && ".join(step.get("commands", []))
    if kind == "copy":
        return f"copy {step.get('local_path')} {step.get('container_path')}"
    if kind == "sync_package":
        return f"sync_package {step.get('package')}"
    if kind == "workdir":
        return f"workdir {step.get('path')}"
    return f"{kind} {step.get('instruction', '')}".strip()


class SetupError(Exception):
    """A step failed: names the step, carries the tail of its output."""

    def __init__(self, index: int, total: int, step: str, message: str, tail: str) -> None:
        super().__init__(f"setup step {index}/{total} ({step}) failed: {message}")
        self.index = index
        self.step = step
        self.reason = message
        self.tail = tail


@dataclass
class Outcome:
    """What a setup run did, and what the worker must do about it."""

    ran: list[str] = field(default_factory=list)  # summaries of the steps that ran
    skipped: int = 0
    restart: bool = False  # a pip step changed a package this process has imported
    paths: list[str] = field(default_factory=list)  # sys.path entries (synced packages)
    reported: list[str] = field(default_factory=list)  # steps that cannot be applied live
    workdir: Path | None = None  # the image's last WORKDIR: the code's working directory


class _Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            data = json.loads(path.read_text())
            self.applied: dict[str, Any] = dict(data.get("applied", {}))
        except (OSError, ValueError, AttributeError):
            self.applied = {}

    def __contains__(self, h: str) -> bool:
        return h in self.applied

    def record(self, h: str, info: dict[str, Any]) -> None:
        self.applied[h] = info
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": LEDGER_VERSION, "applied": self.applied}, indent=1))
        os.replace(tmp, self.path)


def venv_site(venv: Path) -> Path:
    """The site-packages directory of a virtual environment made by this interpreter."""
    scheme = "venv" if "venv" in sysconfig.get_scheme_names() else "posix_prefix"
    return Path(sysconfig.get_path("purelib", scheme, vars={"base": str(venv)}))


def activate(venv: Path) -> None:
    """Put a service's virtual environment first for this process and its subprocesses."""
    site_dir = str(venv_site(venv))
    if site_dir not in sys.path:
        sys.path.insert(0, site_dir)
    bin_dir = str(venv / "bin")
    path = os.environ.get("PATH", "")
    if not path.startswith(bin_dir + os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + path
    os.environ["VIRTUAL_ENV"] = str(venv)
    import importlib

    importlib.invalidate_caches()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _top_level_modules(site_dir: Path, dist_names: list[str]) -> set[str]:
    """The importable top-level names of distributions installed in ``site_dir``."""
    import importlib.metadata as md

    wanted = {re.sub(r"[-_.]+", "-", n).lower() for n in dist_names}
    names: set[str] = set()
    for dist in md.distributions(path=[str(site_dir)]):
        if re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower() not in wanted:
            continue
        top = dist.read_text("top_level.txt")
        if top:
            names.update(line.strip() for line in top.splitlines() if line.strip())
            continue
        for f in dist.files or ():
            first = f.parts[0]
            if first.endswith((".dist-info", ".data")) or first == "..":
                continue
            names.add(first[:-3] if first.endswith(".py") else first)
    return names


class Setup:
    """Runs the steps of one launch on one pod."""

    def __init__(
        self,
        root: Path,
        store: Store,
        venv: Path | None,
        emit: Emit,
        observe: Observe | None = None,
    ) -> None:
        self.root = root
        self.store = store
        self.venv = venv
        self.emit = emit
        self.observe = observe
        self.ledger = _Ledger(root / ".hotpod" / "ledger.json")

    def container_path(self, path: str, workdir: Path) -> Path:
        """An image path mapped into the pod root (``/app/x`` -> ``<root>/app/x``)."""
        target = (self.root / path.lstrip("/")) if path.startswith("/") else (workdir / path)
        resolved = target.resolve()
        if resolved != self.root and self.root.resolve() not in resolved.parents:
            raise ValueError(f"{path!r} points outside the pod root")
        return target

    def run(self, image: dict[str, Any], base_env: dict[str, str]) -> Outcome:
        steps = image.get("steps", [])
        hashes = chain(image)
        outcome = Outcome()
        env = dict(base_env)
        workdir = self.root
        total = len(steps)
        for i, (step, h) in enumerate(zip(steps, hashes, strict=True), start=1):
            kind = step.get("kind")
            what = summary(step)
            # steps that shape later ones (env, workdir) or the process (packages) always apply
            if kind == "set_env_vars":
                env.update({k: str(v) for k, v in step.get("env_vars", {}).items()})
            elif kind == "workdir":
                workdir = self.container_path(step["path"], workdir)
            elif kind == "sync_package":
                outcome.paths.append(str(self.root / "opt" / "hotpod" / "packages"))
            if h in self.ledger:
                outcome.skipped += 1
                continue
            self.emit(f"[{i}/{total}] {what}")
            t0 = time.monotonic()
            try:
                restart = self._apply(step, env, workdir, outcome)
            except SetupError as exc:
                self._observe(str(kind), time.monotonic() - t0, False)
                raise SetupError(i, total, what, exc.reason, exc.tail) from None
            except Exception as exc:
                self._observe(str(kind), time.monotonic() - t0, False)
                raise SetupError(i, total, what, f"{type(exc).__name__}: {exc}", "") from None
            outcome.restart = outcome.restart or restart
            seconds = time.monotonic() - t0
            self._observe(str(kind), seconds, True)
            self.ledger.record(h, {"step": what, "seconds": round(seconds, 3), "at": time.time()})
            outcome.ran.append(what)
            self.emit(f"[{i}/{total}] done in {seconds:.2f} s")
        if workdir != self.root:
            workdir.mkdir(parents=True, exist_ok=True)
            outcome.workdir = workdir
        return outcome

    def _observe(self, kind: str, seconds: float, ok: bool) -> None:
        if self.observe is not None:
            self.observe(kind, seconds, ok)

    # -- the steps --------------------------------------------------------------------------

    def _apply(
        self, step: dict[str, Any], env: dict[str, str], workdir: Path, out: Outcome
    ) -> bool:
        kind = step.get("kind")
        if kind == "pip_install":
            return self._pip(step, env)
        if kind == "run_bash":
            workdir.mkdir(parents=True, exist_ok=True)
            for command in step.get("commands", []):
                self._command(["bash", "-c", command], env, workdir)
        elif kind in ("copy", "sync_package"):
            if kind == "copy":
                dest = self.container_path(step["container_path"], workdir)
            else:
                dest = self.root / "opt" / "hotpod" / "packages" / step["name"]
            self._place(step["manifest"], bool(step.get("file")), dest, step)
        elif kind == "workdir":
            workdir.mkdir(parents=True, exist_ok=True)
        elif kind == "dockerfile":
            note = f"not applied live: {step.get('instruction')} ({step.get('reason', '')})"
            out.reported.append(note)
            self.emit(note)
        elif kind != "set_env_vars":
            raise SetupError(0, 0, str(kind), f"unknown step kind {kind!r}", "")
        return False

    def _place(self, manifest_id: str, is_file: bool, dest: Path, step: dict[str, Any]) -> None:
        if not is_file:
            self.store.update_tree(manifest_id, dest)
            return
        manifest = self.store.get_manifest(manifest_id)
        ((name, entry),) = manifest.items()
        if step.get("kind") == "sync_package":
            dest = dest.parent / name  # a single-module package keeps its file name
        elif step.get("container_path", "").endswith("/") or dest.is_dir():
            dest = dest / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.store.copy_blob(entry.digest, dest)
        os.chmod(dest, entry.mode)

    def _command(self, argv: list[str], env: dict[str, str], cwd: Path) -> list[str]:
        """Run a command, streaming its output; raise SetupError with its tail on failure."""
        run_env = {**os.environ, **env, "HOTPOD_POD_ROOT": str(self.root)}
        if self.venv is not None and self.venv.exists():
            run_env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{run_env.get('PATH', '')}"
            run_env["VIRTUAL_ENV"] = str(self.venv)
        lines: deque[str] = deque(maxlen=OUTPUT_TAIL)
        everything: list[str] = []
        with subprocess.Popen(
            argv,
            cwd=cwd,
            env=run_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                lines.append(line)
                everything.append(line)
                self.emit(f"    {line}")
            code = proc.wait()
        if code != 0:
            raise SetupError(0, 0, argv[0], f"exit code {code}", "\n".join(lines))
        return everything

    def _ensure_venv(self) -> Path:
        assert self.venv is not None
        if not (self.venv / "bin" / "python").exists():
            self.emit(f"    creating the service's virtual environment {self.venv}")
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "venv",
                    "--system-site-packages",
                    "--without-pip",
                    str(self.venv),
                ],
                check=True,
                capture_output=True,
            )
            parents = [p for p in (*site.getsitepackages(), site.getusersitepackages()) if p]
            (venv_site(self.venv) / "_hotpod_base.pth").write_text("\n".join(parents) + "\n")
        activate(self.venv)
        return self.venv

    def _pip(self, step: dict[str, Any], env: dict[str, str]) -> bool:
        if self.venv is None:
            raise SetupError(0, 0, "pip", "this pod has no HOTPOD_VENV to install into", "")
        h = chain({"image_id": None, "steps": [step]})[0]
        with _locked(self.venv.parent / f".{self.venv.name}.lock"):
            venv = self._ensure_venv()
            shared = _Ledger(venv / "hotpod-ledger.json")
            if h in shared:  # a sibling pod of this service installed it already
                self.emit("    already installed in the service's environment")
                return self._changed_imports(venv, shared.applied[h].get("installed", []))
            reqs = []
            for req in step.get("packages", []):
                manifest_id = step.get("local", {}).get(req)
                if manifest_id is None:
                    reqs.append(req)
                    continue
                dest = self.root / ".hotpod" / "pip" / manifest_id
                manifest = self.store.get_manifest(manifest_id)
                if len(manifest) == 1 and not (dest / next(iter(manifest))).exists():
                    ((name, entry),) = manifest.items()
                    dest.mkdir(parents=True, exist_ok=True)
                    self.store.copy_blob(entry.digest, dest / name)
                    reqs.append(str(dest / name))
                elif len(manifest) == 1:
                    reqs.append(str(dest / next(iter(manifest))))
                else:
                    self.store.update_tree(manifest_id, dest)
                    reqs.append(str(dest))
            argv = [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
            ]
            if step.get("force"):
                argv.append("--force-reinstall")
            output = self._command(argv + reqs, {**env, "PIP_NO_INPUT": "1"}, self.root)
            installed: list[str] = []
            for line in output:
                if line.startswith("Successfully installed "):
                    installed += [p.rsplit("-", 1)[0] for p in line.split()[2:]]
            shared.record(h, {"step": summary(step), "at": time.time(), "installed": installed})
        return self._changed_imports(venv, installed)

    def _changed_imports(self, venv: Path, installed: list[str]) -> bool:
        """True when a package just installed is one this worker has imported: restart it."""
        if not installed:
            return False
        imported = _top_level_modules(venv_site(venv), installed) & set(sys.modules)
        if imported:
            names = ", ".join(sorted(imported))
            self.emit(f"    {names} changed while imported: restarting the worker")
        return bool(imported)
