"""``Image``: a base container image plus setup steps, as an immutable, chainable value.

Every step method returns a *new* Image with one :class:`ImageStep` appended; the original is
left unchanged, so an Image can be shared and extended freely::

    base = Image("python:3.11").pip_install(["numpy"])
    dev = base.set_env_vars({"MODE": "dev"})      # base still has one step

Nothing here touches the file system: ``copy`` and ``sync_package`` store paths as given, and
the deploy flow resolves them. Two conversions do I/O and live in :mod:`hotpod.dockerfile`:
:meth:`Image.from_dockerfile` reads a Dockerfile, :meth:`Image.to_dockerfile` compiles one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hotpod._quantity import FrozenMap, check_env_map, short_repr, spec_error
from hotpod.errors import SpecError

#: The step kinds, in the order the methods are documented.
STEP_KINDS = (
    "pip_install",
    "set_env_vars",
    "run_bash",
    "copy",
    "sync_package",
    "workdir",
    "dockerfile",
)

# The Image method that builds each kind of step, where it is not the kind's own name.
_BUILDERS = {"dockerfile": "_dockerfile_step"}

_IMAGE_ID_EXPECTED = (
    "an image reference like 'python:3.11' or 'example.com/team/app:1.0' "
    "(non-empty, no whitespace, no URL scheme)"
)
_IMAGE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/:@+]*$")


def _to_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    return value


@dataclass(frozen=True)
class ImageStep:
    """One setup step: its ``kind`` (a method name of :class:`Image`) and its arguments.

    ``args`` is a :class:`FrozenMap` from argument name to a JSON-friendly, hashable value
    (str, bool, a tuple of str, or a FrozenMap of str). By kind:

    ==============  ==========================================================
    pip_install     ``packages``: tuple of str, ``force``: bool
    set_env_vars    ``env_vars``: FrozenMap of name -> value
    run_bash        ``commands``: tuple of str (one shell command each)
    copy            ``local_path``: str (as given), ``container_path``: str
    sync_package    ``package``: str (an importable name or a path, as given)
    workdir         ``path``: str (the working directory of later steps and the code)
    dockerfile      ``instruction``: str (Dockerfile text), ``reason``: str
    ==============  ==========================================================

    A ``dockerfile`` step holds an instruction of a Dockerfile read by
    :meth:`Image.from_dockerfile` that cannot be applied to a running pod (``CMD``, ``EXPOSE``,
    a second build stage...): it is kept so that nothing is dropped, compiled back verbatim by
    :meth:`Image.to_dockerfile`, and reported (with ``reason``) instead of run on pods.

    Build steps with the methods of :class:`Image`; ``ImageStep.from_dict`` validates.
    """

    kind: str
    args: FrozenMap[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., **args}`` with tuples as lists: JSON-serialisable."""
        return {"kind": self.kind, **_to_json(self.args)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageStep:
        """The step ``to_dict`` describes, validated as the Image method would."""
        kind = data.get("kind") if isinstance(data, Mapping) else None
        if not isinstance(kind, str) or kind not in STEP_KINDS:
            raise spec_error("step", data, f"a dict with 'kind' one of {', '.join(STEP_KINDS)}")
        args = {k: v for k, v in data.items() if k != "kind"}
        try:
            builder = getattr(Image(), _BUILDERS.get(kind, kind))
            image: Image = builder(**args)
        except TypeError as exc:
            raise SpecError(f"step={short_repr(data)}: {exc}") from exc
        return image.steps[0]

    def __str__(self) -> str:
        a = self.args
        if self.kind == "pip_install":
            return " ".join(["pip_install", *a["packages"], *(["--force"] if a["force"] else [])])
        if self.kind == "set_env_vars":  # names only: values may be secrets
            return "set_env_vars " + " ".join(a["env_vars"])
        if self.kind == "run_bash":
            return "run_bash " + "; ".join(a["commands"])
        if self.kind == "copy":
            return f"copy {a['local_path']} -> {a['container_path']}"
        if self.kind == "dockerfile":
            return f"dockerfile {_instruction_summary(a['instruction'])} (not live)"
        return f"{self.kind} " + " ".join(str(v) for v in a.values())


def _instruction_summary(instruction: str, limit: int = 60) -> str:
    """The first line of a Dockerfile instruction, shortened; for ``ENV``, the names only."""
    text = instruction.strip()
    keyword, _, rest = text.partition(" ")
    if keyword.upper() == "ENV":  # values may be secrets
        words = rest.replace("\\\n", " ").split()
        if words and "=" not in words[0]:  # legacy form: ENV NAME value
            names = words[:1]
        else:
            names = [w.partition("=")[0] for w in words if "=" in w]
        return " ".join([keyword, *names])
    first = text.splitlines()[0].rstrip(" \\")
    more = "..." if len(first) > limit or "\n" in text else ""
    return first[:limit] + more


def _path_arg(value: object, arg: str, expected: str) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise spec_error(arg, value, expected)
    return value


@dataclass(frozen=True, init=False, repr=False)
class Image:
    """A base image (``image_id``) and the setup steps to run on top of it.

    ``image_id=None`` lets the backend choose its default base (the local backend uses the
    host's Python environment). ``name`` optionally names the image (used to tag built images).
    """

    image_id: str | None
    name: str | None
    steps: tuple[ImageStep, ...]

    def __init__(self, image_id: str | None = None, *, name: str | None = None) -> None:
        if image_id is not None and (
            not isinstance(image_id, str)
            or "://" in image_id
            or not _IMAGE_ID_RE.fullmatch(image_id)
            or image_id.endswith(("/", ":", "@"))
        ):
            raise spec_error("image_id", image_id, _IMAGE_ID_EXPECTED)
        if name is not None and (
            not isinstance(name, str) or not name or any(c.isspace() for c in name)
        ):
            raise spec_error("name", name, "a non-empty string without whitespace, or None")
        object.__setattr__(self, "image_id", image_id)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "steps", ())

    def _with(self, kind: str, **args: Any) -> Image:
        new = Image(self.image_id, name=self.name)
        step = ImageStep(kind, FrozenMap(args))
        object.__setattr__(new, "steps", (*self.steps, step))
        return new

    # -- steps ---------------------------------------------------------------------------------

    def pip_install(self, packages: Sequence[str] | str, force: bool = False) -> Image:
        """Install Python packages with pip.

        ``packages`` is a list of requirements (``["torch==2.3", "numpy>=1.26"]``) or one string
        split on whitespace (``"torch numpy"``). ``force=True`` reinstalls even if present.
        """
        expected = "a non-empty list of requirements like ['numpy', 'torch==2.3'], or a string"
        if isinstance(packages, str):
            items = tuple(packages.split())
        elif isinstance(packages, Sequence) and all(
            isinstance(p, str) and p.strip() for p in packages
        ):
            items = tuple(p.strip() for p in packages)
        else:
            raise spec_error("packages", packages, expected)
        if not items:
            raise spec_error("packages", packages, expected)
        if not isinstance(force, bool):
            raise spec_error("force", force, "True or False")
        return self._with("pip_install", packages=items, force=force)

    def set_env_vars(self, env_vars: Mapping[str, str]) -> Image:
        """Set environment variables for everything that runs after this step, and the code.

        Values that are ints, floats or bools are converted with ``str()``.
        """
        values = check_env_map(env_vars, "env_vars")
        if not values:
            raise spec_error("env_vars", env_vars, "a non-empty dict like {'MODE': 'dev'}")
        return self._with("set_env_vars", env_vars=FrozenMap(values))

    def run_bash(self, commands: str | Sequence[str]) -> Image:
        """Run shell commands (with ``bash -c``), one after the other; a failure fails the step."""
        expected = "a shell command string, or a non-empty list of them"
        if isinstance(commands, str):
            items: tuple[str, ...] = (commands.strip(),)
        elif isinstance(commands, Sequence) and all(isinstance(c, str) for c in commands):
            items = tuple(c.strip() for c in commands)
        else:
            raise spec_error("commands", commands, expected)
        if not items or not all(items):
            raise spec_error("commands", commands, expected)
        return self._with("run_bash", commands=items)

    def copy(self, local_path: str | os.PathLike[str], container_path: str) -> Image:
        """Sync a local file or directory to ``container_path`` in the container.

        ``local_path`` is kept as written (relative paths are resolved when the image is used,
        against the working directory); ``container_path`` may be absolute or relative to the
        image's working directory (see :meth:`workdir`).
        As with a Dockerfile's ``COPY``, a directory's contents go to ``container_path``, and a
        file goes to ``container_path`` or, when that ends with ``/`` (or is an existing
        directory), into it under its own name (``copy("a.txt", "/app/")`` gives ``/app/a.txt``).
        """
        local = _path_arg(local_path, "local_path", "a non-empty path like './configs'")
        remote = _path_arg(
            container_path, "container_path", "a non-empty path like '/app/configs' or 'configs'"
        )
        return self._with("copy", local_path=local, container_path=remote)

    def sync_package(self, package: str | os.PathLike[str]) -> Image:
        """Sync a local Python package (an importable name or a path) and make it importable."""
        pkg = _path_arg(package, "package", "a package name like 'mylib' or a path like './mylib'")
        return self._with("sync_package", package=pkg)

    def workdir(self, path: str | os.PathLike[str]) -> Image:
        """Set the working directory of later steps and of the code, like ``WORKDIR``.

        A relative ``path`` is relative to the previous working directory.
        """
        where = _path_arg(path, "path", "a non-empty directory path like '/app'")
        return self._with("workdir", path=where)

    def _dockerfile_step(self, instruction: str, reason: str) -> Image:
        """A Dockerfile instruction kept as text because it cannot be applied to a live pod."""
        for arg, value in (("instruction", instruction), ("reason", reason)):
            if not isinstance(value, str) or not value.strip():
                raise spec_error(arg, value, "a non-empty string")
        return self._with("dockerfile", instruction=instruction.strip(), reason=reason.strip())

    # -- Dockerfiles ---------------------------------------------------------------------------

    @classmethod
    def from_dockerfile(
        cls, path: str | os.PathLike[str], *, context: str | os.PathLike[str] | None = None
    ) -> Image:
        """The Image a Dockerfile describes, for live application instead of ``docker build``.

        ``FROM`` gives ``image_id``; ``RUN``, ``ENV``, ``COPY``/``ADD`` of local files and
        ``WORKDIR`` become steps; ``ARG`` values are substituted. Instructions that cannot be
        applied to a running pod (``CMD``, ``EXPOSE``, later build stages, ``ADD`` of a URL...)
        become ``dockerfile`` steps, listed by :attr:`not_live` with the reason. ``COPY`` sources
        are resolved against ``context`` (default: the Dockerfile's directory) and stored as
        absolute paths. Raises :class:`~hotpod.errors.SpecError` naming the line at fault.
        """
        from hotpod.dockerfile import parse_dockerfile

        return parse_dockerfile(path, context=context)

    def to_dockerfile(self, context_dir: str | os.PathLike[str] | None = None) -> str:
        """This image as a standard Dockerfile.

        With ``context_dir``, the local files the steps need (copies, packages, local pip
        requirements) are staged there too, so that ``docker build context_dir`` builds an
        equivalent image (:func:`hotpod.dockerfile.write_build_context` also writes the
        Dockerfile). Without it, only the text is produced.
        """
        from hotpod.dockerfile import compile_dockerfile

        return compile_dockerfile(self, context_dir)

    # -- views ---------------------------------------------------------------------------------

    @property
    def not_live(self) -> tuple[ImageStep, ...]:
        """The ``dockerfile`` steps: instructions that pods skip and report, with the reason."""
        return tuple(step for step in self.steps if step.kind == "dockerfile")

    @property
    def env_vars(self) -> dict[str, str]:
        """The variables of all ``set_env_vars`` steps merged in order (later steps win)."""
        merged: dict[str, str] = {}
        for step in self.steps:
            if step.kind == "set_env_vars":
                merged.update(step.args["env_vars"])
        return merged

    def to_dict(self) -> dict[str, Any]:
        """``{"image_id", "name", "steps": [step.to_dict(), ...]}``: JSON-serialisable."""
        return {
            "image_id": self.image_id,
            "name": self.name,
            "steps": [step.to_dict() for step in self.steps],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Image:
        """The Image ``to_dict`` describes, every step validated again."""
        if not isinstance(data, Mapping):
            raise spec_error("image", data, "a dict with 'image_id', 'name' and 'steps'")
        image = cls(data.get("image_id"), name=data.get("name"))
        steps = data.get("steps") or []
        if not isinstance(steps, Sequence) or isinstance(steps, str):
            raise spec_error("steps", steps, "a list of step dicts")
        for raw in steps:
            step = ImageStep.from_dict(raw)
            image = image._with(step.kind, **step.args)
        return image

    def __repr__(self) -> str:
        parts = [] if self.image_id is None else [repr(self.image_id)]
        if self.name is not None:
            parts.append(f"name={self.name!r}")
        if self.steps:
            parts.append(f"steps={[str(s) for s in self.steps]!r}")
        return f"Image({', '.join(parts)})"


__all__ = ["STEP_KINDS", "Image", "ImageStep"]
