"""``Volume``: persistent storage mounted into every pod of a pool.

Which claim backs it:

- ``pvc="shared-data"``: an existing PersistentVolumeClaim, used as is;
- ``size="100Gi"``: hotpod creates a claim named after the volume, of that size (with
  ``storage_class`` and ``access_mode``), if it does not exist yet;
- neither: a claim named after the volume must already exist.

The local backend keeps a directory per claim under ``HOTPOD_HOME/volumes``.
"""

from __future__ import annotations

import posixpath
from dataclasses import KW_ONLY, dataclass
from typing import Any

from hotpod._quantity import (
    check_dns_label,
    check_dns_subdomain,
    memory_quantity,
    parse_memory,
    spec_error,
)
from hotpod.errors import SpecError

ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")


def normalize_mount_path(value: object, arg: str = "mount_path") -> str:
    """An absolute POSIX path, normalised (``/data/./x/`` -> ``/data/x``), other than ``/``."""
    expected = "an absolute path in the container like '/data' (not '/', no ':')"
    if not isinstance(value, str) or not value.startswith("/") or ":" in value or "\x00" in value:
        raise spec_error(arg, value, expected)
    path = "/" + posixpath.normpath(value).lstrip("/")
    if path == "/" or any(c in "\n\r" for c in path):
        raise spec_error(arg, value, expected)
    return path


@dataclass(frozen=True, repr=False)
class Volume:
    """A volume ``name`` (a DNS-1123 label) mounted at ``mount_path`` in every pod."""

    name: str
    mount_path: str
    pvc: str | None = None
    size: str | None = None
    _: KW_ONLY
    storage_class: str | None = None
    access_mode: str = "ReadWriteOnce"

    def __post_init__(self) -> None:
        check_dns_label(self.name, "name")
        object.__setattr__(self, "mount_path", normalize_mount_path(self.mount_path))
        if self.pvc is not None:
            check_dns_subdomain(self.pvc, "pvc")
        if self.size is not None:
            object.__setattr__(self, "size", memory_quantity(self.size, "size"))
        if self.pvc is not None and self.size is not None:
            raise SpecError(
                f"Volume {self.name!r}: pvc={self.pvc!r} and size={self.size!r} were both given; "
                "pass pvc= to use an existing claim, or size= to have one created"
            )
        if self.storage_class is not None:
            check_dns_subdomain(self.storage_class, "storage_class")
            if self.size is None:
                raise SpecError(
                    f"Volume {self.name!r}: storage_class={self.storage_class!r} only applies "
                    "to a claim hotpod creates; pass size= as well, or leave storage_class out"
                )
        if self.access_mode not in ACCESS_MODES:
            raise spec_error("access_mode", self.access_mode, f"one of {', '.join(ACCESS_MODES)}")

    @property
    def claim_name(self) -> str:
        """The PersistentVolumeClaim backing this volume: ``pvc``, else the volume's name."""
        return self.pvc or self.name

    @property
    def creates_claim(self) -> bool:
        """Whether hotpod creates the claim (``size`` given) rather than expecting it."""
        return self.size is not None

    @property
    def size_bytes(self) -> int | None:
        return None if self.size is None else parse_memory(self.size, "size")

    def __repr__(self) -> str:
        parts = [f"name={self.name!r}", f"mount_path={self.mount_path!r}"]
        for key in ("pvc", "size", "storage_class"):
            if getattr(self, key) is not None:
                parts.append(f"{key}={getattr(self, key)!r}")
        if self.access_mode != "ReadWriteOnce":
            parts.append(f"access_mode={self.access_mode!r}")
        return f"Volume({', '.join(parts)})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mount_path": self.mount_path,
            "pvc": self.pvc,
            "size": self.size,
            "storage_class": self.storage_class,
            "access_mode": self.access_mode,
        }


__all__ = ["ACCESS_MODES", "Volume", "normalize_mount_path"]
