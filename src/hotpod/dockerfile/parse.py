"""Reading a Dockerfile into an :class:`~hotpod.image.Image` (``Image.from_dockerfile``)."""

from __future__ import annotations

import glob
import json
import os
import posixpath
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hotpod._quantity import is_env_name
from hotpod.errors import SpecError
from hotpod.image import Image

#: The base image of a compiled Dockerfile when the Image has no ``image_id``.
DEFAULT_BASE = "python:3.11-slim"
#: Where compiled Dockerfiles put ``sync_package`` packages (added to ``PYTHONPATH``).
PACKAGES_DIR = "/opt/hotpod/packages"
#: Where compiled Dockerfiles put local pip requirements before installing them.
PIP_DIR = "/tmp/hotpod/pip"

_INSTRUCTIONS = frozenset(
    {"ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
     "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}
)  # fmt: skip
# Instructions whose arguments docker build expands $VARIABLES in (the others get them verbatim).
_EXPANDED = frozenset(
    {"ADD", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}
)
_NOT_LIVE = {
    "CMD": "CMD only sets a container's default command; hotpod runs its own server in the pod",
    "ENTRYPOINT": "ENTRYPOINT only sets a container's entry point; hotpod runs its own server "
    "in the pod",
    "EXPOSE": "EXPOSE only records a port in a built image's metadata; nothing listens because "
    "of it",
    "HEALTHCHECK": "HEALTHCHECK is read from a built image by the container runtime; hotpod "
    "checks its pods' health itself",
    "LABEL": "LABEL only adds metadata to a built image; give pods labels with Compute(labels=...)",
    "MAINTAINER": "MAINTAINER only adds metadata to a built image",
    "ONBUILD": "ONBUILD only runs when another Dockerfile builds FROM this image",
    "SHELL": "SHELL only changes the shell of RUN in docker build; hotpod runs steps with bash",
    "STOPSIGNAL": "STOPSIGNAL is read from a built image by the container runtime; hotpod stops "
    "its pods itself",
    "USER": "USER switches the user of later build steps and of the container; live steps and "
    "code run as the pod's user",
    "VOLUME": "VOLUME only declares a mount point in a built image; mount storage with "
    "Compute(volumes=[kt.Volume(...)])",
}
_ARCHIVES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz", ".tar.zst")
_HEREDOC_RE = re.compile(r"(?<!<)<<(?!<)(-?)([\"']?)([A-Za-z_][A-Za-z0-9_]*)\2")
_ARG_REF_RE = re.compile(r"\$(?:\{(\w+)(?:(:?[-+])([^}]*))?\}|(\w+))")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Never staged from a package or a local pip requirement: caches and version-control data.


# ---------------------------------------------------------------------------------------------
# Reading a Dockerfile
# ---------------------------------------------------------------------------------------------


@dataclass
class _Instruction:
    lineno: int
    keyword: str  # upper case
    rest: str  # the arguments, continuation lines joined
    text: str  # the instruction as written (comments left out), for verbatim use
    heredocs: list[tuple[str, str]] = field(default_factory=list)  # (body, terminator line)


class _Unresolved(Exception):
    """A ``$VARIABLE`` whose value only the base image (or a build argument) knows."""


def _read_instructions(source: str, where: Callable[[int], str]) -> tuple[str, list[_Instruction]]:
    """The escape character and the instructions of a Dockerfile's text."""
    lines = source.splitlines()
    escape, i = "\\", 0
    while i < len(lines):  # parser directives: '# name=value' lines at the very top
        m = re.fullmatch(r"\s*#\s*([A-Za-z]+)\s*=\s*(\S+)\s*", lines[i])
        if not m:
            break
        if m[1].lower() == "escape":
            if m[2] not in ("\\", "`"):
                raise SpecError(f"{where(i + 1)}: the escape directive takes \\ or `")
            escape = m[2]
        i += 1
    found: list[_Instruction] = []
    while i < len(lines):
        if not lines[i].strip() or lines[i].lstrip().startswith("#"):
            i += 1
            continue
        start, parts, text = i, [], []
        while i < len(lines):
            line = lines[i]
            text.append(line)
            i += 1
            stripped = line.rstrip(" \t")
            if not stripped.endswith(escape):
                parts.append(line)
                break
            parts.append(stripped[:-1])
            while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("#")):
                i += 1  # comments and empty lines inside a continued instruction
        m = re.match(r"\s*([A-Za-z]+)(?:\s+|$)(.*)", "".join(parts), re.S)
        if m is None or m[1].upper() not in _INSTRUCTIONS:
            word = "".join(parts).split()[0]
            raise SpecError(
                f"{where(start + 1)}: unknown instruction {word!r}; a Dockerfile line starts "
                f"with one of {', '.join(sorted(_INSTRUCTIONS))}"
            )
        instr = _Instruction(start + 1, m[1].upper(), m[2].strip(), "\n".join(text).strip())
        if escape != "\\":  # keep verbatim text readable by compile_dockerfile's default escape
            instr.text = f"{m[1]} {instr.rest}"
        if instr.keyword in ("RUN", "COPY", "ADD"):
            for dash, _, word in _HEREDOC_RE.findall(instr.rest):
                body: list[str] = []
                while i < len(lines) and (lines[i].lstrip("\t") if dash else lines[i]) != word:
                    body.append(lines[i])
                    i += 1
                if i == len(lines):
                    raise SpecError(f"{where(start + 1)}: here-document {word} never ends")
                instr.heredocs.append(("\n".join(body), lines[i]))
                instr.text += "\n" + "\n".join([*body, lines[i]])
                i += 1
        found.append(instr)
    return escape, found


def _expand(
    text: str, lookup: Callable[[str], str | None], escape: str, *, split: bool
) -> list[str]:
    """Quote removal and ``$VAR`` expansion the way docker build does it.

    ``split=True`` splits on unquoted whitespace into words. A variable ``lookup`` cannot
    resolve raises :class:`_Unresolved`.
    """
    words: list[str] = []
    buf: list[str] = []
    started = False
    i, n = 0, len(text)

    def variable(i: int) -> tuple[str, int]:  # text[i] == "$"
        braced = text.startswith("${", i)
        m = _NAME_RE.match(text, i + 2 if braced else i + 1)
        if m is None:
            return "$", i + 1
        name, end = m[0], m.end()
        value = lookup(name)
        if not braced:
            if value is None:
                raise _Unresolved(name)
            return value, end
        close = text.find("}", end)
        if close < 0:
            raise SpecError(f"${{{name} has no closing }}")
        op = text[end:close]
        if value is None:
            raise _Unresolved(name)
        if op == "":
            return value, close + 1
        for prefix, use_word in ((":-", not value), (":+", bool(value)), ("-", False)):
            if op.startswith(prefix):
                word = "".join(_expand(op[len(prefix) :], lookup, escape, split=False))
                return (word if use_word else value), close + 1
        if op.startswith("+"):
            return "".join(_expand(op[1:], lookup, escape, split=False)), close + 1
        raise SpecError(f"${{{name}{op}}} is a substitution hotpod does not support")

    while i < n:
        c = text[i]
        if split and c.isspace():
            if started:
                words.append("".join(buf))
                buf, started = [], False
            i += 1
            continue
        started = True
        if c == escape and i + 1 < n:
            buf.append(text[i + 1])
            i += 2
        elif c == "'":
            close = text.find("'", i + 1)
            if close < 0:
                raise SpecError(f"unterminated single quote in {text!r}")
            buf.append(text[i + 1 : close])
            i = close + 1
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                if text[i] == escape and i + 1 < n and text[i + 1] in ('"', "$", escape):
                    buf.append(text[i + 1])
                    i += 2
                elif text[i] == "$":
                    value, i = variable(i)
                    buf.append(value)
                else:
                    buf.append(text[i])
                    i += 1
            if i >= n:
                raise SpecError(f"unterminated double quote in {text!r}")
            i += 1
        elif c == "$":
            value, i = variable(i)
            buf.append(value)
        else:
            buf.append(c)
            i += 1
    if started or not split:
        words.append("".join(buf))
    return words


def _substitute(text: str, values: Mapping[str, str], escape: str) -> str:
    """``text`` with ``$NAME``/``${NAME}`` of the given names replaced, everything else kept.

    Used for build arguments, which exist only during ``docker build``: they are written into
    the instructions that would have seen them. Single-quoted text is left alone.
    """
    out: list[str] = []
    i, n, quoted = 0, len(text), False
    while i < n:
        c = text[i]
        if c == escape and i + 1 < n:
            out.append(text[i : i + 2])
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == "'" and not quoted:
            close = text.find("'", i + 1)
            close = n - 1 if close < 0 else close
            out.append(text[i : close + 1])
            i = close + 1
            continue
        elif c == "$":
            m = _ARG_REF_RE.match(text, i)
            name = (m[1] or m[4]) if m else None
            if m and name is not None and name in values:
                value, op, word = values[name], m[2], m[3] or ""
                if op in (":-", "-"):
                    value = value if (value or op == "-") else word
                elif op in (":+", "+"):
                    value = word if (value or op == "+") else ""
                out.append(value)
                i = m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


class _Parser:
    """Reads instructions one by one into an Image (see :func:`parse_dockerfile`)."""

    def __init__(self, path: Path, context: Path) -> None:
        self.path, self.context = path, context
        self.escape = "\\"
        self.image: Image | None = None
        self.stages = 0
        self.global_args: dict[str, str | None] = {}  # ARG before the first FROM
        self.args: dict[str, str | None] = {}  # ARG of the current stage; None: no value
        self.env: dict[str, str | None] = {}  # ENV of the current stage; None: unknown value
        self.workdir: str | None = None

    def where(self, lineno: int) -> str:
        return f"{self.path}, line {lineno}"

    def error(self, instr: _Instruction, message: str) -> SpecError:
        return SpecError(f"{self.where(instr.lineno)}: {instr.keyword}: {message}")

    def lookup(self, name: str) -> str | None:
        return self.env[name] if name in self.env else self.args.get(name)

    def arg_values(self) -> dict[str, str]:
        """Build arguments with a value that no ENV of the same name hides."""
        return {k: v for k, v in self.args.items() if v is not None and k not in self.env}

    def words(self, instr: _Instruction, text: str, *, split: bool = True) -> list[str]:
        try:
            return _expand(text, self.lookup, self.escape, split=split)
        except SpecError as exc:
            raise self.error(instr, str(exc)) from None

    def verbatim(self, instr: _Instruction) -> str:
        """The instruction's text with build arguments written in where docker would see them."""
        if instr.keyword in _EXPANDED or (instr.keyword == "RUN" and not _exec_form(instr.rest)):
            return _substitute(instr.text, self.arg_values(), self.escape)
        return instr.text

    def keep(self, instr: _Instruction, reason: str) -> None:
        assert self.image is not None
        self.image = self.image._dockerfile_step(self.verbatim(instr), reason)

    def parse(self, source: str) -> Image:
        self.escape, instructions = _read_instructions(source, self.where)
        for instr in instructions:
            if instr.keyword == "ARG":
                self.arg(instr)
            elif instr.keyword == "FROM":
                self.from_(instr)
            elif self.image is None:
                raise self.error(instr, "comes before FROM; only ARG may come before FROM")
            elif self.stages > 1:
                reason = f"it belongs to build stage {self.stages}, which is not applied live"
                self.keep(instr, reason)
            elif instr.keyword == "RUN":
                self.run(instr)
            elif instr.keyword == "ENV":
                self.set_env(instr)
            elif instr.keyword == "WORKDIR":
                self.set_workdir(instr)
            elif instr.keyword in ("COPY", "ADD"):
                self.copy(instr)
            else:
                self.keep(instr, _NOT_LIVE[instr.keyword])
        if self.image is None:
            raise SpecError(f"{self.path} has no FROM instruction; a Dockerfile starts with one")
        return self.image

    # -- instructions -----------------------------------------------------------------------

    def arg(self, instr: _Instruction) -> None:
        scope = self.global_args if self.image is None else self.args
        problems: list[str] = []
        for word in _shell_words(instr.rest):
            name, eq, default = word.partition("=")
            if not _NAME_RE.fullmatch(name):
                raise self.error(instr, f"{name!r} is not a build argument name")
            if not eq:
                scope[name] = self.global_args.get(name) if self.image is not None else None
                if scope[name] is None:
                    problems.append(
                        f"ARG {name} has no default: it is a build argument (docker build "
                        f"--build-arg {name}=...), which live steps cannot receive; give it a "
                        "default to use it live"
                    )
                continue
            try:
                scope[name] = self.words(instr, default, split=False)[0]
            except _Unresolved as exc:
                scope[name] = None
                problems.append(_unresolved_reason(str(exc)))
        if problems and self.image is not None:
            self.keep(instr, "; ".join(problems))

    def from_(self, instr: _Instruction) -> None:
        self.stages += 1
        flags, rest = _flags(instr.rest)
        try:
            words = _expand(rest, self.global_args.get, self.escape, split=True)
        except _Unresolved as exc:
            raise self.error(
                instr, f"${exc} has no value; give it a default with ARG {exc}=... before FROM"
            ) from None
        alias = len(words) == 3 and words[1].lower() == "as"
        if len(words) != 1 and not alias:
            raise self.error(instr, "expected FROM IMAGE or FROM IMAGE AS NAME")
        self.args, self.env, self.workdir = {}, {}, None
        known = {k: v for k, v in self.global_args.items() if v is not None}
        text = _substitute(instr.text, known, self.escape)
        if self.image is not None:
            reason = (
                f"a second FROM starts build stage {self.stages}; only the first stage "
                f"({self.image.image_id}) is applied live. Build the image with docker build "
                "to use the later stages"
            )
            self.image = self.image._dockerfile_step(text, reason)
            return
        try:
            self.image = Image(words[0])
        except SpecError as exc:
            raise self.error(instr, str(exc)) from None
        if flags or alias:
            what = f"names the build stage {words[2]!r}" if alias else "sets " + " ".join(flags)
            reason = f"it {what}, which only docker build uses; pods start from {words[0]}"
            self.image = self.image._dockerfile_step(text, reason)

    def run(self, instr: _Instruction) -> None:
        assert self.image is not None
        flags, rest = _flags(instr.rest)
        other = [f for f in flags if not f.startswith("--mount=type=cache")]
        if other:
            return self.keep(instr, f"{' '.join(other)} only works in docker build")
        exec_form = _exec_form(rest)
        if exec_form is not None and _is_shell_c(exec_form):  # ["/bin/sh", "-c", "script"]
            command = _substitute(exec_form[2], self.arg_values(), self.escape)
        elif exec_form is not None:  # no shell: build arguments are not expanded either
            command = shlex.join(exec_form)
        else:
            if len(instr.heredocs) == 1 and _HEREDOC_RE.fullmatch(rest):  # RUN <<EOF: a script
                command = instr.heredocs[0][0]
            else:
                bodies = [f"{body}\n{end}" for body, end in instr.heredocs]
                command = "\n".join([rest, *bodies])
            command = _substitute(command, self.arg_values(), self.escape)
        if not command.strip():
            raise self.error(instr, "has no command")
        self.image = self.image.run_bash(command)

    def set_env(self, instr: _Instruction) -> None:
        assert self.image is not None
        words = _shell_words(instr.rest)
        if words and "=" not in words[0]:  # legacy form: ENV NAME value
            value = instr.rest[len(words[0]) :].strip()
            pairs = [(words[0], value)] if value else []
        else:
            split = [w.partition("=") for w in words]
            pairs = (
                [] if any(not n or not eq for n, eq, _ in split) else [(n, v) for n, _, v in split]
            )
        if not pairs:
            raise self.error(instr, "expected ENV NAME=value [NAME=value ...]")
        try:
            values = {name: self.words(instr, raw, split=False)[0] for name, raw in pairs}
        except _Unresolved as exc:
            self.env.update(dict.fromkeys(name for name, _ in pairs))
            return self.keep(instr, _unresolved_reason(str(exc)))
        bad = [name for name in values if not is_env_name(name)]
        if bad:
            self.env.update(dict.fromkeys(values))
            return self.keep(
                instr,
                f"{bad[0]} is not a variable name hotpod can set (letters, digits and _, not "
                "starting with a digit)",
            )
        self.image = self.image.set_env_vars(values)
        self.env.update(values)

    def set_workdir(self, instr: _Instruction) -> None:
        assert self.image is not None
        try:
            path = self.words(instr, instr.rest, split=False)[0].strip()
        except _Unresolved as exc:
            self.workdir = None
            return self.keep(instr, _unresolved_reason(str(exc)))
        if not path:
            raise self.error(instr, "has no path")
        if self.workdir is not None:
            path = posixpath.join(self.workdir, path)
        path = posixpath.normpath(path) if posixpath.isabs(path) else path
        self.workdir = path if posixpath.isabs(path) else None
        self.image = self.image.workdir(path)

    def copy(self, instr: _Instruction) -> None:
        assert self.image is not None
        flags, rest = _flags(instr.rest)
        names = [f.split("=", 1)[0] for f in flags]
        if "--from" in names:
            return self.keep(
                instr,
                "--from copies out of another build stage or image, which exists only in docker "
                "build; copy the files with .copy() from this machine instead",
            )
        odd = [f for f in flags if f.split("=", 1)[0] != "--link"]  # --link: caching only
        if {"--chown", "--chmod"} & set(names):
            return self.keep(
                instr,
                f"{' '.join(odd)} sets ownership or mode, which copy steps do not; use .copy() "
                "and then .run_bash('chown ...') instead",
            )
        if odd:
            return self.keep(instr, f"{' '.join(odd)} only works in docker build")
        if instr.heredocs:
            return self.keep(
                instr, "a here-document creates the file during docker build; use .run_bash()"
            )
        try:
            args = _exec_form(rest) or self.words(instr, rest)
        except _Unresolved as exc:
            return self.keep(instr, _unresolved_reason(str(exc)))
        if len(args) < 2:
            raise self.error(instr, "expected at least a source and a destination")
        *sources, dest = args
        if instr.keyword == "ADD":
            remote = [s for s in sources if "://" in s or s.startswith("git@")]
            if remote:
                return self.keep(
                    instr,
                    f"ADD downloads {remote[0]} during docker build; download it with "
                    f".run_bash('curl -fsSL {remote[0]} -o ...') instead",
                )
            archives = [s for s in sources if s.lower().endswith(_ARCHIVES)]
            if archives:
                return self.keep(
                    instr,
                    f"ADD unpacks the archive {archives[0]} during docker build; use .copy() "
                    "and .run_bash('tar -xf ...') instead",
                )
        into_dir = dest.endswith("/") or dest in (".", "..") or dest.endswith(("/.", "/.."))
        found = [local for source in sources for local in self.sources(instr, source)]
        if len(found) > 1 and not into_dir:
            raise self.error(
                instr, f"{len(found)} sources need a destination directory ending with /: {dest}"
            )
        if not posixpath.isabs(dest) and self.workdir is not None:
            dest = posixpath.join(self.workdir, dest)
        dest = posixpath.normpath(dest)
        for local in found:  # a directory's contents go to dest, a file into it or to it
            target = posixpath.join(dest, local.name) if into_dir and local.is_file() else dest
            self.image = self.image.copy(str(local), target)

    def sources(self, instr: _Instruction, source: str) -> list[Path]:
        """The local paths a COPY source names, inside the build context."""
        path = (self.context / source.lstrip("/")).resolve()
        if not path.is_relative_to(self.context):
            raise self.error(instr, f"{source} is outside the build context {self.context}")
        if glob.has_magic(source):
            found = sorted(Path(p) for p in glob.glob(str(path)))
            if not found:
                raise self.error(instr, f"no file in {self.context} matches {source}")
            return found
        if not path.exists():
            raise self.error(
                instr, f"{source} does not exist in the build context {self.context} ({path})"
            )
        return [path]


def _exec_form(rest: str) -> list[str] | None:
    """The JSON array of an exec-form instruction (``["python", "app.py"]``), else None."""
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _is_shell_c(argv: list[str]) -> bool:
    shells = ("sh", "/bin/sh", "bash", "/bin/bash", "/usr/bin/bash")
    return len(argv) == 3 and argv[0] in shells and argv[1] == "-c"


def _flags(rest: str) -> tuple[list[str], str]:
    """Split leading ``--flag=value`` options off an instruction's arguments."""
    flags: list[str] = []
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        flags.append(flag)
        rest = rest.lstrip()
    return flags, rest


def _shell_words(text: str) -> list[str]:
    """Words split on unquoted whitespace, quotes kept (values are expanded later)."""
    quoted = r""""(?:[^"\\]|\\.)*(?:"|\Z)|'[^']*(?:'|\Z)"""  # unterminated: up to the end
    return re.findall(rf"""(?:[^\s"'\\]|\\.|{quoted})+""", text, re.S)


def _unresolved_reason(name: str) -> str:
    return (
        f"it uses ${name}, which this Dockerfile does not define (only the base image or docker "
        "build would know its value); write the value out to apply it live"
    )


def parse_dockerfile(
    path: str | os.PathLike[str], *, context: str | os.PathLike[str] | None = None
) -> Image:
    """The Image a Dockerfile describes; see :meth:`Image.from_dockerfile`."""
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / "Dockerfile"
    try:
        source = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"Dockerfile {file} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read Dockerfile {file}: {exc}") from exc
    root = Path(context).expanduser() if context is not None else file.parent
    if not root.is_dir():
        raise SpecError(f"build context {root} is not a directory; check context=")
    return _Parser(file.absolute(), root.resolve()).parse(source)
