"""The twin's package sources are served at one URL per fill, the same in every twin (uv keys its cache by it),
cacheable for good, and a new fill gets a new URL (a refilled index is never read from a stale cache)."""

from __future__ import annotations

import http.client
import json
import random
from pathlib import Path

import pytest

from r1lab.cloud.twin import sources


def _fill(d: Path, when: float) -> Path:
    (d / "simple" / "demo").mkdir(parents=True)
    (d / "simple" / "demo" / "index.html").write_text(
        "<a href='../../wheels/demo-1.0-py3-none-any.whl'>x</a>"
    )
    (d / "fill.json").write_text(json.dumps({"key": sources.fill_key(), "filled_at": when}))
    return d


def _loopback() -> str:
    """An address of its own on the loopback net, so tests running side by side do not share the port."""
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"


def _get(s: sources.Sources, path: str) -> tuple[int, str | None, str | None]:
    c = http.client.HTTPConnection(s.host, s.port, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    return r.status, r.getheader("Cache-Control"), r.getheader("Location")


def test_the_index_url_is_the_same_in_every_twin_and_names_the_fill(tmp_path: Path) -> None:
    d = _fill(tmp_path / "a", 1.0)
    a = sources.Sources(d, _loopback()).start()
    b = sources.Sources(d, _loopback()).start()  # another twin: its own bridge address, the same port
    try:
        if a.port != sources.PORT:
            pytest.skip(
                f"port {sources.PORT} is taken on this machine (another program listens on every address)"
            )
        assert b.port == sources.PORT
        assert a.pod_config()["pypi"] == b.pod_config()["pypi"]
        url = a.pod_config()["pypi"]
        assert url == f"http://{sources.HOST_NAME}:{sources.PORT}/{sources.fill_tag(d)}/simple/"
        assert (
            a.pod_config()["apt"] == f"deb [trusted=yes] http://{sources.HOST_NAME}:{a.port}/{a.tag}/apt ./"
        )
        status, cache, _ = _get(a, f"/{a.tag}/simple/demo/")
        assert status == 200 and cache is not None and "max-age" in cache
        status, _, location = _get(a, f"/{a.tag}/simple/demo")  # the directory redirect keeps the fill's path
        assert status == 301 and location == f"/{a.tag}/simple/demo/"
        status, cache, _ = _get(a, "/simple/demo/")  # outside the fill: not served, not cacheable
        assert status == 404 and cache is None
    finally:
        a.stop()
        b.stop()
    other = _fill(tmp_path / "b", 2.0)  # a new fill (same key, another time): another URL, so no stale cache
    assert sources.fill_tag(other) != sources.fill_tag(d)


def test_a_busy_port_falls_back_to_a_free_one(tmp_path: Path) -> None:
    d = _fill(tmp_path / "a", 1.0)
    host = _loopback()
    a = sources.Sources(d, host).start()
    try:
        b = sources.Sources(d, host).start()
        try:
            assert b.port != a.port and _get(b, f"/{b.tag}/simple/demo/")[0] == 200
        finally:
            b.stop()
    finally:
        a.stop()


def test_each_server_serves_its_own_fill_only(tmp_path: Path) -> None:
    """Two servers in one process, each with its own fill's tag: neither answers under the other's (the tag is
    the server's, not shared by its handlers' class); a dir holding no fill is served whole, without caching."""
    a_dir, b_dir = _fill(tmp_path / "a", 1.0), _fill(tmp_path / "b", 2.0)
    plain = tmp_path / "plain"
    (plain / "simple" / "demo").mkdir(parents=True)
    (plain / "simple" / "demo" / "index.html").write_text("x")
    a, b, c = (sources.Sources(x, _loopback()).start() for x in (a_dir, b_dir, plain))
    try:
        assert a.tag and b.tag and a.tag != b.tag and c.tag == ""
        assert _get(a, f"/{a.tag}/simple/demo/")[0] == 200 and _get(a, f"/{b.tag}/simple/demo/")[0] == 404
        assert _get(b, f"/{b.tag}/simple/demo/")[0] == 200 and _get(b, f"/{a.tag}/simple/demo/")[0] == 404
        status, cache, _ = _get(c, "/simple/demo/")
        assert status == 200 and cache is None
    finally:
        for s in (a, b, c):
            s.stop()
