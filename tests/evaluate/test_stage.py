"""The evaluate stage end to end on a tiny random model and hand-made sets, through the runner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tasks.evaluate.datasets import CLASSIFICATION, RETRIEVAL
from tasks.evaluate.params import EmbedParams, EvaluateParams

from .sets import make_retrieval


def _params(tmp_path, tiny_model, eval_root, **extra) -> dict:
    members = tmp_path / "members"
    make_retrieval(members, n=16, seed=5)
    held_out = tmp_path / "held_out"  # the same kind of pairs, never trained on
    make_retrieval(held_out, n=12, seed=6)
    base = {
        "models": [str(tiny_model)],
        "eval_root": str(eval_root),
        "datasets": ["colours", "retrieval"],
        "output_dir": str(tmp_path / "out"),
        "embed": {"batch_size": 8},
        "probe": {"datasets": ["colours"], "c_grid": [0.1, 10.0]},
        "perception": {
            "datasets": ["colours"],
            "max_templates": 1,
            "attributes": {"style": ["a photo", "a drawing"]},
        },
        "robustness": {
            "datasets": ["colours"],
            "max_samples": 12,
            "fractions": [0.5],
            "adv_steps": 2,
        },
        "membership": {
            "targets": [
                {"model": str(tiny_model), "members": str(members), "held_out": str(held_out)},
                {"model": str(tmp_path / "teacher"), "members": None, "held_out": None},
            ],
            "shift_non_members": str(eval_root / "retrieval"),
            "max_pairs": 8,
            "loss_batch": 4,
            "bootstrap": 50,
        },
    }
    base.update(extra)
    return base


def test_stage_through_runner(tmp_path, tiny_model, eval_root, mlflow_store, ray_session):
    from tasks.runner import run_stage

    params_file = tmp_path / "evaluate.yaml"
    params_file.write_text(yaml.safe_dump(_params(tmp_path, tiny_model, eval_root)))
    metrics = run_stage("evaluate", params_file)
    m = metrics["tiny"]
    assert set(m["colours"]) >= {
        "acc1",
        "mean_per_class_recall",
        "acc5",
        "lp_acc1",
        "perception",
        "robustness",
    }
    assert 0.0 <= m["colours"]["acc1"] <= 1.0
    assert m["retrieval"]["image_retrieval_recall@10"] >= m["retrieval"]["image_retrieval_recall@1"]
    assert m["scoreboard_mean"] == pytest.approx(
        (
            m["colours"]["acc1"]
            + (
                m["retrieval"]["image_retrieval_recall@1"]
                + m["retrieval"]["text_retrieval_recall@1"]
            )
            / 2
        )
        / 2
    )
    audit = m["membership"]
    assert {"similarity_auc", "loss_auc", "similarity_tpr_at_1pct_fpr"} <= set(audit)
    assert audit["held_out"].endswith("held_out") and audit["pairs_per_side"] == 8
    assert audit["loss_auc_ci_low"] <= audit["loss_auc"] <= audit["loss_auc_ci_high"]
    assert m["membership_shift"]["label"] == "distribution shift, not membership"
    assert metrics["teacher"]["membership"]["measured"] is False, "no held-out data: said so"
    out = tmp_path / "out"
    rec = json.loads((out / "tiny" / "colours_zeroshot_classification.json").read_text())
    assert set(rec) == {"dataset", "model", "pretrained", "task", "metrics", "language"}
    assert rec["dataset"] == "wds/colours" and rec["task"] == "zeroshot_classification"
    assert set(rec["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert (out / "tiny" / "retrieval_zeroshot_retrieval.json").exists()
    assert (out / "tiny" / "colours_linear_probe.json").exists()
    for plot in (
        "colours_confusion.png",
        "colours_per_class_recall.png",
        "retrieval_examples.png",
        "membership_roc.png",
    ):
        assert any(p.name.endswith(plot) for p in (out / "plots" / "tiny").iterdir()), plot
    board = json.loads((out / "scoreboard.json").read_text())
    assert board["dataset"][-1] == "average"
    # every score next to its chance level and trivial baseline (colours: 6 classes x 4 images)
    assert board["metric"] == ["acc1", "lp_acc1", "mean_recall@1", "unweighted mean"]
    assert board["chance"][:2] == [pytest.approx(1 / 6)] * 2
    assert board["trivial_baseline"][:2] == [pytest.approx(1 / 6)] * 2
    # retrieval: 12 images, 2 captions each; R@1 chance 1/12 (text -> image), 1/24 (image -> text)
    assert board["chance"][2] == pytest.approx((1 / 12 + 1 / 24) / 2)
    assert board["trivial_baseline"][2] == pytest.approx(1 / 12)  # 2 of 24 captions are positive
    assert m["colours"]["reference"]["acc1"]["chance"] == pytest.approx(1 / 6)
    # the fixture's colours set has a train split: the probe trained there
    probe_rec = json.loads((out / "tiny" / "colours_linear_probe.json").read_text())
    assert probe_rec["split_scheme"].startswith("train split") and probe_rec["train_images"] == 24
    assert (out / "plots" / "tiny" / "scoreboard.png").exists()

    import mlflow

    run = mlflow.get_run(metrics["_mlflow_run_id"])
    assert "tiny.colours.acc1" in run.data.metrics
    assert "tiny.retrieval.image_retrieval_recall_at_1" in run.data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert "scoreboard.json" in artifacts and "plots" in artifacts
    # each figure is rendered once: the PNG written under out/plots/ is the logged artifact
    name = "plots/tiny/colours_confusion.png"
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots/tiny")}
    assert name in logged
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=name)
    assert Path(local).read_bytes() == (out / name).read_bytes()


def test_ray_actor_pool_gives_the_same_embeddings(tiny_model, eval_root, ray_session, monkeypatch):
    import os

    from tasks.evaluate import features
    from tasks.evaluate.datasets import load_set
    from tasks.evaluate.embed import encode_images_local
    from tasks.evaluate.features import Embedder
    from tasks.evaluate.loading import load_model

    s = load_set("colours", eval_root, eval_root)
    always = EmbedParams(ray="always", ray_min_samples=0, batch_size=5, num_blocks=3)
    assert features.use_ray(len(s), always)
    assert not features.use_ray(len(s), always.model_copy(update={"ray": "never"}))
    # auto: an actor pool only when Ray has more CPUs than this machine (a cluster)
    auto = always.model_copy(update={"ray": "auto"})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert not features.use_ray(len(s), auto), "one machine: in process"
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert features.use_ray(len(s), auto), "Ray has more CPUs than this machine"
    assert not features.use_ray(len(s), auto.model_copy(update={"ray_min_samples": 10_000}))
    monkeypatch.undo()
    via_ray = Embedder(load_model(str(tiny_model)), always, None).images(s.images)
    loaded = load_model(str(tiny_model))
    local = encode_images_local(loaded.model, loaded.preprocess, s.images, 8)
    assert via_ray.shape == local.shape
    assert np.allclose(via_ray.numpy(), local.numpy(), atol=1e-5)


def test_checkpoint_that_does_not_match_its_config(tmp_path, tiny_model):
    import shutil

    from tasks.clip import ModelLoadError
    from tasks.evaluate.loading import load_model

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    cfg = json.loads((bad / "open_clip_config.json").read_text())
    cfg["model_cfg"]["embed_dim"] = 48
    (bad / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="bad"):
        load_model(str(bad))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "absent"))


def test_unknown_dataset_fails_before_any_model_work(tmp_path, tiny_model, eval_root):
    from tasks.evaluate.datasets import DatasetError
    from tasks.evaluate.stage import run

    params = EvaluateParams.model_validate(
        _params(tmp_path, tiny_model, eval_root, datasets=["colours", "cifar11"])
    )
    with pytest.raises(DatasetError, match="unknown dataset 'cifar11'"):
        run(params)


def test_absent_public_benchmark_is_skipped_with_a_message(tmp_path, tiny_model, eval_root, capsys):
    from tasks.evaluate.stage import load_sets

    params = EvaluateParams.model_validate(
        _params(
            tmp_path,
            tiny_model,
            eval_root,
            public_datasets=["imagenet1k"],
            public_root=str(tmp_path / "pub"),
        )
    )
    sets, skipped = load_sets(params)
    assert skipped == ["imagenet1k"] and "imagenet1k" not in sets
    assert "not present under" in capsys.readouterr().out
    strict = params.model_copy(update={"public_required": True})
    with pytest.raises(ValueError, match="imagenet1k"):
        load_sets(strict)


def test_figures_off_writes_no_png_and_the_same_scores(tmp_path, tiny_model, eval_root):
    """`figures: false` (the merge suite's setting, for speed) leaves out every per-model figure
    and nothing else: the records and the scores are those of a run with figures."""
    from tasks.evaluate.stage import run

    off = {"enabled": False}
    runs = {}
    for figures in (True, False):
        extra = {"probe": off, "perception": off, "robustness": off, "membership": off}
        params = _params(tmp_path / str(figures), tiny_model, eval_root, figures=figures, **extra)
        metrics = run(EvaluateParams.model_validate(params))
        out = tmp_path / str(figures) / "out"
        pngs = sorted(p.relative_to(out) for p in out.rglob("*.png"))
        records = sorted(p.relative_to(out) for p in out.rglob("*.json"))
        runs[figures] = (metrics, pngs, records)
    (with_m, with_png, with_rec), (without_m, without_png, without_rec) = runs[True], runs[False]
    assert with_png and not without_png
    assert with_rec == without_rec
    for m in (with_m, without_m):
        m["tiny"].pop("embedding"), m["tiny"].pop("images_per_s")  # timings
        assert set(m["tiny"].pop("task_seconds")) == {"embed", CLASSIFICATION, RETRIEVAL}
        cpu = m["tiny"].pop("task_cpu_seconds")  # CPU seconds of the same parts
        assert set(cpu) == {"embed", CLASSIFICATION, RETRIEVAL}
        assert all(v >= 0 for v in cpu.values()) and cpu["embed"] > 0
    np.testing.assert_equal(with_m, without_m)
