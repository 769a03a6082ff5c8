"""Ignore rules: what a walk skips (built-in names, ``.gitignore`` and ``.hotpodignore``).

Each ignore file applies to its own directory and below with git's semantics (``pathspec``'s
gitignore flavour); the deepest file with a matching pattern decides. Each file's patterns are
also merged into one quick regex, so a path no pattern can match never reaches ``pathspec``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import pathspec

IGNORE_FILES = (".gitignore", ".hotpodignore")
ALWAYS_SKIP = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".venv",
        "venv",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        "node_modules",
        ".ipynb_checkpoints",
        ".DS_Store",
    }
)
SKIP_SUFFIXES = (".pyc",)


class _Rules(NamedTuple):
    """The ignore patterns of one directory: its prefix ("" or "pkg/"), the spec, and a regex
    that matches every path some pattern could match (None: no such shortcut, ask the spec)."""

    base: str
    spec: pathspec.PathSpec
    quick: re.Pattern[str] | None


_Chain = tuple[_Rules, ...]
_Quick = list[tuple[int, Callable[[str], object]]] | None  # see _quick_checks

_NAMED_GROUP = re.compile(r"\(\?P<[A-Za-z_][A-Za-z0-9_]*>")
_UNSAFE_TO_MERGE = re.compile(r"\\[1-9]|\(\?P=|\(\?\(")  # back references, conditionals


def _read_rules(directory: str, prefix: str) -> _Rules | None:
    lines: list[str] = []
    for name in IGNORE_FILES:
        try:
            with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as f:
                lines.extend(f.read().splitlines())
        except OSError:
            continue
    if not lines:
        return None
    import pathspec  # lazily: importing it costs ~50 ms, and most directories need none

    spec = pathspec.GitIgnoreSpec.from_lines(lines)
    return _Rules(prefix, spec, _quick_regex(spec))


def _quick_regex(spec: pathspec.PathSpec) -> re.Pattern[str] | None:
    """One regex matching a path iff some pattern of ``spec`` that includes or excludes matches
    it (the alternation of their regexes, named groups made plain), so that the common case of
    a path no pattern touches costs one regex search instead of a call per pattern. None if a
    pattern is not a plain regex this can merge; the spec is then asked for every path."""
    parts: list[str] = []
    for pattern in spec.patterns:
        if pattern.include is None:
            continue
        regex = getattr(pattern, "regex", None)
        if not isinstance(regex, re.Pattern) or not isinstance(regex.pattern, str):
            return None
        if regex.flags != re.UNICODE or _UNSAFE_TO_MERGE.search(regex.pattern):
            return None
        parts.append(_NAMED_GROUP.sub("(?:", regex.pattern))
    try:
        return re.compile("|".join(f"(?:{part})" for part in parts) if parts else "(?!)")
    except re.error:
        return None


def _spec_verdict(spec: pathspec.PathSpec, path: str) -> bool | None:
    """True: ignored; False: re-included by a negation; None: no pattern matches."""
    check = getattr(spec, "check_file", None)
    if check is not None:
        return check(path).include
    for pattern in reversed(spec.patterns):  # pathspec without check_file: last match wins
        if pattern.include is not None and pattern.match_file(path) is not None:
            return pattern.include
    return None


def _ignored(rel: str, is_dir: bool, chain: _Chain) -> bool:
    for base, spec, quick in reversed(chain):  # the deepest ignore file that matches decides
        sub = rel[len(base) :] + "/" if is_dir else rel[len(base) :]
        if quick is not None and quick.search(sub) is None:
            continue
        verdict = _spec_verdict(spec, sub)
        if verdict is not None:
            return verdict
    return False


def _quick_checks(chain: _Chain) -> _Quick:
    """(prefix length, search) per rule set of ``chain`` if all have a quick regex, else None."""
    if not chain or any(rules.quick is None for rules in chain):
        return None
    return [(len(rules.base), rules.quick.search) for rules in chain if rules.quick is not None]


def _dir_ignored(prefix: str, chain: _Chain, name: str) -> bool:
    """Whether the walk skips a directory named ``name`` in a directory with these rules."""
    if name in ALWAYS_SKIP or name.endswith(SKIP_SUFFIXES):
        return True
    return bool(chain) and _ignored(prefix + name, True, chain)
