"""Create-or-patch that also drops what a Compute stopped setting.

A JSON merge patch changes the fields it names and leaves every other field alone, so a label, an
annotation or a Knative autoscaling setting that a Compute no longer sets would stay on the live
object. Like ``kubectl apply``, each object hotpod applies carries what it applied in the
annotation ``hotpod.dev/last-applied``; the next patch sets to ``null`` (deletes) every field
that annotation has and the new object does not. Fields hotpod never set (a controller's, a
user's ``kubectl label``) are left alone. Lists are replaced whole, as merge patches do.
"""

from __future__ import annotations

import json
from typing import Any

LAST_APPLIED = "hotpod.dev/last-applied"


def annotated(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with its ``hotpod.dev/last-applied`` annotation: ``obj`` itself, compact JSON."""
    meta = dict(obj.get("metadata") or {})
    notes = {k: v for k, v in (meta.get("annotations") or {}).items() if k != LAST_APPLIED}
    meta["annotations"] = notes
    bare = {**obj, "metadata": meta}
    text = json.dumps(bare, sort_keys=True, separators=(",", ":"))
    return {**obj, "metadata": {**meta, "annotations": {**notes, LAST_APPLIED: text}}}


def last_applied(live: dict[str, Any] | None) -> dict[str, Any]:
    """What hotpod applied last to ``live`` ({} for an object it did not make or cannot read)."""
    notes = ((live or {}).get("metadata") or {}).get("annotations") or {}
    try:
        old = json.loads(notes.get(LAST_APPLIED) or "{}")
    except ValueError:
        return {}
    return old if isinstance(old, dict) else {}


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that takes an object hotpod applied as ``old`` to ``new``: ``new`` with
    ``None`` for every key ``old`` set and ``new`` does not (in nested objects too)."""
    patch: dict[str, Any] = dict(new)
    for key, was in old.items():
        if key not in new:
            patch[key] = None
        elif isinstance(was, dict) and isinstance(new[key], dict):
            patch[key] = merge_patch(was, new[key])
    return patch


def dropped(old: list[list[str]], new: list[list[str]]) -> list[list[str]]:
    """The objects (``[apiVersion, kind, name, namespace]``) an earlier apply made that this one
    does not make, claims excepted (their data outlives the Compute: ``teardown --volumes``)."""
    keep = {tuple(o) for o in new}
    return [
        list(o)
        for o in old
        if isinstance(o, list | tuple)
        and len(o) == 4
        and tuple(o) not in keep
        and o[1] != "PersistentVolumeClaim"
    ]


__all__ = ["LAST_APPLIED", "annotated", "dropped", "last_applied", "merge_patch"]
