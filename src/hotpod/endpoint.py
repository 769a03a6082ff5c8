"""``Endpoint``: how to reach the pods of a pool that hotpod did not create.

Either a ``url`` (a Service or load balancer that routes to the pods, like
``my-lb.default.svc:8080``) or a ``selector`` (labels picking the pods to call directly).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from hotpod._quantity import FrozenMap, check_label_map, spec_error
from hotpod.errors import SpecError

_URL_EXPECTED = (
    "a host and port like 'my-lb.default.svc:8080', or an http(s) URL like "
    "'http://host:8080/path' (no user, query or fragment)"
)
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


def _valid_host(host: str) -> bool:
    if ":" in host:  # an IPv6 address, given in brackets
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    return bool(_HOST_RE.fullmatch(host))


def _split_url(url: object) -> SplitResult:
    if not isinstance(url, str) or not url.strip() or any(c.isspace() for c in url.strip()):
        raise spec_error("url", url, _URL_EXPECTED)
    text = url.strip()
    full = text if "://" in text else "http://" + text
    try:
        parts = urlsplit(full)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise spec_error("url", url, _URL_EXPECTED) from exc
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or not _valid_host(parts.hostname)
        or "@" in parts.netloc
        or parts.query
        or parts.fragment
        or parts.port == 0
    ):
        raise spec_error("url", url, _URL_EXPECTED)
    return parts


@dataclass(frozen=True, repr=False)
class Endpoint:
    """Exactly one of ``url`` (kept stripped, as written) or ``selector`` (a label map)."""

    url: str | None = None
    selector: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.selector is None):
            raise SpecError(
                f"Endpoint(url={self.url!r}, selector={self.selector!r}): expected exactly one "
                "of url= (like 'my-lb.default.svc:8080') or selector= (like {'app': 'workers'})"
            )
        if self.url is not None:
            _split_url(self.url)
            object.__setattr__(self, "url", self.url.strip())
        if self.selector is not None:
            labels = check_label_map(self.selector, "selector")
            if not labels:
                raise spec_error("selector", self.selector, "a non-empty dict like {'app': 'x'}")
            object.__setattr__(self, "selector", FrozenMap(labels))

    @property
    def base_url(self) -> str | None:
        """``url`` with a scheme (``http://`` when none was written) and no trailing ``/``."""
        if self.url is None:
            return None
        parts = _split_url(self.url)
        return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"

    @property
    def host(self) -> str | None:
        return None if self.url is None else _split_url(self.url).hostname

    @property
    def port(self) -> int | None:
        """The port written in ``url``, else 80 for http and 443 for https."""
        if self.url is None:
            return None
        parts = _split_url(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def __repr__(self) -> str:
        if self.url is not None:
            return f"Endpoint(url={self.url!r})"
        return f"Endpoint(selector={dict(self.selector or {})!r})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "selector": None if self.selector is None else dict(self.selector),
        }


__all__ = ["Endpoint"]
