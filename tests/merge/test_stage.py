"""The merge stage end to end through the runner on tiny open_clip folders: every method writes
a model folder that load_clip and plain open_clip load, with its lineage, registered in MLflow;
inputs by MLflow URI; the held-out comparison."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tasks.io import clipbench
from tasks.merge.params import METHODS, MergeParams
from tests.merge.helpers import tiny_suite


def _eval_set(root: Path, name: str, classes: list[str], n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
        samples.append(clipbench.Sample(buf.getvalue(), "png", i % len(classes)))
    clipbench.write_classification(
        root / name, classes, ["a photo of a {c}.", "{c}"], samples, 100, split="val"
    )


@pytest.fixture()
def suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[Path], Path]:
    from tasks.settings import get_settings

    monkeypatch.setenv("CLIPMILL_ROOT", str(tmp_path))
    get_settings.cache_clear()
    base, experts = tiny_suite(tmp_path / "models", 3)
    _eval_set(tmp_path / "eval", "alpha", ["cat", "dog"], 6, 0)
    _eval_set(tmp_path / "eval", "beta", ["red", "green", "blue"], 6, 1)
    return base, experts, tmp_path


def _params(base: Path, experts: list[str], root: Path, **extra) -> MergeParams:  # noqa: ANN003
    data = {
        "inputs": {"base": str(base), "models": experts},
        "opcm": {"orders": 2, "seed": 0},
        "heldout": {
            "eval_root": str(root / "eval"),
            "sets": ["alpha", "beta"],
            "expert_sets": ["alpha", "beta", "alpha"],
            "max_items": 6,
        },
        "outputs": {"out_dir": str(root / "merged"), "registered_model_prefix": "t-merged"},
        **extra,
    }
    return MergeParams.model_validate(data)


def test_stage_merges_by_every_method_registers_and_loads(suite, mlflow_store: str) -> None:
    import mlflow
    import open_clip
    from mlflow.tracking import MlflowClient

    import tasks.runner
    from tasks.clip import load_clip

    base, experts, root = suite
    p = _params(base, [str(e) for e in experts], root)
    params_file = root / "merge.yaml"
    params_file.write_text(p.to_yaml())
    metrics = tasks.runner.run_stage("merge", params_file=params_file)

    names = [*METHODS, "opcm_order1"]
    for name in names:
        folder = root / "merged" / name
        lineage = json.loads((folder / "merge_lineage.json").read_text())
        assert lineage["method"] == name.split("_order")[0]
        assert lineage["models"] == [str(e) for e in experts]
        assert yaml.safe_load((folder / "params.yaml").read_text())["method"] == lineage["method"]
        assert metrics[f"{name}.registered_version"] == 1
        assert f"{name}.heldout_average" in metrics
    # the two OPCM orders are different orders
    o0 = json.loads((root / "merged/opcm/merge_lineage.json").read_text())["order"]
    o1 = json.loads((root / "merged/opcm_order1/merge_lineage.json").read_text())["order"]
    assert sorted(o0) == sorted(o1) and o0 != o1
    assert metrics["opcm_orders_std"] >= 0 and "experts_own_task_mean" in metrics
    assert metrics["keys_merged"] == metrics["keys_total"]

    # loadable by the library, from the folder and from the registry, and by plain open_clip
    model, _, tok = load_clip(str(root / "merged" / "opcm"))
    mlflow.set_tracking_uri(mlflow_store)
    registered, _, _ = load_clip("models:/t-merged-opcm/1")
    plain, _, _ = open_clip.create_model_and_transforms(f"local-dir:{root / 'merged' / 'opcm'}")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a = model.encode_image(x)
        assert torch.allclose(a, registered.encode_image(x), atol=1e-6)
        assert torch.allclose(a, plain.eval().encode_image(x), atol=1e-6)
    run = MlflowClient(mlflow_store).get_run(metrics["_mlflow_run_id"])
    arts = [a.path for a in MlflowClient(mlflow_store).list_artifacts(run.info.run_id, "plots")]
    assert "plots/merge_comparison.png" in arts
    version = MlflowClient(mlflow_store).get_model_version("t-merged-opcm", "1")
    assert json.loads(version.tags["clipmill.merge_order"]) == o0


def test_inputs_by_registered_version_and_clear_errors(suite, mlflow_store: str) -> None:
    """A models:/ URI as input (what the merge-on-arrival flow passes); a bad input is named."""
    import mlflow

    import tasks.runner
    from tasks.clip import ModelLoadError

    base, experts, root = suite
    mlflow.set_tracking_uri(mlflow_store)
    experiment = mlflow.create_experiment("t", artifact_location=(root / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        mlflow.log_artifacts(str(experts[0]), "m")
        run_id = mlflow.active_run().info.run_id
        source = mlflow.get_artifact_uri("m")
    client = mlflow.tracking.MlflowClient()
    client.create_registered_model("t-expert")
    client.create_model_version("t-expert", source, run_id=run_id)
    p = _params(
        base,
        ["models:/t-expert/1", str(experts[1])],
        root,
        methods=["opcm", "task_arithmetic"],
        heldout={"report": False, "eval_root": str(root / "eval")},
    )
    params_file = root / "merge.yaml"
    params_file.write_text(p.to_yaml())
    metrics = tasks.runner.run_stage("merge", params_file=params_file)
    assert metrics["models"] == 2 and "opcm.seconds" in metrics
    bad = p.model_copy(update={"inputs": p.inputs.model_copy(update={"models": [str(root)]})})
    params_file.write_text(bad.to_yaml())
    with pytest.raises(ModelLoadError, match=str(root)):
        tasks.runner.run_stage("merge", params_file=params_file)


def test_opcm_continued_from_a_registered_model_equals_one_run(suite, mlflow_store: str) -> None:
    """What the merge-on-arrival flow does: merge [e0, e1], register; later continue the
    registered model with e2. The result equals merging [e0, e1, e2] in one run."""
    import mlflow

    import tasks.runner
    from tasks.clip.statedict import open_weights

    base, experts, root = suite
    mlflow.set_tracking_uri(mlflow_store)
    quiet = {"report": False, "eval_root": str(root / "eval")}

    def merge(models: list[str], out: str, **inputs) -> dict:  # noqa: ANN003
        p = _params(base, models, root, methods=["opcm"], heldout=quiet)
        p = p.model_copy(
            update={
                "inputs": p.inputs.model_copy(update=inputs),
                "opcm": p.opcm.model_copy(update={"order": list(range(len(models))), "orders": 1}),
                "outputs": p.outputs.model_copy(update={"out_dir": str(root / out)}),
            }
        )
        (root / f"{out}.yaml").write_text(p.to_yaml())
        return tasks.runner.run_stage("merge", params_file=root / f"{out}.yaml")

    e = [str(x) for x in experts]
    merge(e[:2], "first")
    merge(e[2:], "online", continue_from="models:/t-merged-opcm/1")
    merge(e, "batch")
    online, batch = open_weights(root / "online/opcm"), open_weights(root / "batch/opcm")
    for key in batch.names():
        assert torch.allclose(online.get(key), batch.get(key), atol=1e-5), key
    lineage = json.loads((root / "online/opcm/merge_lineage.json").read_text())
    assert lineage["models"] == [*e[:2], e[2]]
    assert lineage["order"] == [*e[:2], e[2]]
    assert mlflow.tracking.MlflowClient().get_model_version("t-merged-opcm", "3")
