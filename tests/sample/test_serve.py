"""Serving the site on 127.0.0.1 for the crawler, tests and people."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from tasks.sample.serve import SiteMissingError, serve_forever, serve_site


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def test_serve_site_serves_pages_images_and_404s(small_sample):
    out, params, _ = small_sample
    with serve_site(out / "site") as base:
        assert base.startswith("http://127.0.0.1:") and base.endswith("/")
        status, body = _get(base + "index.html")
        assert status == 200 and body == (out / "site" / "index.html").read_bytes()
        status, body = _get(base + "robots.txt")
        assert status == 200 and f"/{params.disallowed_section}/".encode() in body
        assert _get(base + "static/logo.png")[0] == 200
        assert _get(base + "gallery/no-such-page.html")[0] == 404


def test_missing_site_tells_to_run_the_stage(tmp_path, capsys):
    with (
        pytest.raises(SiteMissingError, match="clipmill run sample"),
        serve_site(tmp_path / "nothing"),
    ):
        pass
    with pytest.raises(SystemExit, match="clipmill run sample"):
        serve_forever(str(tmp_path / "nothing"), 0)
