"""Where things run (Ray, MLflow, storage, credentials): from the environment, never from params.

Priority: explicit environment variables > a `.env` file in the working directory > defaults.
These values never enter DVC's hashes, so moving from a laptop to a cluster re-runs nothing.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks import PROJECT_ROOT


def _default_cache_dir() -> Path:
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clipmill"


class Settings(BaseSettings):
    """Embedded engines by default; a cluster, a server or S3 by setting the variables below."""

    model_config = SettingsConfigDict(env_prefix="CLIPMILL_", env_file=".env", extra="ignore")

    root: Path = Field(default=PROJECT_ROOT)  # project root: relative paths resolve here
    ray_address: str | None = Field(
        default=None, validation_alias=AliasChoices("CLIPMILL_RAY_ADDRESS", "RAY_ADDRESS")
    )  # None = start a local Ray; "auto" or ray://host:10001 = join a cluster
    ray_num_cpus: int | None = None  # CPUs for a local Ray (None = all)
    ray_object_store_mb: int = 1024  # object store of a local Ray, MiB
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CLIPMILL_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"),
    )  # None = sqlite:///<root>/mlflow.db; http://host:5000 = an MLflow server
    mlflow_experiment: str = "clipmill"  # experiment every stage run goes to
    mlflow_artifact_root: str | None = None  # None = <root>/mlartifacts; s3://bucket/prefix works
    data_root: str | None = None  # None = <root>/data; s3://bucket/prefix for shared storage
    data_cache: Path | None = None  # local copies of a remote data_root (None = under cache_dir)
    dvc_remote_url: str | None = None  # DVC remote of the flows (None = <data_root>/dvc if remote)
    lancedb_uri: str | None = (
        None  # None = <data_root>/lancedb; s3://... or db:// for LanceDB Cloud
    )
    cache_dir: Path = Field(default_factory=_default_cache_dir)  # downloads (Debian packages)
    door: str = "python"  # which entry point started this run: cli, dvc, prefect, python
    progress: Literal["auto", "bar", "lines", "off"] = (
        "auto"  # long steps: auto = a bar on a terminal, plain lines in logs (tasks/progress.py)
    )
    progress_interval_s: float = Field(default=10.0, ge=0)  # seconds between progress lines

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        if self.mlflow_artifact_root:
            return self.mlflow_artifact_root
        if self.remote_data:
            return join_uri(self.data_uri, "mlartifacts")  # shared storage: artifacts beside it
        return (self.root / "mlartifacts").as_uri()

    @property
    def data_uri(self) -> str:
        return self.data_root or str(self.root / "data")

    @property
    def remote_data(self) -> bool:
        """Whether data_root is a URI (s3://...) rather than a local folder: then stages get
        local copies through the runner's layer (tasks/io/dataroot.py)."""
        return is_remote_uri(self.data_root)

    @property
    def local_data(self) -> Path:
        """Where a stage's relative `data/...` paths live on this machine: `<root>/data`, a
        local data_root, or the local cache of a remote one (tasks/io/paths.py resolves there)."""
        if not self.data_root:
            return self.root / "data"
        if not self.remote_data:
            return Path(self.data_root.removeprefix("file://"))
        if self.data_cache is not None:
            return self.data_cache
        where = self.data_root.split("://", 1)[1].strip("/")
        return self.cache_dir / "dataroot" / where

    @property
    def dvc_remote(self) -> str | None:
        """The DVC remote the flows pull from / push to: CLIPMILL_DVC_REMOTE_URL, else
        `<data_root>/dvc` when data_root is a bucket, else None (the committed local remote)."""
        if self.dvc_remote_url:
            return self.dvc_remote_url
        return join_uri(self.data_uri, "dvc") if self.remote_data else None

    @property
    def lance_uri(self) -> str:
        return self.lancedb_uri or join_uri(self.data_uri, "lancedb")


def is_remote_uri(uri: str | None) -> bool:
    """A URI of a remote filesystem (s3://, gs://, memory://...), not a local path or file://."""
    return bool(uri) and "://" in str(uri) and not str(uri).startswith(("file://", "local://"))


def join_uri(base: str, *parts: str) -> str:
    """Join path parts onto a local path or a URI (s3://...) alike."""
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
