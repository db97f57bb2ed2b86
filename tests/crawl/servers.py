"""A real misbehaving HTTP server on 127.0.0.1 (aiohttp in a thread) and a connection-counting canary."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

from . import images


class ThreadServer:
    """Run an aiohttp app on 127.0.0.1:0 in a background thread; record every request path."""

    def __init__(self, app_factory: Callable[[ThreadServer], web.Application]) -> None:
        self.hits: Counter[str] = Counter()
        # (monotonic time, path, Authorization header) of every request, in arrival order
        self.log: list[tuple[float, str, str]] = []
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._app_factory = app_factory
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            self.hits[request.path] += 1
            self.log.append(
                (time.monotonic(), request.path, request.headers.get("Authorization", ""))
            )
            return await handler(request)

        app = self._app_factory(self)
        app.middlewares.append(count)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}/"
        self._ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Canary:
    """A bare TCP listener that only counts accepted connections (to prove none were made)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        import socket

        self.sock = socket.socket()
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:

        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()


def bad_app(server: ThreadServer) -> web.Application:
    """Every kind of bad (and a few good) responses the issue lists."""
    jpg = images.jpeg()
    static: dict[str, tuple[bytes, dict[str, str]]] = {
        "/ok.jpg": (jpg, {"Content-Type": "image/jpeg"}),
        "/alpha.png": (images.png_rgba(), {"Content-Type": "image/png"}),
        "/cmyk.jpg": (images.cmyk_jpeg(), {"Content-Type": "image/jpeg"}),
        "/palette.png": (images.palette_png(), {"Content-Type": "image/png"}),
        "/sixteen.png": (images.png16(), {"Content-Type": "image/png"}),
        "/anim.gif": (images.animated_gif(), {"Content-Type": "image/gif"}),
        "/exif.jpg": (images.exif_rotated_jpeg(), {"Content-Type": "image/jpeg"}),
        "/nocontenttype.jpg": (jpg, {}),
        "/big.png": (images.big_png(), {"Content-Type": "image/png"}),
        "/bomb.png": (images.bomb_png(), {"Content-Type": "image/png"}),
        "/empty.jpg": (b"", {"Content-Type": "image/jpeg"}),
        # a JPEG that is also a ZIP holding a script (polyglot): decodes, the payload never kept
        "/polyglot.jpg": (jpg + images.POLYGLOT_PAYLOAD, {"Content-Type": "image/jpeg"}),
        "/png-named.jpg": (images.png_rgba(), {"Content-Type": "image/jpeg"}),  # wrong extension
        "/truncated.jpg": (jpg[: len(jpg) // 3], {"Content-Type": "image/jpeg"}),
        "/html-as-image.jpg": (
            b"<html><body>not an image</body></html>",
            {"Content-Type": "image/jpeg"},
        ),
        "/wrong-type.jpg": (jpg, {"Content-Type": "text/html; charset=utf-8"}),
        "/noai.jpg": (jpg, {"Content-Type": "image/jpeg", "X-Robots-Tag": "noai"}),
        "/noimageai.jpg": (
            jpg,
            {"Content-Type": "image/jpeg", "X-Robots-Tag": "otherbot: none, noimageai"},
        ),
        "/otherbot-noai.jpg": (
            jpg,
            {"Content-Type": "image/jpeg", "X-Robots-Tag": "otherbot: noai"},
        ),
        "/private/secret.jpg": (jpg, {"Content-Type": "image/jpeg"}),
        "/robots.txt": (b"User-agent: *\nDisallow: /private/\n", {"Content-Type": "text/plain"}),
    }
    state: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        if path in static:
            body, headers = static[path]
            return web.Response(body=body, headers=headers)
        if path.startswith("/delay/"):  # /delay/<ms>/<name>.jpg: a valid image after a delay
            ms = int(path.split("/")[2])
            await asyncio.sleep(ms / 1000)
            return web.Response(
                body=images.jpeg(64, 48, (len(path) % 255, 90, 20)), content_type="image/jpeg"
            )
        state[request.path_qs] += 1  # attempts per URL, so "?again" starts a fresh sequence
        handler = dynamic.get(path)
        if handler is None:
            return web.Response(status=404, text="not found")
        return await handler(request, state[request.path_qs])

    async def slow(request: web.Request, n: int) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.Response(body=jpg, content_type="image/jpeg")

    async def slow_body(request: web.Request, n: int) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await resp.prepare(request)
        await resp.write(jpg[:100])
        await asyncio.sleep(5)
        with contextlib.suppress(ConnectionError):  # the client gave up long ago
            await resp.write(jpg[100:])
        return resp

    async def huge(request: web.Request, n: int) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(jpg)
        for _ in range(200):
            await resp.write(b"\x00" * 65536)
        return resp

    async def huge_declared(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(body=jpg + b"\x00" * 3_000_000, content_type="image/jpeg")

    async def always(status: int, request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=status, text="nope")

    async def flaky_500(request: web.Request, n: int) -> web.StreamResponse:
        return (
            web.Response(status=503)
            if n == 1
            else web.Response(body=jpg, content_type="image/jpeg")
        )

    async def rate_limited(request: web.Request, n: int) -> web.StreamResponse:
        if n == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(body=jpg, content_type="image/jpeg")

    async def rate_limited_long(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=429, headers={"Retry-After": "3600"})

    def redirect(to: str) -> Callable[..., Any]:
        async def h(request: web.Request, n: int) -> web.StreamResponse:
            target = to.replace("{base}", server.base).replace("{host}", f"127.0.0.1:{server.port}")
            return web.Response(status=302, headers={"Location": target})

        return h

    async def to_query(request: web.Request, n: int) -> web.StreamResponse:
        """/redirect?to=URL: a redirect wherever the test says (another port, a name...)."""
        return web.Response(status=302, headers={"Location": request.query["to"]})

    async def reset(request: web.Request, n: int) -> web.StreamResponse:
        request.transport.abort()
        await asyncio.sleep(0.1)
        return web.Response(status=500)

    dynamic: dict[str, Callable[..., Any]] = {
        "/slow.jpg": slow,
        "/slow-body.jpg": slow_body,
        "/huge.jpg": huge,
        "/huge-declared.jpg": huge_declared,
        "/500.jpg": lambda r, n: always(500, r, n),
        "/403.jpg": lambda r, n: always(403, r, n),
        "/flaky.jpg": flaky_500,
        "/429.jpg": rate_limited,
        "/429-long.jpg": rate_limited_long,
        "/loop-a.jpg": redirect("/loop-b.jpg"),
        "/loop-b.jpg": redirect("/loop-a.jpg"),
        "/to-ok.jpg": redirect("/ok.jpg"),
        "/to-private.jpg": redirect("http://10.0.0.1/x.jpg"),
        "/to-metadata.jpg": redirect("http://169.254.169.254/latest/meta-data/"),
        "/to-internal-name.jpg": redirect("http://internal.test/x.jpg"),
        "/to-file.jpg": redirect("file:///etc/passwd"),
        "/to-creds.jpg": redirect("http://user:secret@{host}/ok.jpg"),
        "/redirect": to_query,
        "/reset.jpg": reset,
    }
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    return app
