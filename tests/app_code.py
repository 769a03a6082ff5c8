"""A small Starlette app that the kt.app tests deploy (``python -m uvicorn app_code:app``)."""

from __future__ import annotations

import os
import threading

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

GREETING = "hello v1"

print(f"app_code starting on port {os.environ.get('HOTPOD_APP_PORT')}", flush=True)


async def hello(request: Request) -> PlainTextResponse:
    print(f"app_code: serving {request.url.path}", flush=True)
    return PlainTextResponse(GREETING)


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def echo(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse(
        {
            "body": body,
            "query": dict(request.query_params),
            "pid": os.getpid(),
            "has_auth": "authorization" in request.headers,
        }
    )


async def bye(request: Request) -> PlainTextResponse:
    """Answer, then exit with code 3 (an app that crashes after a request)."""
    print("app_code: exiting with code 3", flush=True)
    threading.Timer(0.1, os._exit, (3,)).start()
    return PlainTextResponse("bye")


app = Starlette(
    routes=[
        Route("/hello", hello),
        Route("/health", health),
        Route("/echo", echo, methods=["POST"]),
        Route("/bye", bye),
    ]
)
