"""The local controller's registry of services and pods, kept in SQLite."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS services (
    name TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    replicas INTEGER NOT NULL,
    template TEXT NOT NULL,
    template_hash TEXT NOT NULL,
    labels TEXT NOT NULL,
    meta TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pods (
    service TEXT NOT NULL,
    rank INTEGER NOT NULL,
    name TEXT NOT NULL,
    port INTEGER NOT NULL,
    pid INTEGER,
    started_at REAL,
    restarts INTEGER NOT NULL DEFAULT 0,
    last_exit INTEGER,
    PRIMARY KEY (service, rank)
);
"""


class Registry:
    """Durable state of the controller; the in-memory view lives in the controller."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        path.chmod(0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def services(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT name, token, replicas, template, template_hash, labels, meta, created_at "
            "FROM services ORDER BY name"
        ).fetchall()
        return [
            {
                "name": r[0],
                "token": r[1],
                "replicas": r[2],
                "template": json.loads(r[3]),
                "template_hash": r[4],
                "labels": json.loads(r[5]),
                "meta": json.loads(r[6]),
                "created_at": r[7],
            }
            for r in rows
        ]

    def pods(self, service: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT rank, name, port, pid, started_at, restarts, last_exit FROM pods "
            "WHERE service = ? ORDER BY rank",
            (service,),
        ).fetchall()
        keys = ("rank", "name", "port", "pid", "started_at", "restarts", "last_exit")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def save_service(self, s: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO services VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                s["name"],
                s["token"],
                s["replicas"],
                json.dumps(s["template"]),
                s["template_hash"],
                json.dumps(s["labels"]),
                json.dumps(s["meta"]),
                s["created_at"],
            ),
        )

    def save_pod(self, service: str, p: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO pods VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                service,
                p["rank"],
                p["name"],
                p["port"],
                p.get("pid"),
                p.get("started_at"),
                p.get("restarts", 0),
                p.get("last_exit"),
            ),
        )

    def delete_pod(self, service: str, rank: int) -> None:
        self._db.execute("DELETE FROM pods WHERE service = ? AND rank = ?", (service, rank))

    def delete_service(self, name: str) -> None:
        self._db.execute("DELETE FROM pods WHERE service = ?", (name,))
        self._db.execute("DELETE FROM services WHERE name = ?", (name,))
