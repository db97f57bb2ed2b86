"""A static web server for crawl benchmarks: nginx (Debian's package, unpacked without root).

Why not the project's Python sample server: it spends ~0.7 ms of CPU per request on the same
two cores as the crawlers under test, which compresses every ratio toward 1 and measures
Python's http.server more than the downloaders. Real sites are served by C servers; nginx with
one worker process and sendfile costs a small fraction of that. Both tools get the same server.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE = Path.home() / ".cache" / "clipmill"
TYPES = {
    "image/png": "png",
    "image/jpeg": "jpg jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
    "image/svg+xml": "svg",
    "image/bmp": "bmp",
    "image/tiff": "tif tiff",
    "text/html": "html htm",
    "text/plain": "txt",
}


def nginx_binary(cache: Path = CACHE) -> Path:
    """nginx on PATH, else Debian's nginx package fetched with `apt-get download` and unpacked."""
    on_path = shutil.which("nginx")
    if on_path:
        return Path(on_path)
    from tasks.sample.debian import debs_dir, download, extract, extracted_dir, find_deb

    deb = find_deb(debs_dir(cache), "nginx") or download("nginx", debs_dir(cache))
    root = extract(deb, extracted_dir(cache) / "nginx")
    exe = root / "usr" / "sbin" / "nginx"
    if not exe.is_file():
        raise FileNotFoundError(f"{deb} unpacked to {root} but holds no usr/sbin/nginx")
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(site: Path, work: Path, port: int) -> str:
    types = " ".join(f"{t} {ext};" for t, ext in TYPES.items())
    temps = " ".join(
        f"{k}_temp_path {work / 'tmp'};"
        for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""daemon off;
master_process off;
worker_processes 1;
error_log {work / "error.log"} warn;
pid {work / "nginx.pid"};
events {{ worker_connections 4096; }}
http {{
  types {{ {types} }}
  default_type application/octet-stream;
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  {temps}
  server {{ listen 127.0.0.1:{port}; root {site}; }}
}}
"""


@contextmanager
def nginx_site(site: Path) -> Iterator[str]:
    """Serve `site` on 127.0.0.1 with nginx; yields `http://127.0.0.1:PORT/`."""
    exe = nginx_binary()
    with tempfile.TemporaryDirectory(prefix="clipmill-nginx-") as tmp:
        work = Path(tmp)
        (work / "tmp").mkdir()
        port = _free_port()
        conf = work / "nginx.conf"
        conf.write_text(_config(site.resolve(), work, port))
        proc = subprocess.Popen(
            [str(exe), "-p", str(work), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"nginx exited: {proc.stderr.read().decode()[-500:]}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"nginx did not listen on 127.0.0.1:{port}") from None
                    time.sleep(0.05)
            yield f"http://127.0.0.1:{port}/"
        finally:
            proc.terminate()
            proc.wait(timeout=10)
