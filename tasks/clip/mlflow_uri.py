"""MLflow model URIs (`models:/name/version`, `runs:/`, `mlflow-artifacts:/`) -> a local model folder."""

from __future__ import annotations

from pathlib import Path

from tasks.clip.errors import ModelLoadError
from tasks.clip.folder import CONFIG_FILE

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def is_mlflow_uri(ref: str) -> bool:
    """True for the references MLflow resolves, not the local file system."""
    return ref.startswith(MLFLOW_SCHEMES)


def download_model_folder(uri: str) -> Path:
    """Fetch a registered model's files from the configured MLflow store and find the model
    folder inside them (a pyfunc keeps it under artifacts/, a plain log under the run path)."""
    import mlflow

    from tasks.settings import get_settings

    tracking_uri = get_settings().tracking_uri
    mlflow.set_tracking_uri(tracking_uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as exc:
        raise ModelLoadError(
            f"{uri}: cannot be fetched from MLflow ({tracking_uri}): {exc}"
        ) from None
    found = sorted(p.parent for p in local.rglob(CONFIG_FILE))
    if not found:
        raise ModelLoadError(f"{uri}: no {CONFIG_FILE} among its artifacts ({local})")
    return found[0]
