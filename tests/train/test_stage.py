"""The stage end to end in local mode: loss falls, MLflow tracks and registers, bad input is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from .conftest import tiny_params


def test_stage_trains_tracks_and_registers(
    tmp_path: Path, shards_dir: Path, mlflow_store: str, ray_session, monkeypatch
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    import tasks.runner
    from tasks.clip import load_clip
    from tasks.settings import get_settings

    monkeypatch.setenv("CLIPMILL_ROOT", str(tmp_path))  # metrics/<stage>.json lands under the root
    get_settings.cache_clear()
    p = tiny_params(
        tmp_path,
        shards_dir,
        steps=30,
        batch_size=32,
        warmup_steps=3,
        checkpoint_every=10,
        registered_model_name="clipmill-test-student",
        caption_fields={"txt": 0.7, "recaption": 0.3},
    )
    params_file = tmp_path / "train.yaml"
    params_file.write_text(p.to_yaml())
    metrics = tasks.runner.run_stage("train", params_file=params_file)

    # it learns the colour/shape captions
    assert metrics["loss_last"] < metrics["loss_first"] - 0.5, metrics
    assert metrics["registered_version"] == 1
    assert (tmp_path / "metrics" / "train.json").exists()
    client = MlflowClient(mlflow_store)
    run = client.get_run(metrics["_mlflow_run_id"])
    assert len(run.data.tags["clipmill.data_version"]) == 32
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(30))
    for key in ("train/lr", "train/logit_scale", "train/samples_per_s"):
        assert client.get_metric_history(run.info.run_id, key)
    assert "plots/student_loss.png" in [
        a.path for a in client.list_artifacts(run.info.run_id, "plots")
    ]

    folder = Path(p.output_dir)
    assert yaml.safe_load((folder / "params.yaml").read_text())["steps"] == 30
    # the curve dvc.yaml's `plots:` renders, the same values as MLflow's history
    curve = json.loads((folder / "loss_history.json").read_text())
    assert [c["step"] for c in curve] == sorted(m.step for m in history)
    assert curve[-1]["loss"] == pytest.approx(
        next(m.value for m in history if m.step == curve[-1]["step"]), rel=1e-5
    )
    mlflow.set_tracking_uri(mlflow_store)
    registered, _, tok = load_clip("models:/clipmill-test-student/1")
    local, _, _ = load_clip(str(folder))
    x, text = torch.randn(2, 3, 64, 64), tok(["a red circle", "a green square"])
    with torch.no_grad():
        assert torch.equal(registered.encode_image(x), local.encode_image(x))
        assert torch.equal(registered.encode_text(text), local.encode_text(text))


def test_batch_larger_than_the_data_is_refused(tmp_path: Path, shards_dir: Path) -> None:
    from tasks.train.data import DataError
    from tasks.train.stage import run

    with pytest.raises(DataError, match="batch_size 128 is larger than the 96 samples"):
        run(tiny_params(tmp_path, shards_dir, batch_size=128))


def test_missing_shards_and_unknown_model_are_refused_before_training(
    tmp_path: Path, shards_dir: Path
) -> None:
    from tasks.clip import UnknownModelError
    from tasks.train.data import DataError
    from tasks.train.stage import run

    with pytest.raises(DataError, match="run the upstream stage first"):
        run(tiny_params(tmp_path, tmp_path / "no_shards"))
    with pytest.raises(UnknownModelError, match="closest: clipmill-tiny-vit"):
        run(tiny_params(tmp_path, shards_dir, model="clipmill-tiny-vt"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, shards_dir: Path, monkeypatch
) -> None:
    import tasks.train.loop as loop
    from tasks.train.checkpoints import complete_checkpoints, verify
    from tasks.train.stage import run, run_directory

    real = loop.forward_backward
    calls = {"n": 0}

    def diverging(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 5 else loss

    monkeypatch.setattr(loop, "forward_backward", diverging)
    p = tiny_params(tmp_path, shards_dir, steps=8, checkpoint_every=4)
    with pytest.raises(
        loop.NonFiniteLossError,
        match=r"step 5: loss is nan.*last good checkpoint: .*checkpoint_00000004",
    ):
        run(p)
    run_dir, _ = run_directory(p, "student")
    kept = complete_checkpoints(run_dir)
    assert [c.name for c in kept] == ["checkpoint_00000004"]
    assert verify(kept[0])["step"] == 4
    assert not Path(p.output_dir).exists()  # no model exported from a diverged run
