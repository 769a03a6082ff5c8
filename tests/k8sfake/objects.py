"""Pure helpers on Kubernetes objects as plain dicts: selectors, patches, names, times.

No state and no I/O: the store (``store.py``) and the controllers build on these.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import random
import re
from collections.abc import Mapping
from typing import Any

import jsonpatch

#: The alphabet Kubernetes draws generated name suffixes and pod-template hashes from.
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


class ApiError(Exception):
    """An error the API answers with a ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def now() -> str:
    """The current time as Kubernetes writes it (RFC 3339, seconds, UTC)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def suffix(n: int = 5) -> str:
    return "".join(random.choice(NAME_ALPHABET) for _ in range(n))


def template_hash(template: Any) -> str:
    """A stable short hash of a pod template (the ``pod-template-hash`` label)."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(NAME_ALPHABET[b % len(NAME_ALPHABET)] for b in digest[:10])


def labels(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


# ---------------------------------------------------------------------------------------------
# Label and field selectors
# ---------------------------------------------------------------------------------------------

_SET_RE = re.compile(r"^\s*(!?)([A-Za-z0-9._/-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9._/-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*$")


def _split_terms(selector: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        terms.append(cur)
    return [t for t in terms if t.strip()]


def parse_label_selector(selector: str | None) -> list[tuple[str, str, set[str]]]:
    """``"a=b,c!=d,e in (x,y),!f,g"`` as (key, op, values) terms; ApiError 400 when malformed."""
    out: list[tuple[str, str, set[str]]] = []
    for term in _split_terms(selector or ""):
        m = _EQ_RE.match(term)
        if m:
            out.append((m.group(1), "!=" if m.group(2) == "!=" else "=", {m.group(3)}))
            continue
        m = _SET_RE.match(term)
        if m and not (m.group(1) and m.group(3)):
            key = m.group(2)
            if m.group(3):
                values = {v.strip() for v in m.group(4).split(",") if v.strip()}
                out.append((key, m.group(3), values))
            else:
                out.append((key, "!exists" if m.group(1) else "exists", set()))
            continue
        raise ApiError(400, "BadRequest", f"unable to parse requirement: {term.strip()!r}")
    return out


def selector_from_match_labels(
    selector: Mapping[str, Any] | None,
) -> list[tuple[str, str, set[str]]]:
    """A workload's ``spec.selector`` (matchLabels and matchExpressions) as selector terms."""
    terms: list[tuple[str, str, set[str]]] = []
    for k, v in ((selector or {}).get("matchLabels") or {}).items():
        terms.append((k, "=", {str(v)}))
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
    for expr in (selector or {}).get("matchExpressions") or []:
        terms.append((expr["key"], ops[expr["operator"]], set(expr.get("values") or [])))
    return terms


def matches_labels(have: Mapping[str, str], terms: list[tuple[str, str, set[str]]]) -> bool:
    for key, op, values in terms:
        present = key in have
        value = have.get(key)
        if op == "=" and not (present and value in values):
            return False
        if op == "!=" and present and value in values:
            return False
        if op == "in" and not (present and value in values):
            return False
        if op == "notin" and present and value in values:
            return False
        if op == "exists" and not present:
            return False
        if op == "!exists" and present:
            return False
    return True


def _field(obj: Mapping[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, Mapping) else None
    return "" if cur is None else str(cur)


def matches_fields(obj: Mapping[str, Any], selector: str | None) -> bool:
    """``fieldSelector``: ``a.b=c`` / ``a.b==c`` / ``a.b!=c`` terms on any dotted path."""
    for term in _split_terms(selector or ""):
        m = re.match(r"^\s*([A-Za-z0-9._]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid field selector: {term!r}")
        equal = _field(obj, m.group(1)) == m.group(3)
        if equal != (m.group(2) != "!="):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Patches
# ---------------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, ``null`` deletes, the rest replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


#: patchMergeKey of the list fields hotpod's objects use (others are replaced, as Kubernetes does
#: for lists without a merge key).
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "imagePullSecrets": "name",
    "volumeMounts": "mountPath",
    "conditions": "type",
    "ownerReferences": "uid",
    "finalizers": None,  # a merged set of strings
}


def _port_key(items: list[Any]) -> str | None:
    if all(isinstance(i, Mapping) and "containerPort" in i for i in items):
        return "containerPort"
    if all(isinstance(i, Mapping) and "port" in i for i in items):
        return "port"
    return None


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A strategic merge patch, good enough for built-in kinds.

    Lists of containers, volumes, env, mounts, ports, conditions and owner references merge by
    their merge key (``$patch: delete`` in an item removes it); ``finalizers`` merge as a set;
    other lists are replaced; ``$patch: replace`` on a map replaces it; other ``$`` directives
    (``$setElementOrder``, ``$retainKeys``) are ignored.
    """
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    if patch.get("$patch") == "delete":
        return None
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_list(key, result[key], value)
        elif isinstance(value, list):
            result[key] = [
                copy.deepcopy(i)
                for i in value
                if not (isinstance(i, Mapping) and i.get("$patch") == "delete")
            ]
        else:
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    return result


def _merge_list(field: str, old: list[Any], new: list[Any]) -> list[Any]:
    if field == "finalizers":
        return old + [f for f in new if f not in old]
    key = _MERGE_KEYS.get(field) if field != "ports" else _port_key(old + new)
    if key is None or not all(isinstance(i, Mapping) and key in i for i in old + new):
        return copy.deepcopy(new)
    result = [dict(i) for i in old]
    for item in new:
        idx = next((n for n, o in enumerate(result) if o.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                result.pop(idx)
        elif idx is None:
            result.append(copy.deepcopy(dict(item)))
        else:
            result[idx] = strategic_merge_patch(result[idx], item)
    return result


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch (the ``jsonpatch`` library)."""
    try:
        return jsonpatch.apply_patch(target, ops)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
        raise ApiError(422, "Invalid", f"the JSON patch could not be applied: {e}") from None
