"""``Secret``: a named set of environment variables given to the pods, never printed.

Where the values come from:

- **On Kubernetes**, ``name`` is a Secret in the pool's namespace. Each of its keys becomes an
  environment variable; the key of variable ``HF_TOKEN`` is ``hf_token`` (see :func:`kube_key`),
  or the Secret's single key when it has only one.
- **Locally** (and when hotpod has to create the Kubernetes Secret), :meth:`Secret.resolve`
  reads them at deploy time, from the first source given:

  1. ``values``: a mapping of variable name -> value, held in memory;
  2. ``path``: a file or a directory on the machine running ``.to()``:

     - a file and ``env_var`` given: the file's content, stripped, is that variable;
     - a file and no ``env_var``: a dotenv file (``KEY=VALUE`` lines; blank lines and ``#``
       comments skipped; an ``export`` prefix and matching quotes around the value removed);
     - a directory: one file per variable, named after it (``HF_TOKEN`` or ``hf_token``;
       hidden files skipped), the content stripped; with ``env_var`` only that one is read;

  3. otherwise the environment variable ``env_var`` of the machine running ``.to()``; with no
     ``env_var`` either, the secret's name upper-cased with ``-`` and ``.`` as ``_``
     (``Secret("hf-token")`` reads ``HF_TOKEN``).

Construction does no I/O; ``resolve()`` does, and fails with a :class:`SpecError` that says what
is missing and how to provide it. ``repr()`` and ``to_dict()`` never include a value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any

from hotpod._quantity import (
    ENV_NAME_EXPECTED,
    FrozenMap,
    check_dns_subdomain,
    check_env_map,
    check_env_name,
    is_env_name,
    spec_error,
)
from hotpod.errors import SpecError

_INLINE_COMMENT = re.compile(r"\s+#")


def kube_key(env_name: str) -> str:
    """The Kubernetes Secret key of variable ``env_name``: ``HF_TOKEN`` -> ``hf_token``."""
    return env_name.lower()


def env_name_for_key(key: str) -> str:
    """The variable a Secret key or file name feeds: ``hf_token``/``hf-token`` -> ``HF_TOKEN``."""
    return key.upper().replace("-", "_").replace(".", "_")


@dataclass(frozen=True, repr=False)
class Secret:
    """A Secret called ``name`` (a DNS-1123 subdomain) providing environment variables.

    ``env_var`` names the single variable it provides; ``values`` gives the values directly;
    ``path`` points at a file or directory holding them. Give at most one of ``values`` and
    ``path``. See the module documentation for how :meth:`resolve` finds the values.
    """

    name: str
    env_var: str | None = None
    _: KW_ONLY
    values: Mapping[str, str] | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        check_dns_subdomain(self.name, "name")
        if self.env_var is not None:
            check_env_name(self.env_var, "env_var")
        if self.values is not None and self.path is not None:
            raise SpecError(
                f"Secret {self.name!r}: values= and path= were both given; pass one of them"
            )
        if self.values is not None:
            values = check_env_map(self.values, "values")
            if not values:
                raise spec_error("values", {}, "a non-empty dict like {'HF_TOKEN': '...'}")
            if self.env_var is not None and self.env_var not in values:
                raise SpecError(
                    f"Secret {self.name!r}: env_var={self.env_var!r} is not a key of values "
                    f"(keys: {', '.join(values)}); make it one, or leave env_var out"
                )
            object.__setattr__(self, "values", FrozenMap(values))
        if self.path is not None:
            path = os.fspath(self.path) if isinstance(self.path, os.PathLike) else self.path
            if not isinstance(path, str) or not path.strip() or "\x00" in path:
                raise spec_error("path", self.path, "a path to a file or directory, like '~/.env'")
            object.__setattr__(self, "path", path)
        if self.values is None and self.path is None and self.env_var is None:
            derived = env_name_for_key(self.name)
            if not is_env_name(derived):
                raise SpecError(
                    f"Secret {self.name!r}: no env_var, values or path given, and {derived!r} "
                    f"(the name upper-cased) is not {ENV_NAME_EXPECTED}; pass env_var=..."
                )

    # -- views ---------------------------------------------------------------------------------

    @property
    def source(self) -> str:
        """Where :meth:`resolve` reads: ``"values"``, ``"path"`` or ``"env"``."""
        if self.values is not None:
            return "values"
        return "path" if self.path is not None else "env"

    @property
    def local_env_var(self) -> str | None:
        """The local variable read when ``source == "env"``: ``env_var`` or derived from name."""
        if self.source != "env":
            return None
        return self.env_var or env_name_for_key(self.name)

    @property
    def env_vars(self) -> tuple[str, ...] | None:
        """The variables this secret provides, when known without I/O (else ``None``)."""
        if self.env_var is not None:
            return (self.env_var,)
        if self.values is not None:
            return tuple(self.values)
        return None if self.path is not None else (env_name_for_key(self.name),)

    def to_dict(self) -> dict[str, Any]:
        """Name, env_var, path and the *names* of in-memory values; never a value."""
        return {
            "name": self.name,
            "env_var": self.env_var,
            "path": self.path,
            "value_names": None if self.values is None else list(self.values),
        }

    def __repr__(self) -> str:
        parts = [repr(self.name)]
        if self.env_var is not None:
            parts.append(f"env_var={self.env_var!r}")
        if self.values is not None:
            hidden = ", ".join(f"{k!r}: '***'" for k in self.values)
            parts.append(f"values={{{hidden}}}")
        if self.path is not None:
            parts.append(f"path={self.path!r}")
        return f"Secret({', '.join(parts)})"

    # -- resolution (I/O) ----------------------------------------------------------------------

    def resolve(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """The variables and their values, read now from ``values``, ``path`` or the environment.

        ``environ`` replaces ``os.environ`` as the environment read (tests, or a captured one).
        """
        if self.values is not None:
            return dict(self.values)
        if self.path is not None:
            return self._resolve_path(Path(self.path).expanduser())
        name = self.local_env_var
        assert name is not None
        env = os.environ if environ is None else environ
        if name not in env:
            raise SpecError(
                f"Secret {self.name!r}: environment variable {name} is not set on this machine; "
                "export it, or pass values={...} or path=..."
            )
        return {name: env[name]}

    def _error(self, what: str) -> SpecError:
        return SpecError(f"Secret {self.name!r}: {what}")

    def _read(self, file: Path) -> str:
        try:
            return file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise self._error(f"{str(file)!r} is not UTF-8 text; store the secret as text") from exc
        except OSError as exc:
            raise self._error(f"cannot read {str(file)!r}: {exc.strerror or exc}") from exc

    def _resolve_path(self, path: Path) -> dict[str, str]:
        if path.is_dir():
            return self._resolve_dir(path)
        if not path.exists():
            raise self._error(
                f"path {self.path!r} does not exist on this machine; create it, or pass "
                "values={...} or env_var=... to read an environment variable"
            )
        text = self._read(path)
        if self.env_var is not None:
            value = text.strip()
            if not value:
                raise self._error(f"{self.path!r} is empty; write the value of {self.env_var}")
            return {self.env_var: value}
        values = self._parse_dotenv(text)
        if not values:
            raise self._error(
                f"{self.path!r} holds no KEY=VALUE lines; add some, or pass env_var=... to use "
                "the whole file as one value"
            )
        return values

    def _resolve_dir(self, path: Path) -> dict[str, str]:
        values: dict[str, str] = {}
        try:
            entries = sorted(path.iterdir())
        except OSError as exc:
            raise self._error(f"cannot list {self.path!r}: {exc.strerror or exc}") from exc
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            name = env_name_for_key(entry.name)
            if self.env_var is not None and name != self.env_var:
                continue
            if not is_env_name(name):
                raise self._error(
                    f"file {entry.name!r} in {self.path!r} does not name an environment "
                    f"variable; expected {ENV_NAME_EXPECTED}"
                )
            values[name] = self._read(entry).strip()
        if not values:
            wanted = (
                f"a file named {self.env_var} or {kube_key(self.env_var)}"
                if self.env_var
                else "one file per variable"
            )
            raise self._error(f"directory {self.path!r} holds no secret files; expected {wanted}")
        return values

    def _parse_dotenv(self, text: str) -> dict[str, str]:
        values: dict[str, str] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export ") or line.startswith("export\t"):
                line = line[len("export") :].lstrip()
            key, eq, value = line.partition("=")
            key, value = key.strip(), value.strip()
            if not eq or not is_env_name(key):
                raise self._error(
                    f"{self.path!r} line {number} is not KEY=VALUE with KEY {ENV_NAME_EXPECTED}"
                )
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            else:
                value = _INLINE_COMMENT.split(value, maxsplit=1)[0]
            values[key] = value
        return values


__all__ = ["Secret", "env_name_for_key", "kube_key"]
