from __future__ import annotations

import pytest

from hotpod.endpoint import Endpoint
from hotpod.errors import SpecError


def test_seed_constructor() -> None:
    endpoint = Endpoint(url="my-lb.default.svc:8080")
    assert endpoint.url == "my-lb.default.svc:8080"
    assert endpoint.base_url == "http://my-lb.default.svc:8080"
    assert endpoint.host == "my-lb.default.svc"
    assert endpoint.port == 8080
    assert endpoint.selector is None
    assert repr(endpoint) == "Endpoint(url='my-lb.default.svc:8080')"
    assert repr(Endpoint(selector={"app": "w"})) == "Endpoint(selector={'app': 'w'})"


@pytest.mark.parametrize(
    ("url", "base", "port"),
    [
        ("http://host:9000/api/", "http://host:9000/api", 9000),
        ("https://host.example.com", "https://host.example.com", 443),
        ("10.0.0.1:80", "http://10.0.0.1:80", 80),
        ("[::1]:8080", "http://[::1]:8080", 8080),
        (" svc ", "http://svc", 80),
    ],
)
def test_urls(url: str, base: str, port: int) -> None:
    endpoint = Endpoint(url)
    assert endpoint.base_url == base
    assert endpoint.port == port


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://host",
        "http://",
        "host:notaport",
        "host:70000",
        "host:0",
        "a b:80",
        "http://user@host",
        "host/path?q=1",
        "host#frag",
        "-bad-:80",
        3,
    ],
)
def test_bad_urls(url: object) -> None:
    with pytest.raises(SpecError) as info:
        Endpoint(url=url)  # type: ignore[arg-type]
    assert str(info.value).startswith(f"url={url!r}: expected a host and port")


def test_selector() -> None:
    endpoint = Endpoint(selector={"app": "workers"})
    assert endpoint.selector == {"app": "workers"}
    assert endpoint.base_url is None and endpoint.port is None and endpoint.host is None
    assert endpoint.to_dict() == {"url": None, "selector": {"app": "workers"}}
    assert hash(endpoint) == hash(Endpoint(selector={"app": "workers"}))
    with pytest.raises(TypeError):
        endpoint.selector["app"] = "x"  # type: ignore[index]


def test_exactly_one() -> None:
    with pytest.raises(SpecError, match="expected exactly one of url="):
        Endpoint()
    with pytest.raises(SpecError, match="expected exactly one of url="):
        Endpoint(url="svc:80", selector={"app": "x"})


def test_bad_selector() -> None:
    with pytest.raises(SpecError, match=r"selector\['app'\]='my app'"):
        Endpoint(selector={"app": "my app"})
    with pytest.raises(SpecError, match=r"^selector=\{\}: expected a non-empty dict"):
        Endpoint(selector={})
