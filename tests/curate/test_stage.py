"""The curate stage end to end on a hand-made pool: decisions, non-destructive columns, outputs, reruns."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow.parquet as pq
import pytest

from tasks.curate.params import CurateParams


def _params(hp, out, **kw) -> CurateParams:
    """The hand pool's params; `kw` sections are merged into these (nested keys)."""
    base: dict = dict(
        paths=dict(
            pool_uri=hp.lance_uri,
            crawl_dir=str(hp.crawl_dir),
            out_dir=str(out),
            clip_model="random:clipmill-tiny",
            eval_dir=str(hp.eval_dir),
        ),
        metadata=dict(wordnet=None, extra=[str(hp.metadata)]),
        planted_qa=dict(path=str(hp.planted)),
        balance=dict(t=8),
        clip_score=dict(fraction=0.9),
        outputs=dict(shard_size=8, report_examples=4),
        decontaminate=dict(embed_threshold=None),
        semantic_dedup=dict(eps=1e-7),
    )
    for key, value in kw.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return CurateParams(**base)


def _pool(hp):
    import lancedb

    return lancedb.connect(hp.lance_uri).open_table("pool").to_arrow().to_pylist()


def test_stage_end_to_end(hand_pool, tmp_path, ray_session):
    from tasks.curate.stage import run

    out = tmp_path / "out"
    metrics = run(_params(hand_pool, out, holdout={"fraction": 0.25, "seed": 3}))
    rows = {r["uid"]: r for r in _pool(hand_pool)}
    assert len(rows) == 43, "curation never deletes pool rows"
    for uid, expected in hand_pool.expect.items():
        assert rows[uid]["curate_reason"].startswith(expected), (uid, rows[uid]["curate_reason"])
    # each removal records what it duplicates
    assert rows["zexact"]["curate_exact_dedup_dup_of"] == "good000"
    assert rows["zphash"]["curate_perceptual_dedup_dup_of"] == "good001"
    assert rows["zplanted"]["curate_decontaminate_dup_of"] == "toyset/e0"
    # steps only judge the rows that reached them; earlier drops keep null there
    assert (
        rows["bshort"]["curate_clip_score_keep"] is None
        and rows["bshort"]["curate_basic_keep"] is False
    )
    curated = sorted(u for u, r in rows.items() if r["curate_keep"])
    held = sorted(u for u, r in rows.items() if r["curate_holdout"])
    kept = sorted(set(curated) - set(held))  # the training set
    assert set(held) < set(curated) and len(held) == round(len(curated) * 0.25) > 0
    assert all(rows[u]["curate_holdout"] is False for u in kept), "every row gets the column"
    subset = pq.read_table(out / "subset_uids.parquet").column("uid").to_pylist()
    assert subset == kept and metrics["subset_size"] == len(kept) > 0
    assert pq.read_table(out / "holdout_uids.parquet").column("uid").to_pylist() == held
    assert metrics["holdout_size"] == len(held) and metrics["curated_size"] == len(curated)
    # materialised once: every training sample, with every caption field, in shuffled shards;
    # the held-out ones in holdout/, in the same layout, and never among the training shards
    seen = _shard_samples(out / "shards")
    assert sorted(seen) == kept
    held_seen = _shard_samples(out / "holdout")
    assert sorted(held_seen) == held and set(held_seen).isdisjoint(seen)
    assert all({"jpg", "txt", "json"} <= set(parts) for parts in held_seen.values())
    sample = seen[kept[0]]
    meta = json.loads(sample["json"])
    assert (
        meta["text"] == sample["txt"].decode()
        and meta["texts"] == [meta["text"]]
        and "jpg" in sample
    )
    from PIL import Image

    Image.open(io.BytesIO(sample["jpg"])).verify()
    assert metrics["decontam_recall"] == 1.0 and metrics["decontam_false_positives"] == 0
    # the crawl's resize section the eval view used is recorded with the run
    from tasks.decontam.views import crawl_resize

    recorded = json.loads((out / "report" / "inputs.json").read_text())
    assert recorded["crawl"]["resize"] == crawl_resize().model_dump(mode="json")
    assert (out / "report" / "funnel.png").exists() and (
        out / "report" / "entry_counts.png"
    ).exists()
    assert list((out / "report").glob("grid_dropped_basic.png"))
    funnel = json.loads((out / "report" / "funnel.json").read_text())
    assert [f["step"] for f in funnel] == ["input", *_params(hand_pool, out).steps, "holdout"]
    assert funnel[-1] == {"step": "holdout", "left": len(kept), "dropped": {"held_out": len(held)}}
    # MetaCLIP's form of the balancing state: one int64 count per metadata entry, in its order
    import numpy as np

    entries = json.loads((out / "balance" / "metadata.json").read_text())
    counts = np.load(out / "balance" / "entry_counts.npy")
    assert counts.dtype == np.int64 and len(counts) == len(entries) > 0
    assert int(counts.max()) == metrics["max_entry_count_before"]
    assert int(np.count_nonzero(counts)) == metrics["entries_matched"]
    # the hand pool's uids ("good000") are not hex: no DataComp file, and the metric says so
    assert not (out / "subset_uids.npy").exists() and metrics["datacomp_uids_written"] == -1


def _shard_samples(folder) -> dict[str, dict[str, bytes]]:
    """uid -> {extension: bytes} over every .tar in `folder`."""
    seen: dict[str, dict[str, bytes]] = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                seen.setdefault(m.name.split(".")[0], {})[m.name.split(".", 1)[1]] = (
                    tar.extractfile(m).read()
                )
    return seen


def test_rebalance_reuses_matches_and_features(hand_pool, tmp_path, ray_session):
    from tasks.curate.stage import run

    no_shards = {"materialise": False}
    first = run(_params(hand_pool, tmp_path / "a", steps=["basic", "balance"], outputs=no_shards))
    again = run(
        _params(
            hand_pool,
            tmp_path / "b",
            steps=["basic", "balance"],
            balance={"t": 1},
            outputs=no_shards,
        )
    )
    assert first["rows_matched"] == 43 and again["rows_matched"] == 0, (
        "balancing again must not re-match"
    )
    assert again["entries_above_t"] > 0 and again["subset_size"] < first["subset_size"]
    same = run(_params(hand_pool, tmp_path / "c", steps=["basic", "balance"], outputs=no_shards))
    assert same["subset_size"] == first["subset_size"], "seeded: same params, same subset"


def test_balance_target_size(hand_pool, tmp_path, ray_session):
    from tasks.curate.stage import run

    m = run(
        _params(
            hand_pool,
            tmp_path / "o",
            steps=["balance"],
            balance={"target_size": 10},
            outputs={"materialise": False},
        )
    )
    assert m["subset_size"] >= 10 and m["balance_t"] >= 1


def test_model_step_without_model_is_a_clear_error():
    from tasks.base import ParamsError

    with pytest.raises(ValueError, match="need a CLIP model"):
        CurateParams(paths={"clip_model": None}, steps=["clip_score"])
    with pytest.raises(ParamsError, match="need a CLIP model"):
        CurateParams.validate_mapping(
            {"paths": {"clip_model": None}, "steps": ["semantic_dedup"]}, source="x.yaml"
        )
    CurateParams(
        paths={"clip_model": None},
        steps=["basic", "exact_dedup", "balance"],
        decontaminate={"embed_threshold": None},
    )


def test_missing_model_folder_is_a_clear_error(tmp_path):
    from tasks.clip import ModelLoadError, load_clip

    with pytest.raises(ModelLoadError, match="no-teacher.*does not exist"):
        load_clip(str(tmp_path / "no-teacher"))
    with pytest.raises(ModelLoadError, match="needs a CLIP model"):
        load_clip(None)


def test_params_reject_bad_orders():
    with pytest.raises(ValueError, match="last step"):
        CurateParams(steps=["balance", "basic"])
    with pytest.raises(ValueError, match="repeat"):
        CurateParams(steps=["basic", "basic"])


def test_registered_stage_through_the_runner(
    hand_pool, tmp_path, monkeypatch, mlflow_store, ray_session
):
    """The door every entry point uses: params file + overrides, MLflow run, metrics file; the
    pool found through CLIPMILL_LANCEDB_URI (pool_uri left null, as in params/curate.yaml)."""
    import mlflow

    from tasks import PROJECT_ROOT
    from tasks.runner import run_stage
    from tasks.settings import get_settings

    monkeypatch.setenv("CLIPMILL_ROOT", str(tmp_path))
    monkeypatch.setenv("CLIPMILL_LANCEDB_URI", hand_pool.lance_uri)
    get_settings.cache_clear()
    overrides = {
        "paths.crawl_dir": str(hand_pool.crawl_dir),
        "paths.out_dir": str(tmp_path / "out"),
        "metadata.wordnet": None,
        "metadata.extra": [str(hand_pool.metadata)],
        "paths.clip_model": None,
        "balance.t": 8,
        "steps": ["basic", "exact_dedup", "perceptual_dedup", "balance"],
        "outputs.shard_size": 8,
    }
    metrics = run_stage("curate", PROJECT_ROOT / "params/curate.yaml", overrides=overrides)
    assert (
        json.loads((tmp_path / "metrics/curate.json").read_text())["subset_size"]
        == metrics["subset_size"]
        > 0
    )
    run = mlflow.get_run(metrics["_mlflow_run_id"])
    assert (
        run.data.params["curate.balance.t"] == "8"
        and run.data.metrics["funnel_holdout"] == metrics["subset_size"]
        and run.data.metrics["funnel_balance"] == metrics["subset_size"] + metrics["holdout_size"]
    )
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "report")}
    assert "report/funnel.png" in artifacts and "report/entry_counts.png" in artifacts
