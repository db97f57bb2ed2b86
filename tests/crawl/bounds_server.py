"""A loopback server for the crawl's resource bounds: big images, endless and lying bodies, a gzip
bomb and slow-drip responses; it counts what it managed to send, to prove the client stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
from collections import Counter
from functools import cache

from aiohttp import web
from PIL import Image

from .servers import ThreadServer

DRIP_SECONDS = 120  # a drip response lasts this long unless the client hangs up
ENDLESS_BYTES = 1 << 30  # an "endless" body stops here (1 GiB) if nobody hangs up
BOMB_BYTES = 64 << 20  # the gzip bomb inflates to this (64 MiB)


@cache
def noise_jpeg(side: int = 256, seed: int = 0) -> bytes:
    """A JPEG of random pixels (~100 kB at 256 px): it compresses badly, so the crawl's
    output is big enough to fill a small disk and its bodies weigh in memory."""
    import random

    rnd = random.Random(seed)
    img = Image.frombytes("RGB", (side, side), rnd.randbytes(side * side * 3))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


@cache
def gzip_bomb() -> bytes:
    """BOMB_BYTES of zeros, gzip-compressed (about 65 kB on the wire)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9) as gz:
        block = b"\x00" * (1 << 20)
        for _ in range(BOMB_BYTES >> 20):
            gz.write(block)
    return buf.getvalue()


def bounds_app(server: ThreadServer) -> web.Application:
    """Routes: /img/<anything>.jpg (the noise JPEG), /big/<anything>.jpg (512 px), /endless.jpg, /declared-huge.jpg,
    /gzip-bomb.jpg and /drip/<anything>.jpg. `server.sent` counts body bytes written per route."""
    sent: Counter[str] = Counter()
    server.sent = sent  # type: ignore[attr-defined]
    body = noise_jpeg()

    async def img(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="image/jpeg")

    async def big(request: web.Request) -> web.StreamResponse:
        return web.Response(body=noise_jpeg(512), content_type="image/jpeg")

    async def stream(
        request: web.Request, name: str, headers: dict[str, str]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg", **headers})
        if "Content-Length" not in headers:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        block = body[:1024] + b"\x00" * ((1 << 16) - 1024)
        with contextlib.suppress(ConnectionError, RuntimeError):
            while sent[name] < ENDLESS_BYTES:
                await resp.write(block)
                sent[name] += len(block)
        return resp

    async def endless(request: web.Request) -> web.StreamResponse:
        return await stream(request, "endless", {})

    async def declared_huge(request: web.Request) -> web.StreamResponse:
        return await stream(request, "declared", {"Content-Length": str(10 << 30)})

    async def bomb(request: web.Request) -> web.StreamResponse:
        data = gzip_bomb()
        sent["bomb"] += len(data)
        return web.Response(
            body=data, headers={"Content-Type": "image/jpeg", "Content-Encoding": "gzip"}
        )

    async def drip(request: web.Request) -> web.StreamResponse:
        """One byte a second: never idle long enough for a read timeout to fire."""
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError, RuntimeError):
            for i in range(DRIP_SECONDS):
                await resp.write(body[i : i + 1])
                sent["drip"] += 1
                await asyncio.sleep(1.0)
        return resp

    app = web.Application()
    app.router.add_get("/img/{name}", img)
    app.router.add_get("/big/{name}", big)
    app.router.add_get("/endless.jpg", endless)
    app.router.add_get("/declared-huge.jpg", declared_huge)
    app.router.add_get("/gzip-bomb.jpg", bomb)
    app.router.add_get("/drip/{name}", drip)
    return app
