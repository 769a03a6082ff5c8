"""Ports chosen for later binding stay out of the kernel's ephemeral range."""

from __future__ import annotations

import socket

from hotpod import _ports


def test_free_ports_are_below_the_ephemeral_range_free_and_not_in_used() -> None:
    low, high = _ports.ephemeral_range()
    assert 1024 < low <= high <= 65535
    used = {_ports.free_port() for _ in range(20)}
    for _ in range(50):
        port = _ports.free_port(used)
        assert _ports.LOW <= port < low and port not in used
        with socket.socket() as s:
            s.bind(("", port))  # nothing holds it


def test_a_port_in_use_is_never_handed_out(monkeypatch) -> None:
    with socket.socket() as held:
        held.bind(("", 0))
        taken = held.getsockname()[1]
        held.listen()
        monkeypatch.setattr(_ports.random, "choice", lambda _choices: taken)
        port = _ports.free_port()  # every pick is taken: the kernel's choice instead
        assert port != taken


def test_without_a_range_file_the_usual_range_is_assumed(monkeypatch) -> None:
    monkeypatch.setattr(_ports, "_RANGE_FILE", "/nonexistent/ip_local_port_range")
    assert _ports.ephemeral_range() == (32768, 60999)


def test_the_kernels_choice_is_not_handed_out_when_used(monkeypatch) -> None:
    # a machine without room outside its ephemeral range: the kernel picks, `used` still holds
    monkeypatch.setattr(_ports, "ephemeral_range", lambda: (_ports.LOW + 10, 65535))
    picks = iter([40001, 40001, 40002])

    class Socket:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def bind(self, addr):
            self.port = next(picks)

        def getsockname(self):
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(_ports.socket, "socket", Socket)
    assert _ports.free_port({40001}) == 40002
