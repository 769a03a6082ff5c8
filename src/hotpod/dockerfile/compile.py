"""Writing an :class:`~hotpod.image.Image` as a Dockerfile and its build context."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

from hotpod.dockerfile.parse import DEFAULT_BASE, PACKAGES_DIR, PIP_DIR, _exec_form
from hotpod.errors import HotpodError, SpecError
from hotpod.image import Image, ImageStep

_PLAIN_RE = re.compile(r"[A-Za-z0-9_./:@%+=,-]+")
_IGNORED = shutil.ignore_patterns(
    "__pycache__", "*.py[co]", ".git", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache",
    ".tox", ".nox",
)  # fmt: skip
_MARKER = ".hotpod-build-context"


# ---------------------------------------------------------------------------------------------
# Writing a Dockerfile
# ---------------------------------------------------------------------------------------------


def _local(path: str) -> Path:
    """A local path as the user wrote it, resolved against the current working directory."""
    return Path(path).expanduser().absolute()


def _name_of(path: str) -> str:
    return _local(path).resolve().name or "root"


def _is_local_requirement(req: str) -> bool:
    return req in (".", "..") or req.startswith(("./", "../", "/", "~"))


def _escape(value: str) -> str:
    """``value`` with the characters docker build would interpret (``\\``, ``$``, ``"``) escaped."""
    if "\n" in value or "\r" in value:
        raise ValueError("a line break")
    return re.sub(r'(["\\$])', r"\\\1", value)


def _word(value: str) -> str:
    """A value for WORKDIR: bare when plain, else double-quoted."""
    return value if _PLAIN_RE.fullmatch(value) else f'"{_escape(value)}"'


def _copy_line(source: str, dest: str) -> str:
    if _PLAIN_RE.fullmatch(source) and _PLAIN_RE.fullmatch(dest):
        return f"COPY {source} {dest}"
    return "COPY " + json.dumps([_escape(source), _escape(dest)], ensure_ascii=False)


class _Compiler:
    """Turns an Image's steps into Dockerfile lines, staging files into ``context`` if given."""

    def __init__(self, context: Path | None) -> None:
        self.context = context
        self.staged: dict[str, Path] = {}  # name in the context -> the source it holds
        self.pythonpath = False

    def stage(self, step: str, name: str, source: Path, *, tree_ignore: bool = False) -> str:
        """Copy ``source`` to ``name`` in the context (once); returns ``name``."""
        if self.staged.get(name, source) != source:
            raise SpecError(
                f"{step}: {source} and {self.staged[name]} would both be staged as {name}; "
                "rename one of them"
            )
        if self.context is None or name in self.staged:
            self.staged[name] = source
            return name
        if not source.exists():
            raise SpecError(f"{step}: {source} does not exist; create it or fix the path")
        target = self.context / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            context = self.context.resolve()
            nested = context.is_relative_to(source.resolve())

            def ignore(folder: str, names: list[str]) -> set[str]:
                skip = set(_IGNORED(folder, names)) if tree_ignore else set()
                if nested:  # never copy the build context into itself
                    skip |= {n for n in names if (Path(folder) / n).resolve() == context}
                return skip

            shutil.copytree(source, target, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(source, target)
        self.staged[name] = source
        return name

    def lines(self, image: Image) -> Iterator[str]:
        steps = image.steps
        own_from = bool(steps) and steps[0].kind == "dockerfile" and _is_from(steps[0])
        # A FROM ... AS stage read from a Dockerfile is that Dockerfile's own first line.
        yield steps[0].args["instruction"] if own_from else f"FROM {image.image_id or DEFAULT_BASE}"
        for n, step in enumerate(steps, 1):
            if n > 1 or not own_from:
                yield from getattr(self, step.kind)(step, f"step {n} ({step})", n)

    # -- steps ------------------------------------------------------------------------------

    def pip_install(self, step: ImageStep, label: str, n: int) -> Iterator[str]:
        args = ["python", "-m", "pip", "install", "--no-cache-dir"]
        if step.args["force"]:
            args.append("--force-reinstall")
        copies: list[str] = []
        takes_file = False
        for req in step.args["packages"]:
            path, extras = _split_extras(req)
            if takes_file or _is_local_requirement(path):
                source = _local(path)
                name = base = _name_of(path)
                k = 1
                while self.staged.get(f"pip/{name}", source) != source:
                    k += 1
                    name = f"{base}-{k}"
                self.stage(label, f"pip/{name}", source, tree_ignore=True)
                copies.append(_copy_line(f"pip/{name}", f"{PIP_DIR}/{name}"))
                req = f"{PIP_DIR}/{name}{extras}"
            takes_file = req in ("-r", "--requirement", "-c", "--constraint")
            args.append(req)
        yield from copies
        yield "RUN " + shlex.join(args)

    def set_env_vars(self, step: ImageStep, label: str, n: int) -> Iterator[str]:
        pairs = []
        for key, value in step.args["env_vars"].items():
            try:
                pairs.append(f'{key}="{_escape(value)}"')
            except ValueError:
                raise SpecError(
                    f"{label}: the value of {key} contains a line break, which a Dockerfile ENV "
                    "cannot hold; set it without one"
                ) from None
        yield "ENV " + " \\\n    ".join(pairs)

    def run_bash(self, step: ImageStep, label: str, n: int) -> Iterator[str]:
        for command in step.args["commands"]:
            if "\n" in command or command.endswith("\\") or _exec_form(command) is not None:
                yield "RUN " + json.dumps(["/bin/sh", "-c", command], ensure_ascii=False)
            else:
                yield f"RUN {command}"

    def copy(self, step: ImageStep, label: str, n: int) -> Iterator[str]:
        local, dest = step.args["local_path"], step.args["container_path"]
        name = self.stage(label, f"files/{n}-{_name_of(local)}", _local(local))
        if dest.endswith("/") and not _local(local).is_dir():  # a file keeps its own name
            dest += _name_of(local)
        yield _copy_line(name, dest)

    def sync_package(self, step: ImageStep, label: str, n: int) -> Iterator[str]:
        source = _package_source(step.args["package"], label, strict=self.context is not None)
        name = source.name or "package"
        staged = self.stage(label, f"packages/{name}", source, tree_ignore=True)
        if not self.pythonpath:
            self.pythonpath = True
            yield f"ENV PYTHONPATH={PACKAGES_DIR}${{PYTHONPATH:+:$PYTHONPATH}}"
        yield _copy_line(staged, f"{PACKAGES_DIR}/{name}")

    def workdir(self, step: ImageStep, label: str, n: int) -> Iterator[str]:
        try:
            yield f"WORKDIR {_word(step.args['path'])}"
        except ValueError:
            raise SpecError(f"{label}: a WORKDIR path cannot contain a line break") from None

    def dockerfile(self, step: ImageStep, label: str, n: int) -> Iterator[str]:
        if _is_from(step):
            yield ""  # a blank line before each build stage
        yield step.args["instruction"]


def _is_from(step: ImageStep) -> bool:
    return re.match(r"FROM\s", step.args["instruction"], re.IGNORECASE) is not None


def _split_extras(requirement: str) -> tuple[str, str]:
    """``("./pkg", "[dev]")`` for ``"./pkg[dev]"``; ``(requirement, "")`` without extras."""
    m = re.fullmatch(r"(.+?)(\[[^\]/]*\])", requirement)
    return (m[1], m[2]) if m else (requirement, "")


def _package_source(package: str, label: str, *, strict: bool) -> Path:
    """The directory (or module file) ``sync_package(package)`` makes importable.

    An existing or path-like ``package`` (``mylib`` in the working directory, ``./mylib``,
    ``/src/mylib``) is a local directory; otherwise the name is looked up with
    :func:`importlib.util.find_spec` (as the deploy flow does). ``strict=False`` (text only)
    falls back to the name without raising.
    """
    path = _local(package).resolve()
    if path.exists() or os.sep in package or "/" in package or package.startswith((".", "~")):
        if strict and not (path.is_dir() or (path.suffix == ".py" and path.is_file())):
            raise SpecError(
                f"{label}: {package} is not a directory (looked at {path}); pass the path of "
                "a package directory, or an importable package name"
            )
        return path
    if not package.isidentifier():
        raise SpecError(
            f"{label}: {package!r} is not a top-level package name; pass 'mylib', not "
            "'mylib.sub', or a path"
        )
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve()
    if spec is not None and spec.origin and spec.origin.endswith(".py"):
        return Path(spec.origin).resolve()
    if strict:
        what = "has no Python source" if spec is not None else "is not importable here"
        raise SpecError(
            f"{label}: package {package!r} {what}, and there is no directory ./{package}; "
            "install it, or pass the path of its directory"
        )
    return Path(package)


def compile_dockerfile(image: Image, context_dir: str | os.PathLike[str] | None = None) -> str:
    """``image`` as a Dockerfile; see :meth:`Image.to_dockerfile`."""
    context = None if context_dir is None else _prepare_context(Path(context_dir))
    lines = list(_Compiler(context).lines(image))
    return "\n".join(lines) + "\n"


def _prepare_context(out: Path) -> Path:
    """``out``, created, or emptied of what a previous :func:`write_build_context` staged."""
    if out.exists() and not out.is_dir():
        raise HotpodError(f"{out} is a file; give a directory for the build context")
    if out.is_dir() and any(out.iterdir()):
        if not (out / _MARKER).exists():
            raise HotpodError(
                f"{out} is not empty and was not written by hotpod; give a new or empty "
                "directory for the build context"
            )
        for entry in ("Dockerfile", "files", "pip", "packages"):
            target = out / entry
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARKER).write_text("This build context was written by hotpod; it may rewrite it.\n")
    return out


def write_build_context(image: Image, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``Dockerfile`` and the files it copies to ``out_dir``; returns the directory.

    ``docker build out_dir`` then builds an image equivalent to ``image``. ``out_dir`` must be
    new, empty, or a build context written here before (which is rewritten).
    """
    out = Path(out_dir).expanduser().absolute()
    text = compile_dockerfile(image, out)
    (out / "Dockerfile").write_text(text, encoding="utf-8")
    return out
