"""The curate stage streamed (`execution.mode: stream`) against the in-memory stage on the hand
pool, blocks of 7 rows: the same ledger columns, uid lists, shards (byte for byte), MetaCLIP
table, funnel and metrics; what is not streamed refuses by name before any work."""

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


def test_stream_stage_equals_memory_stage(hand_pool, tmp_path, ray_session):
    from tasks.curate.stage import run

    mem_out, str_out = tmp_path / "memory", tmp_path / "stream"
    memory = run(_params(hand_pool, mem_out, "memory"))
    ledger = _ledger(hand_pool)
    streamed = run(_params(hand_pool, str_out, "stream"))
    got = _ledger(hand_pool)

    assert set(got) == set(ledger) and len(got) == 43
    decided = [
        c
        for c in next(iter(ledger.values()))
        if c.endswith(("_keep", "_reason", "_score", "_dup_of", "_holdout"))
    ]
    assert {"curate_perceptual_dedup_dup_of", "curate_decontaminate_dup_of"} <= set(decided)
    for uid, row in ledger.items():
        for c in decided:
            assert got[uid][c] == row[c], (uid, c, got[uid][c], row[c])
    # the steps streamed here really decided something on this pool
    assert got["zphash"]["curate_perceptual_dedup_dup_of"] == "good001"
    assert got["zplanted"]["curate_decontaminate_dup_of"] == "toyset/e0"
    assert any(r["curate_reason"].startswith("semantic_dedup:") for r in got.values())
    for name in ("subset_uids.parquet", "holdout_uids.parquet"):
        mine = pq.read_table(str_out / name).column("uid").to_pylist()
        assert mine == pq.read_table(mem_out / name).column("uid").to_pylist() and mine
    entries = np.load(mem_out / "balance" / "entry_counts.npy")
    assert np.array_equal(np.load(str_out / "balance" / "entry_counts.npy"), entries)
    assert (str_out / "balance" / "metadata.json").read_text() == (
        mem_out / "balance" / "metadata.json"
    ).read_text()
    for folder in ("shards", "holdout"):
        mine, theirs = _shards(str_out / folder), _shards(mem_out / folder)
        assert mine == theirs and sum(len(v) for v in mine.values()) > 0, folder
    assert json.loads((str_out / "report" / "funnel.json").read_text()) == json.loads(
        (mem_out / "report" / "funnel.json").read_text()
    )
    reused = {"rows_matched", "rows_featurised"}  # the second run reuses the stored work
    assert memory["decontam_recall"] == 1.0 and memory["shards_written"] > 1
    for key, value in memory.items():
        if key not in reused:
            assert streamed[key] == value or (value != value and streamed[key] != streamed[key]), (
                key
            )
    assert set(streamed) - set(memory) == set()
    assert list((str_out / "report").glob("grid_kept.png"))
    assert not (str_out / ".stream").exists(), "the scratch folder is removed"


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


@pytest.mark.parametrize(
    ("kw", "names"),
    [
        ({"steps": ["image_based"], "image_based": {"target_dir": "x"}}, "image_based"),
        ({"clip_score": {"caption": "both"}}, "clip_score.caption"),
        ({"balance": {"target_size": 5}}, "balance.target_size"),
    ],
)
def test_stream_refuses_what_it_cannot_stream_before_any_work(hand_pool, tmp_path, kw, names):
    """Streamed, these refuse naming the step or param; nothing is prepared or written (no Ray
    needed: the refusal comes first)."""
    from tasks.curate.stage import run

    out = tmp_path / "out"
    with pytest.raises(NotImplementedError, match=names):
        run(_params(hand_pool, out, "stream", **kw))
    assert not (out / "metadata.parquet").exists()


def test_default_steps_and_reports_stream():
    from tasks.curate.steps.registry import build_reports, build_steps
    from tasks.curate.streamrun import check_streamable

    p = CurateParams()
    check_streamable(build_steps(p), build_reports(p))  # no refusal
