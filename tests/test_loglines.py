"""The pod log line format: writing (CallLog, the stream router), parsing, filtering, merging."""

from __future__ import annotations

import io
import time
from datetime import datetime, timezone

import pytest

from hotpod import loglines
from hotpod.loglines import LogFilter, parse, parse_since, timestamp
from hotpod.runtime import logs

T0 = datetime(2026, 11, 27, 9, 0, 0, 123000, tzinfo=timezone.utc).timestamp()


def test_timestamp_is_fixed_width_utc_and_round_trips() -> None:
    ts = timestamp(T0)
    assert ts == "2026-11-27T09:00:00.123Z"
    assert loglines.to_epoch(ts) == pytest.approx(T0, abs=1e-6)
    assert len(timestamp()) == len(ts)


def test_tagged_lines_parse() -> None:
    line = parse("svc-0", "2026-11-27T09:00:00.123Z r=1a2b3c4d rank=0 pod=svc-0 | epoch 1 | ok")
    assert line.tagged and line.ts == "2026-11-27T09:00:00.123Z"
    assert (line.request, line.rank, line.text) == ("1a2b3c4d", 0, "epoch 1 | ok")
    assert line.display() == line.raw
    other = parse("svc-1", "2026-11-27T09:00:00.123Z rank=1 pod=svc-1 | hotpod: serving")
    assert other.tagged and other.request is None and other.rank == 1


def test_untagged_lines_keep_the_time_before_them_and_show_their_pod() -> None:
    line = parse("svc-0", "raw output of a subprocess", "2026-11-27T09:00:00.123Z")
    assert not line.tagged and line.ts == "2026-11-27T09:00:00.123Z"
    assert line.display() == "pod=svc-0 | raw output of a subprocess"


def test_format_line_and_tag() -> None:
    text = loglines.format_line("hello", "svc-2", 2)
    assert text.endswith(" rank=2 pod=svc-2 | hello\n")
    assert parse("svc-2", text.rstrip("\n")).text == "hello"
    assert loglines.tag(request="0123456789abcdef") == " r=01234567 | "


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("1.5m", 90)],
)
def test_since_durations(value: str, seconds: float) -> None:
    assert parse_since(value, now=1000.0) == 1000.0 - seconds


def test_since_iso_times() -> None:
    assert parse_since("2026-11-27T09:00:00.123Z") == pytest.approx(T0)
    assert parse_since("2026-11-27T10:00:00.123+01:00") == pytest.approx(T0)
    naive = datetime(2026, 11, 27, 9, 0).timestamp()  # local time
    assert parse_since("2026-11-27T09:00") == pytest.approx(naive)
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("yesterday")


def test_filter_by_time_and_request() -> None:
    old = parse("p", f"{timestamp(T0)} r=aaaa1111 rank=0 pod=p | old")
    new = parse("p", f"{timestamp(T0 + 60)} r=bbbb2222 rank=0 pod=p | new")
    assert [line.text for line in (old, new) if LogFilter(since=T0 + 30).keep(line)] == ["new"]
    by_full_id = LogFilter(request="bbbb2222" + "f" * 24)
    assert [by_full_id.keep(line) for line in (old, new)] == [False, True]
    assert LogFilter(request="aaaa").keep(old)
    assert not LogFilter(request="aaaa").keep(parse("p", "untagged"))


def test_read_tails_after_filtering_and_merge_orders_pods_by_time() -> None:
    a = [f"{timestamp(T0 + i * 2)} r=aaaa1111 rank=0 pod=a | a{i}" for i in range(5)]
    b = [f"{timestamp(T0 + i * 2 + 1)} rank=1 pod=b | b{i}" for i in range(5)]
    lines_a = loglines.read("a", a, LogFilter(request="aaaa1111"), tail=2)
    assert [line.text for line in lines_a] == ["a3", "a4"]
    merged = loglines.merge([loglines.read("a", a), loglines.read("b", b)])
    assert [line.text for line in merged][:4] == ["a0", "b0", "a1", "b1"]


def test_call_log_lines_carry_time_request_rank_and_pod() -> None:
    out = io.StringIO()
    log = logs.CallLog("1a2b3c4d5e6f", out, pod="svc-0", rank=3)
    log.write("stdout", "first\nsecond")
    log.flush()
    lines = [parse("svc-0", raw) for raw in out.getvalue().splitlines()]
    assert [(line.request, line.rank, line.text) for line in lines] == [
        ("1a2b3c4d", 3, "first"),
        ("1a2b3c4d", 3, "second"),
    ]
    assert all(line.tagged and abs(loglines.to_epoch(line.ts) - time.time()) < 60 for line in lines)


def test_output_outside_calls_is_stamped_line_by_line(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    router = logs.StreamRouter("stdout", out)  # type: ignore[arg-type]
    monkeypatch.setattr(logs.StreamRouter, "_at_line_start", True)
    monkeypatch.setattr(logs.StreamRouter, "_tag", loglines.tag("svc-1", 1))
    router.write("part one, ")
    router.write("part two\nnext line\n")
    router.write("")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert [parse("svc-1", raw).text for raw in lines] == ["part one, part two", "next line"]
    assert all(" rank=1 pod=svc-1 | " in raw for raw in lines)
