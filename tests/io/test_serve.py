"""Serving a folder (the sample site) on 127.0.0.1 for the crawler, tests and people."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from tasks.io.serve import SiteMissingError, serve_forever, serve_site


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def test_serve_site_serves_pages_images_and_404s(tmp_path):
    site = tmp_path / "site"
    (site / "static").mkdir(parents=True)
    (site / "index.html").write_text("<html><img src='static/logo.png'></html>")
    (site / "robots.txt").write_text("User-agent: *\nDisallow: /private/\n")
    (site / "static" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with serve_site(site) as base:
        assert base.startswith("http://127.0.0.1:") and base.endswith("/")
        status, body = _get(base + "index.html")
        assert status == 200 and body == (site / "index.html").read_bytes()
        status, body = _get(base + "robots.txt")
        assert status == 200 and b"/private/" in body
        assert _get(base + "static/logo.png") == (200, (site / "static" / "logo.png").read_bytes())
        assert _get(base + "gallery/no-such-page.html")[0] == 404


def test_missing_site_tells_to_run_the_stage(tmp_path, capsys):
    with (
        pytest.raises(SiteMissingError, match="clipmill run sample"),
        serve_site(tmp_path / "nothing"),
    ):
        pass
    with pytest.raises(SystemExit, match="clipmill run sample"):
        serve_forever(str(tmp_path / "nothing"), 0)
