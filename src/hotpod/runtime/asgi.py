"""The ASGI plumbing of the pod's server: scope and channel types, ``HTTPError`` (answered as
a 4xx/5xx with a message), and helpers to read headers and bodies and send responses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from hotpod import wire

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return None


async def _start_frames(send: Send) -> None:
    """The head of an answer whose frames follow as they come (no length: chunked)."""
    headers = [
        (b"content-type", wire.CT_FRAMES.encode()),
        (b"x-hotpod-protocol", wire.PROTOCOL_VERSION.encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})


async def _send_bytes(
    send: Send, status: int, body: wire.Body, content_type: str, extra: list | None = None
) -> None:
    """One response with Content-Length; the large buffers of ``Parts`` are written as they
    are, each in its own body message (never joined: that would copy them)."""
    size = body.nbytes if isinstance(body, wire.Parts) else len(body)
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(size).encode()),
        (b"x-hotpod-protocol", wire.PROTOCOL_VERSION.encode()),
    ]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    if not isinstance(body, wire.Parts):
        await send({"type": "http.response.body", "body": body})
        return
    await _send_pieces(send, wire.coalesce([body]), more_body=False)


async def _send_pieces(
    send: Send, pieces: list[bytes | bytearray | memoryview], more_body: bool
) -> None:
    """Body messages for ``pieces``; the last one says whether more will follow."""
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        await send(
            {"type": "http.response.body", "body": piece, "more_body": more_body or not last}
        )


async def _send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    await _send_bytes(send, status, json.dumps(payload).encode(), wire.CT_JSON)


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = _header(scope, b"content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise HTTPError(
                    413, f"request body of {declared} bytes exceeds the pod's limit of {limit}"
                )
        except ValueError:
            raise HTTPError(400, "Content-Length is not a number") from None
    return b"".join([chunk async for chunk in _body_chunks(receive, limit, "request body")])


async def _body_chunks(receive: Receive, limit: int, what: str) -> AsyncIterator[bytes]:
    """Yield a request's body chunks; 413 past ``limit`` bytes, 499 when the client goes."""
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPError(499, "client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"{what} exceeds the pod's limit of {limit} bytes")
        yield chunk
        if not message.get("more_body"):
            return
