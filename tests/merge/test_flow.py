"""Merging as models arrive (flows/merge_on_arrival.py): experts registered in MLflow are merged
into the online OPCM model oldest first, each poll continuing the latest registered version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.merge.helpers import tiny_suite

PROJECT = Path(__file__).resolve().parents[2]


def _register(client, name: str, folder: Path, root: Path) -> None:  # noqa: ANN001
    import mlflow

    experiment = mlflow.get_experiment_by_name("experts")
    experiment_id = (
        experiment.experiment_id
        if experiment
        else mlflow.create_experiment("experts", artifact_location=(root / "art").as_uri())
    )
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_artifacts(str(folder), "model")
        source = mlflow.get_artifact_uri("model")
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    client.create_model_version(name, source, run_id=run.info.run_id)


def test_new_experts_are_merged_as_they_arrive(
    tmp_path: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from flows.merge_on_arrival import merge_new_experts
    from tasks.clip.statedict import open_weights
    from tasks.settings import get_settings

    monkeypatch.setenv("CLIPMILL_ROOT", str(tmp_path))
    get_settings.cache_clear()
    (tmp_path / "params").mkdir()
    shutil.copy(PROJECT / "params" / "merge.yaml", tmp_path / "params" / "merge.yaml")
    base, experts = tiny_suite(tmp_path / "models", 3)
    text = (tmp_path / "params" / "merge.yaml").read_text()
    (tmp_path / "params" / "merge.yaml").write_text(
        text.replace("base: data/models/teacher", f"base: {base}")
    )
    mlflow.set_tracking_uri(mlflow_store)
    client = MlflowClient(mlflow_store)
    out = str(tmp_path / "online")

    assert merge_new_experts("t-expert-", "t-online", out, evaluate=False)["arrivals"] == []
    _register(client, "t-expert-a", experts[0], tmp_path)
    _register(client, "t-expert-b", experts[1], tmp_path)
    first = merge_new_experts("t-expert-", "t-online", out, evaluate=False)
    assert first["arrivals"] == ["models:/t-expert-a/1", "models:/t-expert-b/1"]
    assert first["registered"] == "models:/t-online-opcm/1" and first["continued_from"] is None
    assert merge_new_experts("t-expert-", "t-online", out, evaluate=False)["arrivals"] == []

    _register(client, "t-expert-a", experts[2], tmp_path)  # a new version of a known expert
    second = merge_new_experts("t-expert-", "t-online", out, evaluate=False)
    assert second["arrivals"] == ["models:/t-expert-a/2"]
    assert second["continued_from"] == "models:/t-online-opcm/1"
    assert second["registered"] == "models:/t-online-opcm/2"
    lineage = json.loads((Path(out) / "opcm" / "merge_lineage.json").read_text())
    assert lineage["models"] == [*first["arrivals"], "models:/t-expert-a/2"]
    assert lineage["method_info"]["lambda"] != 1.0 and len(lineage["method_info"]["norms"]) == 3
    # the online model is the one-run OPCM of the three, in arrival order
    from tasks.merge.keys import merged_keys
    from tasks.merge.opcm import opcm

    b = open_weights(base)
    batch = opcm(b, [open_weights(e) for e in experts], merged_keys(b, []), alpha=0.5)
    online = open_weights(Path(out) / "opcm")
    for key in b.names():
        assert torch.allclose(online.get(key), batch.merged[key], atol=1e-5), key


def test_the_new_version_is_evaluated_and_its_scores_attached(
    tmp_path: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """evaluate=True: the evaluate stage scores the new online version in its own MLflow run, and
    that run's id and scores become tags of the new registered version (code-path test on a tiny
    random model and a hand-made colour set)."""
    import mlflow
    import yaml
    from mlflow.tracking import MlflowClient

    from flows.merge_on_arrival import merge_new_experts
    from tasks.settings import get_settings
    from tests.evaluate.sets import make_classification

    monkeypatch.setenv("CLIPMILL_ROOT", str(tmp_path))
    get_settings.cache_clear()
    (tmp_path / "params").mkdir()
    base, experts = tiny_suite(tmp_path / "models", 1)
    merge = yaml.safe_load((PROJECT / "params" / "merge.yaml").read_text())
    merge["inputs"]["base"] = str(base)
    (tmp_path / "params" / "merge.yaml").write_text(yaml.safe_dump(merge))
    make_classification(tmp_path / "eval" / "colours")
    suite = yaml.safe_load((PROJECT / "params" / "evaluate_merge.yaml").read_text())
    suite.update(eval_root=str(tmp_path / "eval"), datasets=["colours"])
    suite["embed"]["feature_store"] = False
    (tmp_path / "params" / "evaluate_merge.yaml").write_text(yaml.safe_dump(suite))
    mlflow.set_tracking_uri(mlflow_store)
    client = MlflowClient(mlflow_store)
    _register(client, "t-expert-a", experts[0], tmp_path)

    result = merge_new_experts("t-expert-", "t-online", str(tmp_path / "online"), evaluate=True)

    assert result["registered"] == "models:/t-online-opcm/1"
    scores = result["evaluate"]
    run = client.get_run(scores["run_id"])  # the evaluate stage's own run, logged and finished
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.runName"] == "evaluate_merge"
    logged = run.data.metrics["opcm.colours.acc1"]
    assert 0.0 <= logged <= 1.0 and scores["colours.acc1"] == pytest.approx(logged)
    written = json.loads((tmp_path / "online" / "evaluate" / "metrics.json").read_text())
    assert written["opcm"]["colours"]["acc1"] == pytest.approx(logged)
    tags = client.get_model_version("t-online-opcm", "1").tags  # attached to the new version
    assert tags["clipmill.evaluate.run_id"] == scores["run_id"]
    assert float(tags["clipmill.evaluate.colours.acc1"]) == pytest.approx(logged)
    assert float(tags["clipmill.evaluate.scoreboard_mean"]) == pytest.approx(
        written["opcm"]["scoreboard_mean"]
    )
