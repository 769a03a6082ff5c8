"""A FastAPI app on a pod with `kt.app`, called through its handle; then its logs.

pip install fastapi             # (pip install -e '.[test]' has it)
python examples/fastapi_app.py

`kt.app(command)` runs any process that listens on `$HOTPOD_APP_PORT` on every pod of the
Compute (here uvicorn serving examples/fastapi_service.py) and reaches it through the pod's own
server at `/app/...`, behind the service token. `.to()` returns once `GET /docs` answers.
`handle.get(path)` and `handle.post(path, json=...)` send requests with the token and return
the httpx response; `handle.url` and `handle.headers` are for any other HTTP client. The app's
output goes to the pod log: the script prints its last lines with `hotpod logs`, then tears the
service down.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import hotpod as kt

NAME = "fastapi-service"


def hotpod_cli() -> str:
    """The `hotpod` command of this Python environment (also when it is not on PATH)."""
    beside = Path(sys.executable).parent / "hotpod"
    return str(beside) if beside.exists() else (shutil.which("hotpod") or "hotpod")


def main() -> None:
    if importlib.util.find_spec("fastapi") is None:
        sys.exit("this example needs FastAPI: pip install fastapi")

    app = kt.app(
        "python -m uvicorn fastapi_service:app --port $HOTPOD_APP_PORT",
        name=NAME,
        health="/docs",
    )
    handle = app.to(kt.Compute(cpus="0.5"))
    try:
        print("url:", handle.url)
        created = handle.post("/items/7", json={"name": "gpu", "qty": 2})
        print("POST /items/7 ->", created.status_code, created.json())
        read = handle.get("/items/7")
        print("GET  /items/7 ->", read.status_code, read.json())
        invalid = handle.post("/items/8", json={"qty": "many"})  # FastAPI's own validation
        print("POST /items/8 (no name) ->", invalid.status_code)

        print("last log lines (hotpod logs --tail 6):")
        logs = [hotpod_cli(), "logs", NAME, "--tail", "6"]
        print(subprocess.run(logs, capture_output=True, text=True, check=True).stdout, end="")
    finally:
        handle.teardown()
        print("torn down")


if __name__ == "__main__":
    main()
