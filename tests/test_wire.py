"""The wire protocol: frames, request bodies, results and errors."""

from __future__ import annotations

import json
import math
import pickle
import random
import struct
import threading

import pytest

from hotpod import wire
from hotpod.errors import ProtocolError

# -- frames -----------------------------------------------------------------------------------


def test_frame_layout() -> None:
    data = wire.frame(wire.FRAME_JSON, b"[1,2]")
    assert data[:1] == b"J"
    assert struct.unpack(">I", data[1:5]) == (5,)
    assert data[5:] == b"[1,2]"
    assert wire.HEAD_SIZE == 5
    assert wire.frame(wire.FRAME_LOG, b"") == b"L\x00\x00\x00\x00"


def test_decoder_whole_stream() -> None:
    frames = [
        (wire.FRAME_LOG, b"hello"),
        (wire.FRAME_LOG, b""),
        (wire.FRAME_PICKLE, pickle.dumps({"a": (1, 2)})),
        (wire.FRAME_JSON, b"42"),
    ]
    stream = b"".join(wire.frame(k, p) for k, p in frames)
    dec = wire.FrameDecoder()
    assert list(dec.feed(stream)) == frames
    assert dec.pending == 0


def test_decoder_byte_by_byte() -> None:
    frames = [(wire.FRAME_LOG, "line é".encode()), (wire.FRAME_JSON, b'{"x":1}')]
    stream = b"".join(wire.frame(k, p) for k, p in frames)
    dec = wire.FrameDecoder()
    out = []
    for i in range(len(stream)):
        out.extend(dec.feed(stream[i : i + 1]))
    assert out == frames
    assert dec.pending == 0


@pytest.mark.parametrize("seed", range(20))
def test_decoder_random_chunk_boundaries(seed: int) -> None:
    rng = random.Random(seed)
    kinds = [wire.FRAME_LOG, wire.FRAME_JSON, wire.FRAME_PICKLE, wire.FRAME_EXC, wire.FRAME_ERROR]
    frames = [
        (rng.choice(kinds), rng.randbytes(rng.choice([0, 1, 4, 5, 6, 100, 70_000])))
        for _ in range(rng.randint(1, 30))
    ]
    stream = b"".join(wire.frame(k, p) for k, p in frames)
    dec = wire.FrameDecoder()
    out: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(stream):
        step = rng.choice([1, 2, 3, 4, 5, 6, 7, 64, 4096, 100_000])
        out.extend(dec.feed(stream[pos : pos + step]))
        pos += step
    assert out == frames
    assert dec.pending == 0


def test_decoder_keeps_partial_frame_pending() -> None:
    data = wire.frame(wire.FRAME_JSON, b"12345")
    dec = wire.FrameDecoder()
    assert list(dec.feed(data[:3])) == []  # not even a whole header
    assert dec.pending == 3
    assert list(dec.feed(data[3:7])) == []  # header, part of the payload
    assert dec.pending == 7
    assert list(dec.feed(data[7:] + data[:2])) == [(wire.FRAME_JSON, b"12345")]
    assert dec.pending == 2  # the start of the next frame stays buffered
    assert list(dec.feed(data[2:])) == [(wire.FRAME_JSON, b"12345")]
    assert dec.pending == 0


def test_decoder_empty_feed() -> None:
    dec = wire.FrameDecoder()
    assert list(dec.feed(b"")) == []
    assert dec.pending == 0


# -- is_pure_json -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -(10**30),
        1.5,
        "",
        "ünïcode",
        [],
        {},
        [1, "a", None, [2.5, {"k": [True]}]],
        {"a": {"b": {"c": [1, 2, {"d": None}]}}},
    ],
)
def test_is_pure_json_true(value: object) -> None:
    assert wire.is_pure_json(value)
    assert json.loads(json.dumps(value)) == value


class _Str(str):
    pass


@pytest.mark.parametrize(
    "value",
    [
        (1, 2),
        [1, (2, 3)],
        {1: "a"},
        {"a": {2: "b"}},
        {("t",): 1},
        {_Str("k"): 1},
        float("nan"),
        float("inf"),
        float("-inf"),
        [1, [2, [float("nan")]]],
        {"x": [1, {"y": float("inf")}]},
        b"bytes",
        {1, 2},
        object(),
        _Str("subclass"),
        1 + 2j,
        {"a": [1, 2, (3,)]},
    ],
)
def test_is_pure_json_false(value: object) -> None:
    assert not wire.is_pure_json(value)


def test_is_pure_json_deep_nesting_is_refused() -> None:
    value: list = []
    for _ in range(200):
        value = [value]
    assert not wire.is_pure_json(value)
    shallow: list = []
    for _ in range(30):
        shallow = [shallow]
    assert wire.is_pure_json(shallow)


# -- requests ---------------------------------------------------------------------------------


def test_request_json_roundtrip() -> None:
    body, ct = wire.encode_request((1, "a", [2.5]), {"k": {"x": None}}, "auto")
    assert ct == wire.CT_JSON
    assert json.loads(body) == {"args": [1, "a", [2.5]], "kwargs": {"k": {"x": None}}}
    assert wire.decode_request(body, ct) == ([1, "a", [2.5]], {"k": {"x": None}})
    assert wire.encode_request((1,), {}, "json")[1] == wire.CT_JSON


def test_request_auto_falls_back_to_pickle() -> None:
    body, ct = wire.encode_request(((1, 2),), {"k": {3: "x"}}, "auto")
    assert ct == wire.CT_PICKLE
    args, kwargs = wire.decode_request(body, ct)
    assert args == [(1, 2)]
    assert kwargs == {"k": {3: "x"}}


def test_request_pickle_forced() -> None:
    body, ct = wire.encode_request((1, "a"), {"b": 2}, "pickle")
    assert ct == wire.CT_PICKLE
    assert wire.decode_request(body, ct) == ([1, "a"], {"b": 2})


def test_request_pickle_carries_local_objects() -> None:
    lock_free = {"f": lambda x: x + 1}  # a lambda needs cloudpickle
    body, ct = wire.encode_request((lock_free,), {}, "pickle")
    args, _ = wire.decode_request(body, ct)
    assert args[0]["f"](1) == 2


@pytest.mark.parametrize(
    "args, kwargs",
    [(((1, 2),), {}), ((), {"k": (1,)}), (({1: 2},), {}), ((float("nan"),), {}), ((b"x",), {})],
)
def test_request_json_impossible(args: tuple, kwargs: dict) -> None:
    with pytest.raises(TypeError, match=r"cannot be sent as JSON.*serialization='pickle'"):
        wire.encode_request(args, kwargs, "json")


def test_request_content_type_parameters_and_case() -> None:
    body = b'{"args": [1], "kwargs": {}}'
    assert wire.decode_request(body, "Application/JSON; charset=utf-8") == ([1], {})
    assert wire.decode_request(b"", wire.CT_JSON) == ([], {})
    assert wire.decode_request(b"{}", wire.CT_JSON) == ([], {})


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"str"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b'{"args": {"a": 1}}', '"args" must be a JSON array'),
        (b'{"args": "abc"}', '"args" must be a JSON array'),
        (b'{"kwargs": [1]}', '"kwargs" a JSON object'),
    ],
)
def test_request_json_malformed(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        wire.decode_request(body, wire.CT_JSON)


@pytest.mark.parametrize("closed", [True, False])
def test_request_json_nested_too_deeply(closed: bool) -> None:
    body = b'{"args": ' + b"[" * 100_000 + (b"]" * 100_000 + b"}" if closed else b"")
    with pytest.raises(ProtocolError, match="not valid JSON: nested too deeply"):
        wire.decode_request(body, wire.CT_JSON)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "could not unpickle"),
        (b"garbage", "could not unpickle"),
        (pickle.dumps((1, 2, 3)), "could not unpickle"),
        (pickle.dumps(5), "could not unpickle"),
        (pickle.dumps(([1], [2])), r"must be a tuple \(args, kwargs\)"),
        (pickle.dumps(("ab", {})), r"must be a tuple \(args, kwargs\)"),
        (pickle.dumps({"args": 1, "kwargs": 2}), r"must be a tuple \(args, kwargs\)"),
        (pickle.dumps(((), {}))[:-3], "could not unpickle"),
    ],
)
def test_request_pickle_malformed(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        wire.decode_request(body, wire.CT_PICKLE)


@pytest.mark.parametrize("ct", ["", "text/plain", "application/x-www-form-urlencoded", "json"])
def test_request_unsupported_content_type(ct: str) -> None:
    with pytest.raises(ProtocolError, match="unsupported Content-Type") as info:
        wire.decode_request(b"{}", ct)
    assert wire.CT_JSON in str(info.value)
    assert wire.CT_PICKLE in str(info.value)


def test_protocol_error_is_a_call_error() -> None:
    from hotpod.errors import CallError

    assert issubclass(ProtocolError, CallError)


# -- results ----------------------------------------------------------------------------------


def _one_frame(data: bytes) -> tuple[bytes, bytes]:
    frames = list(wire.FrameDecoder().feed(data))
    assert len(frames) == 1
    return frames[0]


def test_result_auto_json() -> None:
    kind, payload = _one_frame(wire.encode_result({"a": [1, 2]}, "auto"))
    assert kind == wire.FRAME_JSON
    assert wire.decode_result(kind, payload) == {"a": [1, 2]}


def test_result_auto_pickle_when_json_changes_it() -> None:
    for value in [(1, 2), {1: "a"}, float("nan"), {1, 2}]:
        kind, payload = _one_frame(wire.encode_result(value, "auto"))
        assert kind == wire.FRAME_PICKLE
        back = wire.decode_result(kind, payload)
        if isinstance(value, float):
            assert math.isnan(back)
        else:
            assert back == value
            assert type(back) is type(value)


def test_result_json_accept() -> None:
    kind, payload = _one_frame(wire.encode_result([1, "x", None], "json"))
    assert kind == wire.FRAME_JSON
    assert wire.decode_result(kind, payload) == [1, "x", None]


def test_result_pickle_accept_even_for_json_values() -> None:
    kind, payload = _one_frame(wire.encode_result([1, 2], "pickle"))
    assert kind == wire.FRAME_PICKLE
    assert wire.decode_result(kind, payload) == [1, 2]


def test_result_pickle_falls_back_to_cloudpickle() -> None:
    kind, payload = _one_frame(wire.encode_result(lambda: 7, "pickle"))
    assert kind == wire.FRAME_PICKLE
    assert wire.decode_result(kind, payload)() == 7


@pytest.mark.parametrize("value", [(1, 2), {1: 2}, float("inf"), object()])
def test_result_json_impossible(value: object) -> None:
    with pytest.raises(TypeError, match="cannot be sent as JSON") as info:
        wire.encode_result(value, "json")
    assert type(value).__name__ in str(info.value)
    assert "serialization='pickle'" in str(info.value)


def test_result_unpicklable_raises() -> None:
    with pytest.raises(TypeError):
        wire.encode_result(threading.Lock(), "auto")


# -- large values: pickle buffers are not copied -----------------------------------------------


def test_a_pickle_with_large_buffers_is_parts_that_share_them() -> None:
    data = bytearray(b"d" * (2 * wire.LARGE))
    blob = b"b" * wire.LARGE
    value = {"data": data, "blob": blob, "small": b"s" * 100}
    body = wire.dump_pickle(value)
    assert isinstance(body, wire.Parts)
    assert body.nbytes == len(b"".join(body)) == sum(len(p) for p in body)
    assert pickle.loads(b"".join(body)) == value
    # the large buffers are the value's own, not copies
    assert any(p is blob for p in body)
    assert any(isinstance(p, (bytearray, memoryview)) and p == data for p in body)
    assert len(body) == 5  # head, data, the bytes between them, blob, the rest


def test_small_pickles_stay_bytes() -> None:
    assert wire.dump_pickle([1, 2]) == pickle.dumps([1, 2], protocol=5)
    body, ct = wire.encode_request((b"x" * 1000,), {}, "pickle")
    assert type(body) is bytes and ct == wire.CT_PICKLE


def test_dump_pickle_falls_back_to_cloudpickle_with_large_buffers() -> None:
    big = b"z" * wire.LARGE
    body = wire.dump_pickle((lambda: 3, big))
    assert isinstance(body, wire.Parts)
    fn, back = pickle.loads(b"".join(body))
    assert fn() == 3 and back == big


def test_large_request_round_trip() -> None:
    args = (bytearray(b"a" * (3 * wire.LARGE)),)
    body, ct = wire.encode_request(args, {"k": (1,)}, "auto")
    assert isinstance(body, wire.Parts) and ct == wire.CT_PICKLE
    assert wire.decode_request(b"".join(body), ct) == ([args[0]], {"k": (1,)})


def test_large_result_is_one_frame_and_decodes_from_a_view() -> None:
    value = [b"r" * (2 * wire.LARGE)]
    body = wire.encode_result(value, "auto")
    assert isinstance(body, wire.Parts)
    data = bytearray(b"".join(body))
    single = wire.single_frame(data)
    assert single is not None
    kind, view = single
    assert kind == wire.FRAME_PICKLE and isinstance(view, memoryview)
    assert wire.decode_result(kind, view) == value
    assert _one_frame(bytes(data)) == (wire.FRAME_PICKLE, bytes(view))


def test_single_frame_only_for_exactly_one_frame() -> None:
    one = wire.frame(wire.FRAME_JSON, b"[1]")
    assert wire.single_frame(one) == (wire.FRAME_JSON, memoryview(b"[1]"))
    assert wire.single_frame(one + one) is None
    assert wire.single_frame(one[:-1]) is None
    assert wire.single_frame(b"J") is None
    kind, view = wire.single_frame(one)  # type: ignore[misc]
    assert wire.decode_result(kind, view) == [1]  # JSON from a view too


def test_coalesce_joins_small_buffers_and_keeps_large_ones() -> None:
    big = b"B" * wire.LARGE
    out = wire.coalesce([b"a", wire.Parts([b"b", big, b"c"]), b"d"])
    assert out == [b"ab", big, b"cd"]
    assert out[1] is big
    assert wire.coalesce([b"only"]) == [b"only"]
    assert wire.coalesce([]) == []


def test_decoder_large_frame_split_across_chunks() -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB: a frame copied once out of the buffer
    data = wire.frame(wire.FRAME_PICKLE, payload) + wire.frame(wire.FRAME_LOG, b"x")
    dec = wire.FrameDecoder()
    got = []
    for i in range(0, len(data), 10_000):
        got += dec.feed(data[i : i + 10_000])
    assert got == [(wire.FRAME_PICKLE, payload), (wire.FRAME_LOG, b"x")]
    assert dec.pending == 0


# -- errors -----------------------------------------------------------------------------------


class NeedsTwoArgs(Exception):
    """Pickles, but cannot be rebuilt: pickle calls cls(*self.args) with one argument."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(a)
        self.b = b


class HoldsALock(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


def _frames(data: bytes) -> list[tuple[bytes, bytes]]:
    dec = wire.FrameDecoder()
    frames = list(dec.feed(data))
    assert dec.pending == 0
    return frames


def test_error_normal_exception_x_and_e() -> None:
    exc = ValueError("bad value")
    frames = _frames(wire.encode_error(exc, "Traceback...\nValueError: bad value\n", "p-0", 3))
    assert [k for k, _ in frames] == [wire.FRAME_EXC, wire.FRAME_ERROR]
    back = pickle.loads(frames[0][1])
    assert type(back) is ValueError
    assert back.args == ("bad value",)
    info = json.loads(frames[1][1])
    assert info == {
        "type": "builtins.ValueError",
        "module": "builtins",
        "qualname": "ValueError",
        "message": "bad value",
        "traceback": "Traceback...\nValueError: bad value\n",
        "pod": "p-0",
        "rank": 3,
    }


@pytest.mark.parametrize("exc", [NeedsTwoArgs("a", "b"), HoldsALock("locked")])
def test_error_unpicklable_exception_e_only(exc: Exception) -> None:
    frames = _frames(wire.encode_error(exc, "tb", "pod-1", 0))
    assert [k for k, _ in frames] == [wire.FRAME_ERROR]
    info = json.loads(frames[0][1])
    assert info["type"] == f"{__name__}.{type(exc).__qualname__}"
    assert info["module"] == __name__
    assert info["qualname"] == type(exc).__qualname__
    assert info["message"] == str(exc)
    assert info["traceback"] == "tb"
    assert (info["pod"], info["rank"]) == ("pod-1", 0)


def test_error_nested_class_qualname() -> None:
    class Local(Exception):
        pass

    frames = _frames(wire.encode_error(Local("x"), "tb", "p", 0))
    assert [k for k, _ in frames] == [wire.FRAME_ERROR]  # a local class does not pickle
    info = json.loads(frames[-1][1])
    assert info["qualname"].endswith("<locals>.Local")


def test_error_with_broken_str_still_encodes() -> None:
    frames = _frames(wire.encode_error(BadStr(), "tb", "p", 0))
    assert frames[-1][0] == wire.FRAME_ERROR
    info = json.loads(frames[-1][1])
    assert info["qualname"] == "BadStr"
    assert "str() failed" in info["message"]


def test_error_body() -> None:
    body = json.loads(wire.error_body(418, "teapot", pod="p"))
    assert body == {"error": "teapot", "status": 418, "pod": "p"}


def test_error_message_reads_what_error_body_wrote_else_the_text() -> None:
    assert wire.error_message(wire.error_body(503, "not ready", pod="p")) == "not ready"
    assert wire.error_message(b"<html>bad gateway</html>") == "<html>bad gateway</html>"
    assert wire.error_message(b"[1, 2]") == "[1, 2]"  # JSON, but not an error body
