"""The FastAPI app that examples/fastapi_app.py deploys (`python -m uvicorn fastapi_service:app`).

An ordinary FastAPI app; nothing in it knows about hotpod. It listens on the port uvicorn is
given (`--port $HOTPOD_APP_PORT` on the pods). To try it on its own:

    cd examples && python -m uvicorn fastapi_service:app --port 8000
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI(title="hotpod example")
print(f"fastapi_service starting on port {os.environ.get('HOTPOD_APP_PORT')}", flush=True)

ITEMS: dict[int, dict] = {}


class Item(BaseModel):
    name: str
    qty: int = 1


@app.get("/items/{item_id}")
def read_item(item_id: int) -> dict:
    print(f"fastapi_service: read item {item_id}", flush=True)
    return {"item_id": item_id, "item": ITEMS.get(item_id)}


@app.post("/items/{item_id}")
def create_item(item_id: int, item: Item) -> dict:
    ITEMS[item_id] = item.model_dump()
    print(f"fastapi_service: created item {item_id} ({item.name} x{item.qty})", flush=True)
    return {"item_id": item_id, "created": item.name, "qty": item.qty, "pid": os.getpid()}
