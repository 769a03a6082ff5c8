"""The wire protocol between a client and the pod runtime (version 1).

Requests are HTTP POSTs whose body is raw bytes: a JSON object ``{"args": [...], "kwargs": {...}}``
or a pickle of ``(args, kwargs)``, told apart by ``Content-Type``. Every endpoint but ``/health``
needs ``Authorization: Bearer <service token>`` and ``X-Hotpod-Protocol``.

Responses to calls are a sequence of frames, each ``type (1 byte) | length (4 bytes, big endian) |
payload``. A call that finishes before printing anything is answered with one body holding the
result frame (``Content-Length`` set); a call that logs streams its frames as they happen.

Frame types::

    L  a log line (UTF-8, no trailing newline), printed by the user's code during the call
    J  the result, JSON
    P  the result, pickle (protocol 5)
    X  the exception, pickled (best effort; precedes E)
    E  the error, JSON: type, message, traceback, pod, rank
    D  a debugger session waits (``breakpoint()``): JSON host, port, pod, rank, location
    S  the call streams: the function is (or returned) a generator; empty payload, sent as soon
       as the generator exists, before its first item
    I  one item of the stream: one byte, ``J`` or ``P``, then the item encoded as in those frames
    Z  the stream ended normally, after its last item (empty payload)

A streamed answer is ``S``, then ``I`` frames as the generator yields them (``L`` and ``D``
frames interleaved, in the order they happened), then ``Z``; an exception raised by the
generator ends it with ``X``/``E`` after the items already sent. The client stops a stream by
closing the connection: the pod then cancels an async generator, and stops pulling a sync one
(closing it after the item being produced).
"""

from __future__ import annotations

import json
import pickle
import struct
from typing import Any

from hotpod.errors import ProtocolError

PROTOCOL_VERSION = "1"

HEADER_PROTOCOL = "x-hotpod-protocol"
HEADER_REQUEST_ID = "x-hotpod-request-id"
HEADER_STREAM_LOGS = "x-hotpod-stream-logs"
HEADER_ACCEPT = "x-hotpod-accept"
HEADER_DEBUG = "x-hotpod-debug"

CT_JSON = "application/json"
CT_PICKLE = "application/vnd.hotpod.pickle"
CT_FRAMES = "application/vnd.hotpod.frames"

SERIALIZATIONS = ("auto", "json", "pickle")

FRAME_LOG = b"L"
FRAME_JSON = b"J"
FRAME_PICKLE = b"P"
FRAME_EXC = b"X"
FRAME_ERROR = b"E"
FRAME_DEBUG = b"D"  # a debugger session waits on the pod: JSON host, port, pod, location
FRAME_STREAM = b"S"  # the answer is a stream of items
FRAME_ITEM = b"I"  # one item: b"J" or b"P", then the encoded item
FRAME_END = b"Z"  # the stream ended normally

_HEAD = struct.Struct(">cI")
#: one encoder for every compact JSON body (json.dumps with separators= builds one per call)
_compact = json.JSONEncoder(separators=(",", ":")).encode
HEAD_SIZE = _HEAD.size

#: a buffer at least this large is never copied to be joined to others: an encoded value that
#: holds one travels as ``Parts``, and a decoded ``P`` frame this large is a view of what was read
LARGE = 1 << 20


class Parts(list[bytes | bytearray | memoryview]):
    """An encoded value kept as the buffers it is made of, in order, for a large pickle: the
    data of the large bytes, bytearrays and arrays in it are the value's own buffers, not
    copies (pickle protocol 5 hands them over as they are). Each is a flat byte buffer, so
    ``len()`` is its size; ``b"".join(parts)`` is the encoded bytes."""

    @property
    def nbytes(self) -> int:
        return sum(len(p) for p in self)


Body = bytes | Parts


class _Collector:
    """A pickle's output as ``Parts``: small writes are joined, large buffers kept as given."""

    def __init__(self, head: bytes = b"") -> None:
        self.parts = Parts()
        self._small: list[bytes | bytearray | memoryview] = [head] if head else []
        self._size = 0

    def write(self, data: Any) -> int:
        view = data.raw() if isinstance(data, pickle.PickleBuffer) else data
        n = len(view)
        if n >= LARGE:
            self._flush()
            self.parts.append(view)
        else:
            self._small.append(view)
        self._size += n
        return n

    def _flush(self) -> None:
        if self._small:
            self.parts.append(b"".join(self._small))
            self._small = []

    def body(self) -> Body:
        """The output: one bytes when it held no large buffer, else ``Parts``."""
        if not self.parts:
            return b"".join(self._small)
        self._flush()
        return self.parts


def frame(kind: bytes, payload: bytes) -> bytes:
    return _HEAD.pack(kind, len(payload)) + payload


def frame_body(kind: bytes, payload: Body) -> Body:
    """A frame around ``payload`` without copying the large buffers of ``Parts``."""
    if isinstance(payload, Parts):
        return Parts([_HEAD.pack(kind, payload.nbytes), *payload])
    return frame(kind, payload)


class FrameDecoder:
    """Incremental decoder: feed it chunks as they arrive, iterate complete frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes | bytearray) -> list[tuple[bytes, bytes]]:
        """Buffer ``chunk``; return the frames now complete, in order."""
        self._buf += chunk
        buf = self._buf
        frames = []
        pos = 0
        while len(buf) - pos >= HEAD_SIZE:
            kind, size = _HEAD.unpack_from(buf, pos)
            end = pos + HEAD_SIZE + size
            if len(buf) < end:
                break
            if size < 65536:
                frames.append((kind, bytes(buf[pos + HEAD_SIZE : end])))
            else:  # one copy, not two (a slice, then bytes of it)
                with memoryview(buf) as view:
                    frames.append((kind, bytes(view[pos + HEAD_SIZE : end])))
            pos = end
        if pos:
            del buf[:pos]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)


# -- values ---------------------------------------------------------------------------------


def is_pure_json(value: Any, _depth: int = 0) -> bool:
    """True when ``value`` survives a JSON round trip unchanged (no tuples, no int keys...)."""
    if _depth > 64:
        return False
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return True
    if t is float:
        return value == value and value not in (float("inf"), float("-inf"))
    if t is list:
        return all(is_pure_json(v, _depth + 1) for v in value)
    if t is dict:
        return all(type(k) is str and is_pure_json(v, _depth + 1) for k, v in value.items())
    return False


def dumps_pickle(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:
        import cloudpickle

        return cloudpickle.dumps(value, protocol=5)


def dump_pickle(value: Any, by_value: bool = False) -> Body:
    """Pickle ``value`` (protocol 5; cloudpickle when plain pickle fails, or with ``by_value``)
    as bytes, or as ``Parts`` when it holds large buffers: those are not copied."""
    if not by_value:
        out = _Collector()
        try:
            pickle.Pickler(out, protocol=5).dump(value)
            return out.body()
        except Exception:
            pass
    import cloudpickle

    out = _Collector()
    cloudpickle.CloudPickler(out, protocol=5).dump(value)
    return out.body()


def encode_request(args: tuple, kwargs: dict, serialization: str) -> tuple[Body, str]:
    """Encode call arguments; returns (body, content type). A pickle that holds large buffers
    is ``Parts`` (the transports send them without joining them)."""
    if serialization != "pickle":
        payload = {"args": list(args), "kwargs": kwargs}
        if is_pure_json(payload):
            return _compact(payload).encode(), CT_JSON
        if serialization == "json":
            raise TypeError(
                "the call's arguments cannot be sent as JSON without changing them (tuples, "
                "non-string keys or other objects); use handle.with_options(serialization='pickle')"
                " or 'auto'"
            )
    return dump_pickle((args, kwargs), by_value=True), CT_PICKLE  # __main__ objects by value


def decode_request(body: bytes | bytearray, content_type: str) -> tuple[list, dict]:
    """Decode call arguments; raises ProtocolError with a clear message when malformed."""
    ct = content_type.split(";")[0].strip().lower()
    if ct == CT_JSON:
        try:
            payload = json.loads(body) if body else {}
        except RecursionError:
            raise ProtocolError("request body is not valid JSON: nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"request body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise ProtocolError('request body must be a JSON object {"args": [...], "kwargs": {}}')
        args, kwargs = payload.get("args", []), payload.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ProtocolError('"args" must be a JSON array and "kwargs" a JSON object')
        return args, kwargs
    if ct == CT_PICKLE:
        try:
            args, kwargs = pickle.loads(body)
        except Exception as exc:
            raise ProtocolError(f"could not unpickle the call's arguments: {exc!r}") from None
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
            raise ProtocolError("pickled body must be a tuple (args, kwargs)")
        return list(args), kwargs
    raise ProtocolError(
        f"unsupported Content-Type {content_type!r}: expected {CT_JSON} or {CT_PICKLE}"
    )


def encode_result(value: Any, accept: str) -> Body:
    """Encode a result as one frame, following the client's accepted serialization: bytes, or
    ``Parts`` for a pickle that holds large buffers."""
    if accept != "pickle" and is_pure_json(value):
        return frame(FRAME_JSON, _compact(value).encode())
    if accept == "json":
        raise TypeError(
            f"the result ({type(value).__name__}) cannot be sent as JSON without changing it; "
            "call with handle.with_options(serialization='pickle') or 'auto'"
        )
    return frame_body(FRAME_PICKLE, dump_pickle(value))


def encode_item(value: Any, accept: str) -> bytes:
    """One item of a stream as an I frame, following the client's accepted serialization."""
    if accept != "pickle" and is_pure_json(value):
        return frame(FRAME_ITEM, FRAME_JSON + _compact(value).encode())
    if accept == "json":
        raise TypeError(
            f"an item ({type(value).__name__}) cannot be sent as JSON without changing it; "
            "call with handle.with_options(serialization='pickle') or 'auto'"
        )
    return frame(FRAME_ITEM, FRAME_PICKLE + dumps_pickle(value))


def decode_item(payload: bytes) -> Any:
    """The value of an I frame's payload."""
    kind = payload[:1]
    if kind not in (FRAME_JSON, FRAME_PICKLE):
        raise ProtocolError(f"stream item of unknown encoding {kind!r}")
    return decode_result(kind, payload[1:])


def decode_result(kind: bytes, payload: bytes | memoryview) -> Any:
    if kind == FRAME_JSON:
        return json.loads(payload if isinstance(payload, bytes) else bytes(payload))
    return pickle.loads(payload)


def single_frame(data: bytes | bytearray) -> tuple[bytes, memoryview] | None:
    """``(kind, payload)`` when ``data`` is exactly one frame, the payload a view of ``data``
    (no copy: for a large answer read whole), else None."""
    if len(data) < HEAD_SIZE:
        return None
    kind, size = _HEAD.unpack_from(data, 0)
    if HEAD_SIZE + size != len(data):
        return None
    return kind, memoryview(data)[HEAD_SIZE:]


def coalesce(items: list[Body]) -> list[bytes | bytearray | memoryview]:
    """The buffers to write for ``items`` in order: small ones joined, large ones as they are."""
    out: list[bytes | bytearray | memoryview] = []
    small: list[bytes | bytearray | memoryview] = []
    for item in items:
        for part in item if isinstance(item, Parts) else (item,):
            if len(part) >= LARGE:
                if small:
                    out.append(b"".join(small))
                    small = []
                out.append(part)
            else:
                small.append(part)
    if small:
        out.append(b"".join(small) if len(small) > 1 else small[0])
    return out


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not turn the user's error into a server error
        return f"<exception str() failed: {type(exc).__name__}>"


def encode_error(exc: BaseException, tb: str, pod: str, rank: int) -> bytes:
    """The X (best effort) and E frames describing an exception."""
    t = type(exc)
    info = {
        "type": f"{t.__module__}.{t.__qualname__}",
        "module": t.__module__,
        "qualname": t.__qualname__,
        "message": _safe_str(exc),
        "traceback": tb,
        "pod": pod,
        "rank": rank,
    }
    out = b""
    try:
        pickled = pickle.dumps(exc, protocol=5)
        pickle.loads(pickled)  # an exception that cannot be rebuilt is sent as E only
        out = frame(FRAME_EXC, pickled)
    except Exception:
        pass
    return out + frame(FRAME_ERROR, json.dumps(info).encode())


def error_body(status: int, message: str, **extra: Any) -> bytes:
    """A JSON body for a 4xx/5xx answer that is not a call result."""
    return json.dumps({"error": message, "status": status, **extra}).encode()


def error_message(data: bytes) -> Any:
    """What a 4xx/5xx answer says: its JSON's ``error`` (:func:`error_body`), else its text."""
    text = data.decode("utf-8", "replace")
    try:
        return json.loads(text).get("error", text)
    except (ValueError, AttributeError):
        return text
