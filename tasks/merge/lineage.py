"""A merged model's lineage (which models, in which order, the method and its params) and its
MLflow registration: the model folder logged as plain artifacts of the stage's run (the runner
owns the run) and registered as `<prefix>-<method>`, so `models:/<name>/<version>` loads it with
`tasks.clip.load_clip` and feeds a later merge (the merge-on-arrival flow)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import yaml

LINEAGE_FILE = "merge_lineage.json"


def lineage(method: str, base: str, models: list[str], info: dict[str, Any], params: dict) -> dict:
    """The record written into the folder, logged and tagged."""
    return {
        "method": method,
        "base": base,
        "models": models,
        "order": info.get("order", models),
        "method_info": info,
        "params": params,
    }


def write_lineage(folder: Path, record: dict[str, Any]) -> None:
    """merge_lineage.json beside the weights (params.yaml holds the same, as YAML)."""
    from tasks.io.atomic import atomic_write_text

    atomic_write_text(folder / LINEAGE_FILE, json.dumps(record, indent=1, default=str) + "\n")


def lineage_yaml(record: dict[str, Any]) -> str:
    return "# merged model: lineage (tasks/merge)\n" + yaml.safe_dump(
        json.loads(json.dumps(record, default=str)), sort_keys=False
    )


def read_lineage(folder: Path) -> dict[str, Any] | None:
    """The lineage of a merged folder, None for a folder that is not a merge's."""
    path = Path(folder) / LINEAGE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def register(folder: Path, name: str, method: str, record: dict[str, Any]) -> str | None:
    """Log the folder under `merged/<method>` of the active run and register it; the version."""
    import mlflow

    run = mlflow.active_run()
    if run is None or not name:
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    artifact_path = f"merged/{method}"
    mlflow.log_artifacts(str(folder), artifact_path)
    client = MlflowClient()
    with contextlib.suppress(MlflowException):  # already registered: add a version
        client.create_registered_model(name)
    version = client.create_model_version(  # a folder, not a logged MLflow model: by its source
        name,
        source=mlflow.get_artifact_uri(artifact_path),
        run_id=run.info.run_id,
        tags={
            "clipmill.merge_method": method,
            "clipmill.merge_models": json.dumps(record["models"]),
            "clipmill.merge_order": json.dumps(record["order"], default=str),
            "clipmill.merge_base": record["base"],
        },
    )
    return str(version.version)
