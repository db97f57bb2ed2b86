"""Serve a folder of static files on 127.0.0.1 (the sample website): for the crawler, for tests, and for people to look at."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class SiteMissingError(FileNotFoundError):
    """The site folder does not exist yet."""


class _QuietHandler(SimpleHTTPRequestHandler):
    """Static files only; no per-request log lines (a crawl makes thousands).

    HTTP/1.1 keeps connections alive, as every real web server does: with the stdlib's default
    HTTP/1.0 each image costs the crawler and this server a TCP connect/accept and a thread.
    """

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


def _check(site_dir: str | Path) -> Path:
    path = Path(site_dir)
    if not (path / "index.html").is_file():
        raise SiteMissingError(f"no sample site at {path}: run `clipmill run sample` first")
    return path


def make_server(site_dir: str | Path, port: int = 0) -> ThreadingHTTPServer:
    """A threaded static server on 127.0.0.1 (port 0 = a free one)."""
    handler = functools.partial(_QuietHandler, directory=str(_check(site_dir)))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    return server


@contextmanager
def serve_site(site_dir: str | Path, port: int = 0) -> Iterator[str]:
    """Serve in a background thread; yields the base URL `http://127.0.0.1:PORT/`."""
    server = make_server(site_dir, port)
    thread = threading.Thread(target=server.serve_forever, name="sample-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def serve_forever(site_dir: str | Path, port: int = 0) -> None:
    """`clipmill serve-sample`: print the URL, serve until Ctrl-C."""
    try:
        server = make_server(site_dir, port)
    except SiteMissingError as exc:
        raise SystemExit(f"clipmill: error: {exc}") from None
    print(
        f"serving the sample site at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C to stop)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
