"""Validation of the small values spec objects are made of.

Kubernetes quantities (``'500m'`` cores, ``'16Gi'`` bytes), Kubernetes names (DNS-1123 labels and
subdomains), label / annotation / environment maps, and :class:`FrozenMap`, the immutable,
hashable mapping spec values store their maps in. Pure functions, standard library only.

Every failure raises :class:`~hotpod.errors.SpecError` with a message that names the argument,
the bad value and what is accepted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any, NoReturn, TypeGuard, TypeVar

from hotpod.errors import SpecError

K = TypeVar("K")
V = TypeVar("V")

_MAX_INT64 = 2**63 - 1


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)``, shortened to ``limit`` characters for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def spec_error(arg: str, value: object, expected: str) -> SpecError:
    """``SpecError("arg=value: expected ...")``: the one message shape for bad arguments."""
    return SpecError(f"{arg}={short_repr(value)}: expected {expected}")


def _fail(arg: str, value: object, expected: str) -> NoReturn:
    raise spec_error(arg, value, expected)


class FrozenMap(Mapping[K, V]):
    """An immutable, hashable mapping that keeps insertion order and compares equal to a dict.

    Spec values store their maps (labels, env vars, selectors) in one so the value itself stays
    immutable and hashable. ``dict(m)`` gives a plain, mutable copy.
    """

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[K, V] | None = None) -> None:
        self._data: dict[K, V] = dict(data) if data else {}
        self._hash: int | None = None

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMap):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return repr(self._data)

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMap, (self._data,))


# --------------------------------------------------------------------------------------------
# Quantities
# --------------------------------------------------------------------------------------------

_CPU_EXPECTED = "a number of cores like '4', '0.5' or '500m'"
_CPU_RE = re.compile(r"^(?P<num>\d+(?:\.\d*)?|\.\d+)(?P<milli>m)?$", re.ASCII)

_MEMORY_EXPECTED = (
    "a quantity of bytes like '16Gi', '512Mi', '1G' or '1e9' "
    "(suffixes Ki, Mi, Gi, Ti, Pi, Ei or k, M, G, T, P, E), or a whole number of bytes"
)
_MEMORY_RE = re.compile(
    r"^(?P<num>\d+(?:\.\d*)?|\.\d+)"
    r"(?:(?P<exp>[eE][+-]?\d{1,3})|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E))?$",
    re.ASCII,
)
_MEMORY_SUFFIXES = {
    None: 1,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}


def _cpu_decimal(value: object, arg: str) -> Decimal:
    if isinstance(value, bool):
        _fail(arg, value, _CPU_EXPECTED)
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            _fail(arg, value, _CPU_EXPECTED)
        cores = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    elif isinstance(value, str):
        match = _CPU_RE.fullmatch(value.strip())
        if not match:
            _fail(arg, value, _CPU_EXPECTED)
        cores = Decimal(match["num"])
        if match["milli"]:
            cores = cores / 1000
    else:
        _fail(arg, value, _CPU_EXPECTED)
    if cores < Decimal("0.001"):
        _fail(arg, value, f"{_CPU_EXPECTED}, at least '1m' (0.001 cores)")
    return cores


def parse_cpu(value: object, arg: str = "cpus") -> float:
    """Cores as a float: ``'4'`` -> 4.0, ``'500m'`` -> 0.5, ``2`` -> 2.0. Must be > 0."""
    return float(_cpu_decimal(value, arg))


def cpu_quantity(value: object, arg: str = "cpus") -> str:
    """The Kubernetes spelling of a CPU amount: ``2`` -> ``'2'``, ``0.5`` -> ``'500m'``.

    Strings are kept as written (stripped); numbers become whole cores or millicores.
    """
    cores = _cpu_decimal(value, arg)
    if isinstance(value, str):
        return value.strip()
    if cores == cores.to_integral_value():
        return str(int(cores))
    return f"{int((cores * 1000).to_integral_value(rounding=ROUND_CEILING))}m"


def parse_memory(value: object, arg: str = "memory") -> int:
    """Bytes as an int: ``'16Gi'``, ``'512Mi'``, ``'1G'``, ``'1e9'``, ``'1000'`` or ``1000``.

    Fractions of a byte round up, as Kubernetes does. Must be > 0.
    """
    if isinstance(value, bool):
        _fail(arg, value, _MEMORY_EXPECTED)
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            _fail(arg, value, _MEMORY_EXPECTED)
        amount = Decimal(repr(value))
    elif isinstance(value, str):
        match = _MEMORY_RE.fullmatch(value.strip())
        if not match:
            _fail(arg, value, _MEMORY_EXPECTED)
        try:
            amount = Decimal(match["num"])
            if match["exp"]:
                amount = amount.scaleb(int(match["exp"][1:]))
        except InvalidOperation:  # pragma: no cover - the regex only admits valid decimals
            _fail(arg, value, _MEMORY_EXPECTED)
        amount *= _MEMORY_SUFFIXES[match["suffix"]]
    else:
        _fail(arg, value, _MEMORY_EXPECTED)
    if amount <= 0:
        _fail(arg, value, f"{_MEMORY_EXPECTED}, greater than 0")
    if amount > _MAX_INT64:
        _fail(arg, value, f"{_MEMORY_EXPECTED}, at most 8Ei")
    return int(amount.to_integral_value(rounding=ROUND_CEILING))


def memory_quantity(value: object, arg: str = "memory") -> str:
    """The Kubernetes spelling of a byte amount: strings as written, numbers as whole bytes."""
    size = parse_memory(value, arg)
    return value.strip() if isinstance(value, str) else str(size)


# --------------------------------------------------------------------------------------------
# Kubernetes names
# --------------------------------------------------------------------------------------------

_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_DNS_LABEL_EXPECTED = (
    "a DNS-1123 label: at most 63 lowercase letters, digits and '-', "
    "starting and ending with a letter or digit, like 'my-name'"
)
_DNS_SUBDOMAIN_EXPECTED = (
    "a DNS-1123 subdomain: at most 253 characters, lowercase letters, digits, '-' and '.', "
    "starting and ending with a letter or digit, like 'my-name' or 'my.name'"
)
_LABEL_KEY_EXPECTED = (
    "a label key: an optional DNS subdomain prefix and '/', then a name of at most 63 "
    "letters, digits, '-', '_' and '.', starting and ending with a letter or digit, "
    "like 'team' or 'example.com/team'"
)
_LABEL_VALUE_EXPECTED = (
    "a label value: a string of at most 63 letters, digits, '-', '_' and '.', "
    "starting and ending with a letter or digit, or ''"
)
ENV_NAME_EXPECTED = (
    "an environment variable name like 'HF_TOKEN': letters, digits and '_', "
    "not starting with a digit"
)


def is_dns_label(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and len(value) <= 63 and bool(_DNS_LABEL_RE.fullmatch(value))


def is_dns_subdomain(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and len(value) <= 253 and bool(_DNS_SUBDOMAIN_RE.fullmatch(value))


def is_env_name(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and bool(_ENV_NAME_RE.fullmatch(value))


def check_dns_label(value: object, arg: str) -> str:
    """``value`` if it is an RFC 1123 label (a namespace, a Service or Volume name)."""
    if not is_dns_label(value):
        _fail(arg, value, _DNS_LABEL_EXPECTED)
    return value


def check_dns_subdomain(value: object, arg: str) -> str:
    """``value`` if it is an RFC 1123 subdomain (a Secret, PVC or ServiceAccount name)."""
    if not is_dns_subdomain(value):
        _fail(arg, value, _DNS_SUBDOMAIN_EXPECTED)
    return value


def check_env_name(value: object, arg: str) -> str:
    """``value`` if it is a portable environment variable name."""
    if not is_env_name(value):
        _fail(arg, value, ENV_NAME_EXPECTED)
    return value


def _is_label_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    prefix, slash, name = key.rpartition("/")
    if slash and not is_dns_subdomain(prefix):
        return False
    return len(name) <= 63 and bool(_LABEL_NAME_RE.fullmatch(name))


def _is_label_value(value: object) -> bool:
    return isinstance(value, str) and (
        value == "" or (len(value) <= 63 and bool(_LABEL_NAME_RE.fullmatch(value)))
    )


def _check_mapping(mapping: object, arg: str, example: str) -> Mapping[Any, Any]:
    if not isinstance(mapping, Mapping):
        _fail(arg, mapping, f"a dict like {example}")
    return mapping


def check_label_map(mapping: object, arg: str) -> dict[str, str]:
    """A copy of ``mapping`` if it holds valid Kubernetes label keys and values."""
    items = _check_mapping(mapping, arg, "{'team': 'ml-research'}")
    result: dict[str, str] = {}
    for key, value in items.items():
        if not _is_label_key(key):
            raise SpecError(f"{arg} key {short_repr(key)}: expected {_LABEL_KEY_EXPECTED}")
        if not _is_label_value(value):
            _fail(f"{arg}[{key!r}]", value, _LABEL_VALUE_EXPECTED)
        result[key] = value
    return result


def check_annotation_map(mapping: object, arg: str) -> dict[str, str]:
    """A copy of ``mapping`` if it holds valid annotation keys (as labels) and string values."""
    items = _check_mapping(mapping, arg, "{'prometheus.io/scrape': 'true'}")
    result: dict[str, str] = {}
    for key, value in items.items():
        if not _is_label_key(key):
            raise SpecError(
                f"{arg} key {short_repr(key)}: expected "
                + _LABEL_KEY_EXPECTED.replace("a label key", "an annotation key")
            )
        if not isinstance(value, str):
            _fail(f"{arg}[{key!r}]", value, "a string (annotation values are strings: quote it)")
        result[key] = value
    return result


def env_value(value: object, arg: str) -> str:
    """An environment value as a string: strings as given, ints, floats and bools via ``str()``."""
    if isinstance(value, (int, float)):  # bool is an int
        return str(value)
    if not isinstance(value, str):
        _fail(arg, value, "a string, or an int, float or bool (converted with str())")
    if "\x00" in value:
        _fail(arg, value, "a string without NUL characters")
    return value


def check_env_map(mapping: object, arg: str) -> dict[str, str]:
    """A copy of ``mapping`` with valid variable names and values converted to strings."""
    items = _check_mapping(mapping, arg, "{'MODE': 'dev'}")
    result: dict[str, str] = {}
    for key, value in items.items():
        if not is_env_name(key):
            raise SpecError(f"{arg} key {short_repr(key)}: expected {ENV_NAME_EXPECTED}")
        result[key] = env_value(value, f"{arg}[{key!r}]")
    return result


__all__ = [
    "ENV_NAME_EXPECTED",
    "FrozenMap",
    "check_annotation_map",
    "check_dns_label",
    "check_dns_subdomain",
    "check_env_map",
    "check_env_name",
    "check_label_map",
    "cpu_quantity",
    "env_value",
    "is_dns_label",
    "is_dns_subdomain",
    "is_env_name",
    "memory_quantity",
    "parse_cpu",
    "parse_memory",
    "short_repr",
    "spec_error",
]
