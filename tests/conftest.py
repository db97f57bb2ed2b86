"""Shared fixtures: one Ray per test session, an isolated MLflow store, the quiet offline env."""

from __future__ import annotations

import os

for _key, _value in {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """One small local Ray for the whole session; stages join it instead of starting their own."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            object_store_memory=256 * 1024 * 1024,
            include_dashboard=False,
            logging_level="WARNING",
        )
    yield ray
    ray.shutdown()


@pytest.fixture()
def mlflow_store(tmp_path, monkeypatch):
    """A private MLflow SQLite store per test, so runs never leak between tests or into the repo's."""
    from tasks.settings import get_settings

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("CLIPMILL_MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("CLIPMILL_MLFLOW_ARTIFACT_ROOT", (tmp_path / "mlartifacts").as_uri())
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    yield uri
    get_settings.cache_clear()
