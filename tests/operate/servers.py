"""Real servers for the operate tests, each on a free loopback port in its own process group.

Every helper returns a `Server` whose `stop()` kills the whole process group (a server's workers
and children included), so a failed test never leaves a process behind. PostgreSQL refuses to run
as root: as root, its commands run as the `postgres` system user (Debian's package creates it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
S3_KEY, S3_SECRET = "clipmill-test", "clipmill-test-secret"


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A started server: its URL, its process (leader of its own group) and its log file."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    extra: dict[str, str] = field(default_factory=dict)
    on_stop: Callable[[], None] | None = None
    stop_signal: int = signal.SIGTERM  # PostgreSQL: SIGINT, its fast shutdown (children too)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self) -> None:
        """Signal the process group, then SIGKILL what is left after 20 s."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, self.stop_signal)
                self.proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.on_stop is not None:
            self.on_stop()


def start(
    name: str,
    cmd: list[str],
    url: str,
    health: str,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 120,
) -> Server:
    """Start `cmd` in a new session and wait until GET `health` answers below 500."""
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env or os.environ),
            cwd=cwd,
            start_new_session=True,
        )
    server = Server(name, url, proc, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(health, timeout=5) as resp:
                if resp.status < 500:
                    return server
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return server
        except OSError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"{name} not healthy at {health} after {timeout_s} s:\n{server.log_tail()}")


def s3_env(endpoint: str) -> dict[str, str]:
    """What boto3, s3fs, DVC and MLflow read to talk to the S3-compatible server."""
    return {
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
    }


def start_s3(log_dir: Path, buckets: tuple[str, ...] = ("clipmill",)) -> Server:
    """moto's S3 in server mode (real HTTP on loopback), with the buckets created."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start(
        "s3",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        url,
        f"{url}/moto-api/",
        log_dir,
    )
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
    )
    for bucket in buckets:
        client.create_bucket(Bucket=bucket)
    return server


def _pg_user() -> list[str]:
    """PostgreSQL refuses root: run its commands as the `postgres` system user when root."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError("running as root but `runuser` is missing: cannot start PostgreSQL")
    return [runuser, "-u", "postgres", "--"]


def pg_bin(name: str) -> str:
    """initdb / pg_ctl from PATH or Debian's versioned folder (/usr/lib/postgresql/N/bin)."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise FileNotFoundError(
        f"{name} not found: install PostgreSQL (`make setup` does: apt-get install postgresql)"
    )


def start_postgres(log_dir: Path) -> Server:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl in a temporary folder), trust auth on
    127.0.0.1, database `mlflow`. Returns the server with its SQLAlchemy URL in `url`."""
    folder = Path(tempfile.mkdtemp(prefix="clipmill-pg-"))
    os.chmod(folder, 0o755)
    prefix = _pg_user()
    if prefix:
        shutil.chown(folder, "postgres", "postgres")
    data = folder / "data"
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    subprocess.run(
        [
            *prefix,
            pg_bin("initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    port = free_port()
    log = log_dir / "postgres.log"
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    cmd = [*prefix, pg_bin("postgres"), "-D", str(data), *options.split()]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    server = Server(
        "postgres",
        url,
        proc,
        log,
        on_stop=lambda: shutil.rmtree(folder, ignore_errors=True),
        stop_signal=signal.SIGINT,
    )
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}:\n{server.log_tail()}")
        ready = subprocess.run(
            [
                *prefix,
                pg_bin("psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "-c",
                "CREATE DATABASE mlflow",
            ],
            env=env,
            capture_output=True,
        )
        if ready.returncode == 0:
            return server
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"postgres not ready: {ready.stderr.decode()}\n{server.log_tail()}")
        time.sleep(0.5)


def start_mlflow(log_dir: Path, backend_uri: str, artifacts: str, s3: str) -> Server:
    """`mlflow server` on the database with proxied artifacts in the S3-compatible store."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **s3_env(s3), "DO_NOT_TRACK": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [
        str(VENV_BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        artifacts,
    ]
    # cwd: the log folder, so nothing the server might write lands in the checkout
    return start("mlflow", cmd, url, f"{url}/health", log_dir, env=env, cwd=log_dir, timeout_s=180)


def start_prefect(log_dir: Path, home: Path) -> Server:
    """`prefect server start` on a free port with its own PREFECT_HOME (its own SQLite DB)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = prefect_env(url, home)
    cmd = [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    return start("prefect", cmd, url, f"{url}/health", log_dir, env=env, cwd=log_dir, timeout_s=180)


def prefect_vars(api_url: str, home: Path) -> dict[str, str]:
    """The Prefect settings of a client, worker or server of this test's server only."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "DO_NOT_TRACK": "true",
    }


def prefect_env(api_url: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, **prefect_vars(api_url, home)}
