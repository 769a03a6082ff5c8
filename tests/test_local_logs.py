"""Reading kept pod logs on the local backend: files only, no controller or pods."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from hotpod.backends.local.backend import LocalBackend
from hotpod.config import Settings
from hotpod.errors import ServiceNotFoundError
from hotpod.loglines import LogFilter, timestamp

T0 = 1_800_000_000.0


def line(t: float, pod: str, text: str, request: str | None = None) -> str:
    r = f" r={request}" if request else ""
    return f"{timestamp(T0 + t)}{r} rank={pod[-1]} pod={pod} | {text}\n"


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    logs = tmp_path / "home" / "logs" / "svc"
    logs.mkdir(parents=True)
    (logs / "svc-0.log").write_text(
        line(0, "svc-0", "start 0")
        + line(2, "svc-0", "call on 0", "aaaa1111")
        + "untagged output of a subprocess\n"
        + line(4, "svc-0", "later on 0")
    )
    (logs / "svc-1.log").write_text(
        line(1, "svc-1", "start 1") + line(3, "svc-1", "call", "aaaa1111")
    )
    return LocalBackend(Settings(home=tmp_path / "home", backend="local", in_pod=False))


def texts(lines) -> list[str]:
    return [f"{x.pod}:{x.text}" for x in lines]


def test_pods_merge_in_time_order(backend: LocalBackend) -> None:
    assert texts(backend.logs("svc")) == [
        "svc-0:start 0",
        "svc-1:start 1",
        "svc-0:call on 0",
        "svc-0:untagged output of a subprocess",
        "svc-1:call",
        "svc-0:later on 0",
    ]


def test_filters_and_tail(backend: LocalBackend) -> None:
    assert texts(backend.logs("svc", keep=LogFilter(request="aaaa1111"))) == [
        "svc-0:call on 0",
        "svc-1:call",
    ]
    since = LogFilter(since=T0 + 2.5)  # the untagged line has the time of the line before it
    assert texts(backend.logs("svc", keep=since)) == ["svc-1:call", "svc-0:later on 0"]
    assert texts(backend.logs("svc", pod="svc-0", tail=2)) == [
        "svc-0:untagged output of a subprocess",
        "svc-0:later on 0",
    ]


def test_rotated_log_is_read_first(backend: LocalBackend, tmp_path: Path) -> None:
    logs = tmp_path / "home" / "logs" / "svc"
    (logs / "svc-1.log.1").write_text(line(-5, "svc-1", "from the last generation"))
    assert texts(backend.logs("svc", pod="svc-1"))[0] == "svc-1:from the last generation"


def test_missing_logs_are_named(backend: LocalBackend) -> None:
    with pytest.raises(ServiceNotFoundError, match=r"no pod 'svc-7'; its pods: svc-0, svc-1$"):
        list(backend.logs("svc", pod="svc-7"))
    with pytest.raises(ServiceNotFoundError, match="no logs for service 'other'"):
        list(backend.logs("other", pod="other-0"))
    with pytest.raises(ServiceNotFoundError, match="no logs for service 'other'"):
        list(backend.logs("other"))
    assert backend.logged_services() == ["svc"]


def test_follow_sees_new_lines_partial_writes_and_a_purge(
    backend: LocalBackend, tmp_path: Path
) -> None:
    path = tmp_path / "home" / "logs" / "svc" / "svc-1.log"
    seen: list[str] = []
    lines = backend.logs("svc", pod="svc-1", follow=True)

    def read() -> None:
        for x in lines:
            seen.append(x.text)
            if x.text == "after purge":
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def wait_for(text: str) -> None:
        deadline = time.monotonic() + 5
        while text not in seen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert text in seen, seen

    wait_for("call")
    with open(path, "a") as fh:
        fh.write(line(5, "svc-1", "half ")[:-1])  # no newline yet: not a line
        fh.flush()
        time.sleep(0.5)
        assert seen[-1] == "call"
        fh.write(" written\n")
    wait_for("half  written")
    assert backend.purge_logs("svc")  # no controller runs: the logs go
    assert not path.exists()
    path.parent.mkdir(parents=True)
    path.write_text(line(6, "svc-1", "after purge"))
    reader.join(5)
    assert seen[-1] == "after purge"
    assert not backend.purge_logs("never-deployed")
