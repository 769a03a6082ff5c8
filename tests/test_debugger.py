"""Remote breakpoints, driven end to end through a pseudo-terminal (pexpect)."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pexpect
import pytest

pytestmark = pytest.mark.slow

TESTS = Path(__file__).parent


def spawn(home: Path, code: str) -> pexpect.spawn:
    env = {**os.environ, "HOTPOD_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return pexpect.spawn(
        sys.executable,
        ["-c", textwrap.dedent(code)],
        cwd=str(TESTS),
        env=env,
        encoding="utf-8",
        timeout=60,
    )


def finish(child: pexpect.spawn) -> None:
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before


def test_breakpoint_attaches_in_the_callers_terminal(hotpod_home):
    child = spawn(
        hotpod_home,
        """
        import hotpod as kt, debug_code as d
        remote = kt.fn(d.compute, name="dbg-tty").to(kt.Compute(cpus="0.5"))
        print("RESULT", remote(21))
        """,
    )
    child.expect(r"\(Pdb\) ")
    child.sendline("p y")
    child.expect("42")
    child.expect(r"\(Pdb\) ")
    child.sendline("c")
    child.expect("RESULT 43")
    finish(child)


def test_one_rank_debugs_the_others_go_on(hotpod_home):
    child = spawn(
        hotpod_home,
        """
        import hotpod as kt, debug_code as d
        remote = kt.fn(d.compute, name="dbg-rank").to(kt.Compute(cpus="0.5", replicas=2))
        print("RESULT", remote.with_options(debug_rank=1)(5))
        """,
    )
    child.expect(r"\(Pdb\) ")
    child.sendline("p rank")
    child.expect(r"\r\n1\r\n")
    child.sendline("c")
    child.expect(r"RESULT \[11, 11\]")
    finish(child)


def test_post_mortem_on_the_failing_frame(hotpod_home):
    child = spawn(
        hotpod_home,
        """
        import hotpod as kt, debug_code as d
        remote = kt.fn(d.explode, name="dbg-pm").to(kt.Compute(cpus="0.5"))
        try:
            remote.with_options(post_mortem=True)(7)
        except ValueError as exc:
            print("RAISED", exc)
        """,
    )
    child.expect(r"\(Pdb\) ")
    child.sendline("p doomed")
    child.expect("21")
    child.sendline("c")
    child.expect("RAISED boom 21")
    finish(child)


def test_without_a_terminal_the_log_names_the_command_that_attaches(hotpod_home, tmp_path):
    import subprocess

    out = tmp_path / "out.txt"
    env = {**os.environ, "HOTPOD_HOME": str(hotpod_home), "PYTHONUNBUFFERED": "1"}
    code = textwrap.dedent(
        """
        import hotpod as kt, debug_code as d
        remote = kt.fn(d.compute, name="dbg-cli").to(kt.Compute(cpus="0.5"))
        print("RESULT", remote(1))
        """
    )
    with open(out, "w") as fh:
        caller = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=TESTS,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        import time

        deadline = time.monotonic() + 60
        while "hotpod debug dbg-cli --pod dbg-cli-0" not in out.read_text():
            assert time.monotonic() < deadline, out.read_text()
            assert caller.poll() is None, out.read_text()
            time.sleep(0.05)
        child = pexpect.spawn(
            sys.executable,
            ["-m", "hotpod.cli", "debug", "dbg-cli", "--pod", "dbg-cli-0"],
            env=env,
            encoding="utf-8",
            timeout=60,
        )
        child.expect(r"\(Pdb\) ")
        child.sendline("p y")
        child.expect(r"\r\n2\r\n")
        child.sendline("c")
        finish(child)
        assert caller.wait(60) == 0
        assert "RESULT 3" in out.read_text()
    finally:
        if caller.poll() is None:
            caller.kill()


def _dap_send(sock, seq: int, command: str, **arguments) -> None:
    import json

    body = json.dumps(
        {"seq": seq, "type": "request", "command": command, "arguments": arguments}
    ).encode()
    sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)


def _dap_read(stream) -> dict:
    import json

    headers = {}
    while line := stream.readline().decode().strip():
        key, value = line.split(":", 1)
        headers[key.strip()] = value.strip()
    return json.loads(stream.read(int(headers["Content-Length"])))


def test_debugpy_lets_an_ide_stop_in_the_users_frame(hotpod_home):
    import re
    import socket
    import threading
    import time

    import debug_code as d
    import hotpod as kt

    remote = kt.fn(d.compute, name="dbg-dap").to(kt.Compute(cpus="0.5"))
    result: list[int] = []
    call = threading.Thread(
        target=lambda: result.append(remote.with_options(debugger="debugpy")(21))
    )
    call.start()
    log = hotpod_home / "logs" / "dbg-dap" / "dbg-dap-0.log"
    deadline = time.monotonic() + 30
    while not (match := re.search(r"debugpy listens on [\d.]+:(\d+)", log.read_text())):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=30) as ide:
        stream = ide.makefile("rb")
        _dap_send(ide, 1, "initialize", adapterID="hotpod-test")
        _dap_send(ide, 2, "attach", justMyCode=False)
        _dap_send(ide, 3, "configurationDone")
        while (msg := _dap_read(stream)).get("event") != "stopped":
            pass
        thread_id = msg["body"]["threadId"]
        _dap_send(ide, 4, "stackTrace", threadId=thread_id)
        while (msg := _dap_read(stream)).get("command") != "stackTrace":
            pass
        assert msg["body"]["stackFrames"][0]["name"] == "compute"  # the user's frame
        _dap_send(ide, 5, "continue", threadId=thread_id)
        _dap_send(ide, 6, "disconnect")
        call.join(30)
    assert result == [43]
