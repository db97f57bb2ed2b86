"""The curate stage streamed (`execution.mode: stream`) against the in-memory stage on the hand
pool, blocks of 7 rows: the same ledger columns, uid lists, shards (byte for byte), MetaCLIP
table, funnel and metrics, for the default steps and for each option that has its own streamed
form (caption choice, image_based, balance.target_size, perceptual_dedup at 64 bits); the
scratch folder on shared storage; the features of the single streamed pipeline."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.curate.params import CurateParams

STEPS = list(CurateParams().steps)  # the default steps


def _params(hp, out, mode: str, **kw) -> CurateParams:
    base: dict = dict(
        steps=STEPS,
        paths=dict(
            pool_uri=hp.lance_uri,
            crawl_dir=str(hp.crawl_dir),
            out_dir=str(out),
            clip_model="random:clipmill-tiny",
            eval_dir=str(hp.eval_dir),
        ),
        metadata=dict(wordnet=None, extra=[str(hp.metadata)]),
        planted_qa=dict(path=str(hp.planted)),
        balance=dict(t=3),
        clip_score=dict(fraction=0.8),
        holdout=dict(fraction=0.25, seed=3),
        decontaminate=dict(embed_threshold=None),
        semantic_dedup=dict(eps=0.02),
        compute=dict(rows_per_block=7),
        outputs=dict(shard_size=2, report_examples=2),
        execution=dict(mode=mode),
    )
    for key, value in kw.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return CurateParams(**base)


def _ledger(hp) -> dict[str, dict]:
    import lancedb

    table = lancedb.connect(hp.lance_uri).open_table("pool").to_arrow()
    cols = [
        c for c in table.column_names if c.startswith("curate_") and c != "curate_features_model"
    ]
    return {r["uid"]: r for r in table.select(["uid", *cols]).to_pylist()}


def _shards(folder) -> dict[str, list[tuple[str, bytes]]]:
    """shard name -> its members in order, with their bytes."""
    out = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            out[shard.name] = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    return out


def _both(hand_pool, tmp_path, **kw) -> tuple[dict, dict, dict, dict]:
    """The in-memory stage, then the streamed one, on the same pool with the same params:
    (memory metrics, streamed metrics, memory ledger, streamed ledger), after checking that
    both wrote the same ledger columns, uid lists, MetaCLIP table, shards (byte for byte),
    funnel and metrics."""
    from tasks.curate.stage import run

    mem_out, str_out = tmp_path / "memory", tmp_path / "stream"
    memory = run(_params(hand_pool, mem_out, "memory", **kw))
    ledger = _ledger(hand_pool)
    streamed = run(_params(hand_pool, str_out, "stream", **kw))
    got = _ledger(hand_pool)

    assert set(got) == set(ledger) and len(got) == 43
    decided = [
        c
        for c in next(iter(ledger.values()))
        if c.endswith(("_keep", "_reason", "_score", "_dup_of", "_holdout"))
    ]
    for uid, row in ledger.items():
        for c in decided:
            assert got[uid][c] == row[c], (uid, c, got[uid][c], row[c])
    for name in ("subset_uids.parquet", "holdout_uids.parquet"):
        mine = pq.read_table(str_out / name).column("uid").to_pylist()
        assert mine == pq.read_table(mem_out / name).column("uid").to_pylist()
        assert mine or name == "holdout_uids.parquet" and memory["holdout_size"] == 0
    if (mem_out / "balance" / "entry_counts.npy").exists():
        entries = np.load(mem_out / "balance" / "entry_counts.npy")
        assert np.array_equal(np.load(str_out / "balance" / "entry_counts.npy"), entries)
        assert (str_out / "balance" / "metadata.json").read_text() == (
            mem_out / "balance" / "metadata.json"
        ).read_text()
    for folder in ("shards", "holdout"):
        mine, theirs = _shards(str_out / folder), _shards(mem_out / folder)
        assert mine == theirs, folder
    assert sum(len(v) for v in _shards(str_out / "shards").values()) > 0
    assert json.loads((str_out / "report" / "funnel.json").read_text()) == json.loads(
        (mem_out / "report" / "funnel.json").read_text()
    )
    reused = {"rows_matched", "rows_featurised"}  # the second run reuses the stored work
    for key, value in memory.items():
        if key not in reused:
            assert streamed[key] == value or (value != value and streamed[key] != streamed[key]), (
                key
            )
    assert set(streamed) - set(memory) == set()
    assert list((str_out / "report").glob("grid_kept.png"))
    assert not (str_out / ".stream").exists(), "the scratch folder is removed"
    return memory, streamed, ledger, got


def test_stream_stage_equals_memory_stage(hand_pool, tmp_path, ray_session):
    memory, _, _, got = _both(hand_pool, tmp_path)
    assert {"curate_perceptual_dedup_dup_of", "curate_decontaminate_dup_of"} <= set(got["zphash"])
    # the steps streamed here really decided something on this pool
    assert got["zphash"]["curate_perceptual_dedup_dup_of"] == "good001"
    assert got["zplanted"]["curate_decontaminate_dup_of"] == "toyset/e0"
    assert any(r["curate_reason"].startswith("semantic_dedup:") for r in got.values())
    assert memory["decontam_recall"] == 1.0 and memory["shards_written"] > 1


def _recaptioned(hand_pool, rescued: set[str]) -> None:
    """The recaption stage's pool columns, as it writes them: a synthetic caption for every
    good row, scored 0.99 (passing any threshold of the random model) for `rescued`."""
    import lancedb
    import pyarrow as pa

    from tasks.recaption.blocks import PART_SCHEMA
    from tasks.recaption.stage import write_pool

    uids = [f"good{i:03d}" for i in range(30)]
    write_pool(
        lancedb.connect(hand_pool.lance_uri).open_table("pool"),
        pa.table(
            {
                "uid": uids,
                "long_positive": [f"A long description {u}." for u in uids],
                "long_negative": [f"A wrong description {u}." for u in uids],
                "short_positive": [["dog"]] * 30,
                "short_negative": [["fox"]] * 30,
                "sources": [json.dumps({"long_positive": "composer:templates-v1"})] * 30,
                "error": [None] * 30,
                "score_alt": [0.0] * 30,
                "score_long_positive": [0.99 if u in rescued else -0.99 for u in uids],
                "score_long_negative": [None] * 30,
            },
            schema=PART_SCHEMA,
        ),
    )


@pytest.mark.slow  # the unit-level equality (tests/curate/test_stream.py) runs by default
@pytest.mark.parametrize(
    "caption", ["raw_else_synthetic", pytest.param("both", marks=pytest.mark.slow)]
)
def test_stream_caption_choice_equals_memory(hand_pool, tmp_path, ray_session, caption):
    """clip_score.caption streamed: the same rows rescued by their synthetic caption, the same
    shards (their txt is the synthetic caption) and the same kept-by-synthetic grid."""
    rescued = {f"good{i:03d}" for i in range(0, 30, 2)}
    _recaptioned(hand_pool, rescued)
    steps = ["basic", "clip_score", "balance"]
    memory, _, _, got = _both(
        hand_pool, tmp_path, steps=steps, clip_score={"fraction": 0.2, "caption": caption}
    )
    assert memory["clip_score_kept_by_synthetic"] > 0
    kept = [u for u, r in got.items() if r["curate_clip_score_keep"]]
    assert set(kept) - rescued, "some rows pass on their raw caption too"
    texts = [
        data.decode()
        for members in _shards(tmp_path / "stream" / "shards").values()
        for name, data in members
        if name.endswith(".txt")
    ]
    assert any(t.startswith("A long description") for t in texts)
    assert any(not t.startswith("A long description") for t in texts)
    for out in ("memory", "stream"):
        assert (tmp_path / out / "report" / "grid_kept_by_synthetic_caption.png").is_file()


@pytest.mark.slow  # the unit-level equality (tests/curate/test_stream.py) runs by default
def test_stream_image_based_equals_memory(hand_pool, tmp_path, ray_session):
    """DataComp's image-based filter streamed: the same k-means clusters (fitted in uid order
    in both), the same clusters kept."""
    from tasks.io.wds import write_tar
    from tests.curate.conftest import image_bytes

    target = tmp_path / "target"
    write_tar(target / "0.tar", [(f"t{i}", {"jpg": image_bytes(i)}) for i in range(2)])
    steps = ["basic", "image_based"]
    memory, _, _, got = _both(
        hand_pool,
        tmp_path,
        steps=steps,
        image_based={"target_dir": str(target), "kmeans_k": 4},
    )
    assert 1 <= memory["image_based_clusters_kept"] < 4
    reasons = [r["curate_image_based_reason"] for r in got.values()]
    assert "cluster_not_near_target" in reasons and None in reasons


@pytest.mark.slow  # the unit-level equality (tests/curate/test_stream.py) runs by default
def test_stream_balance_target_size_equals_memory(hand_pool, tmp_path, ray_session):
    """balance.target_size streamed: the t of the in-memory find_t, found from histograms."""
    memory, streamed, _, got = _both(
        hand_pool, tmp_path, steps=["basic", "exact_dedup", "balance"], balance={"target_size": 9}
    )
    assert streamed["balance_t"] == memory["balance_t"] >= 1
    assert sum(bool(r["curate_balance_keep"]) for r in got.values()) >= 9


@pytest.mark.slow  # the unit-level equality (tests/curate/test_stream.py) runs by default
def test_stream_perceptual_dedup_at_64_bits_equals_memory(hand_pool, tmp_path, ray_session):
    """max_distance 64 (every pair within it): the smallest hashed uid reaching the step keeps
    its place, every other hashed row is its duplicate, as the in-memory greedy decides."""
    _, _, _, got = _both(
        hand_pool,
        tmp_path,
        steps=["basic", "perceptual_dedup"],
        perceptual_dedup={"max_distance": 64},
    )
    kept = [u for u, r in got.items() if r["curate_perceptual_dedup_keep"]]
    dups = {r["curate_perceptual_dedup_dup_of"] for r in got.values()} - {None}
    assert len(kept) == 1 and dups == set(kept)
    assert sum(r["curate_perceptual_dedup_reason"] == "duplicate_phash" for r in got.values()) > 20


def test_stream_scratch_dir_on_shared_storage(hand_pool, tmp_path, ray_session):
    """execution.scratch_dir: the run's scratch lives in its own folder there (named after the
    output folder) and is removed at the end; nothing is written to <out_dir>/.stream."""
    from tasks.curate.stage import run
    from tasks.curate.streamrun import scratch_folder

    shared, out = tmp_path / "shared", tmp_path / "out"
    shared.mkdir()
    (shared / "someone_elses.txt").write_text("kept")
    p = _params(
        hand_pool,
        out,
        "stream",
        steps=["basic", "exact_dedup", "balance"],
        execution={"scratch_dir": str(shared)},
    )
    assert scratch_folder(p, out).parent == shared
    assert scratch_folder(p, out) != scratch_folder(p, tmp_path / "other")
    metrics = run(p)
    assert metrics["subset_size"] > 0
    assert not (out / ".stream").exists()
    assert sorted(x.name for x in shared.iterdir()) == ["someone_elses.txt"]


@pytest.mark.slow  # half a minute; the stream stage's equality runs by default (first test)
def test_stream_features_equal_in_memory_features(tmp_path, ray_session):
    """Features computed by the streamed path's single pipeline (blocks of 7 rows, one actor
    pool for all of them) equal the in-memory path's on a fresh copy of the same pool: hashes,
    reasons (the row whose crawl shard is gone included), model tag and embeddings."""
    import lancedb

    from tasks.curate.stage import run
    from tests.curate.conftest import build_pool

    feature_cols = [
        "curate_image_sha256",
        "curate_phash",
        "curate_dhash",
        "curate_image_reason",
        "curate_features_model",
    ]
    tables = {}
    for mode in ("memory", "stream"):
        hp = build_pool(tmp_path / mode)
        steps = ["basic", "exact_dedup", "clip_score"]  # hashes and embeddings
        metrics = run(_params(hp, tmp_path / mode / "out", mode, steps=steps))
        assert metrics["rows_featurised"] == 42  # every row but the failed download
        pool = lancedb.connect(hp.lance_uri).open_table("pool").to_arrow()
        tables[mode] = {r["uid"]: r for r in pool.to_pylist()}
    memory, streamed = tables["memory"], tables["stream"]
    assert streamed["bnoshard"]["curate_image_reason"] == "image_shard_missing"
    for uid, row in memory.items():
        for c in feature_cols:
            assert streamed[uid][c] == row[c], (uid, c)
        for c in ("curate_image_emb", "curate_text_emb"):
            a, b = row[c], streamed[uid][c]
            assert (a is None) == (b is None), (uid, c)
            if a is not None:
                assert np.allclose(a, b, atol=1e-5), (uid, c)
    assert sum(r["curate_image_emb"] is not None for r in streamed.values()) > 30


def test_auto_mode_streams_from_the_row_threshold(hand_pool, tmp_path):
    from tasks.curate.poolio import open_pool_table
    from tasks.curate.streamrun import use_stream

    pool = open_pool_table(hand_pool.lance_uri)
    auto = {"mode": "auto"}
    assert use_stream(
        _params(hand_pool, tmp_path, "auto", execution={**auto, "stream_min_rows": 43}), pool
    )
    assert not use_stream(
        _params(hand_pool, tmp_path, "auto", execution={**auto, "stream_min_rows": 44}), pool
    )
    assert not use_stream(_params(hand_pool, tmp_path, "memory"), pool)
    assert CurateParams().execution.mode == "auto"


def test_stream_refuses_a_scratch_uri_before_any_work(hand_pool, tmp_path):
    """An fsspec URI as execution.scratch_dir refuses naming the param; nothing is prepared or
    written (no Ray needed: the refusal comes first)."""
    from tasks.curate.stage import run

    out = tmp_path / "out"
    with pytest.raises(NotImplementedError, match="execution.scratch_dir"):
        run(_params(hand_pool, out, "stream", execution={"scratch_dir": "s3://bucket/tmp"}))
    assert not (out / "metadata.parquet").exists()


def test_default_steps_and_reports_stream():
    from tasks.curate.steps.registry import build_reports, build_steps
    from tasks.curate.streamrun import check_streamable

    p = CurateParams()
    check_streamable(build_steps(p), build_reports(p))  # no refusal
