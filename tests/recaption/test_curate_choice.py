"""Curate's raw-or-synthetic caption choice (clip_score.caption) and the fields it writes into the
curated shards' JSON side file from the recaption stage's pool columns."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from tasks.curate.stage import _recaption_row
from tasks.curate.steps.clip_score import CaptionChoice
from tests.curate.test_steps import _scored, decide

RAW = [0.9, 0.2, 0.2, 0.9, None]
SYNTHETIC = [0.1, 0.85, 0.3, 0.95, 0.99]  # the last row has no image embedding: stays out


def _rows() -> pa.Table:
    return _scored(
        RAW,
        uid=pa.array([f"u{i}" for i in range(5)]),
        synthetic_score=pa.array(SYNTHETIC, pa.float32()),
    )


@pytest.mark.parametrize(
    ("mode", "keep", "rescued"),
    [
        ("raw", [True, False, False, True, False], set()),
        ("raw_else_synthetic", [True, True, False, True, False], {"u1"}),
        ("both", [True, True, False, True, False], {"u1"}),
    ],
)
def test_synthetic_caption_stands_in_where_the_raw_one_fails(tmp_path, mode, keep, rescued):
    got = decide(
        "clip_score",
        _rows(),
        tmp_path,
        clip_score={"fraction": None, "threshold": 0.5, "caption": mode},
    )
    assert got.keep.tolist() == keep
    choice = got.artifacts["caption_choice"]
    assert choice.synthetic_uids == rescued and choice.mode == mode
    assert choice.synthetic_passing == {"u1", "u3", "u4"}
    assert got.metrics["clip_score_kept_by_synthetic"] == len(rescued)
    raw, synthetic, threshold = got.artifacts["caption_scores"]
    assert threshold == 0.5 and synthetic.tolist() == pytest.approx(SYNTHETIC)


def test_without_recaption_columns_the_step_is_datacomps(tmp_path):
    rows = _scored([0.9, 0.2], uid=pa.array(["a", "b"]))
    got = decide(
        "clip_score",
        rows,
        tmp_path,
        clip_score={"fraction": None, "threshold": 0.5, "caption": "both"},
    )
    assert (
        got.keep.tolist() == [True, False]
        and got.artifacts["caption_choice"].synthetic_uids == set()
    )


def _pool_row(uid: str, synthetic: str | None = "A long description.") -> dict:
    return {
        "uid": uid,
        "text": "alt text",
        "texts": ["alt text"],
        "url": "http://x/y.jpg",
        "recaption_long_positive": synthetic,
        "recaption_long_negative": "A wrong description.",
        "recaption_short_positive": ["dog"],
        "recaption_short_negative": ["fox"],
        "recaption_sources": json.dumps({"long_positive": "composer:templates-v1"}),
        "recaption_score_alt": 0.2,
        "recaption_score_long_positive": 0.8,
    }


def test_json_side_file_fields_have_fixed_names_and_the_chosen_caption():
    choice = CaptionChoice("both", 0.5, frozenset({"r"}), frozenset({"r", "k"}))
    rescued = _recaption_row(_pool_row("r"), choice)
    assert rescued["text"] == "A long description." and rescued["alt_text"] == "alt text"
    assert rescued["caption_choice"] == "synthetic" and "recaption" not in rescued
    kept = _recaption_row(_pool_row("k"), choice)
    assert kept["text"] == "alt text" and kept["caption_choice"] == "raw"
    assert kept["recaption"] == "A long description."  # both pass: trains on both
    for row in (rescued, kept):
        assert row["long_negative"] == "A wrong description." and row["short_positive"] == ["dog"]
        assert row["short_negative"] == ["fox"] and row["clip_score_synthetic"] == 0.8
        assert row["recaption_sources"] == {"long_positive": "composer:templates-v1"}
        assert not any(k.startswith("recaption_") and k != "recaption_sources" for k in row)
    failing = _recaption_row(_pool_row("f"), choice)  # its synthetic caption fails the threshold
    assert "recaption" not in failing and failing["long_positive"] == "A long description."
    one = CaptionChoice("raw_else_synthetic", 0.5, frozenset(), frozenset({"k"}))
    assert "recaption" not in _recaption_row(_pool_row("k"), one)  # one caption per sample
    assert (
        _recaption_row(_pool_row("n"), None)["recaption"] == "A long description."
    )  # no filter ran


def test_curate_stage_writes_the_four_fields_and_trains_on_the_chosen_caption(
    hand_pool, tmp_path, ray_session
):
    """Curate on a pool the recaption stage annotated (columns written as the stage writes them):
    with a threshold no raw caption of the random model passes, raw_else_synthetic keeps the rows
    whose synthetic caption passes, and their shards' txt is the synthetic caption."""
    import lancedb

    from tasks.curate.stage import run
    from tasks.recaption.blocks import PART_SCHEMA
    from tasks.recaption.stage import write_pool
    from tests.curate.test_stage import _params, _shard_samples

    pool = lancedb.connect(hand_pool.lance_uri).open_table("pool")
    uids = [f"good{i:03d}" for i in range(30)]
    rescued = set(uids[:10])
    write_pool(
        pool,
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
                "score_long_positive": [0.99 if u in rescued else 0.1 for u in uids],
                "score_long_negative": [None] * 30,
            },
            schema=PART_SCHEMA,
        ),
    )
    steps = ["basic", "clip_score"]
    score = {"fraction": None, "threshold": 0.98}
    out = tmp_path / "out"
    metrics = run(
        _params(
            hand_pool,
            out,
            steps=steps,
            clip_score={**score, "caption": "raw_else_synthetic"},
            holdout={"fraction": 0.0},
        )
    )
    assert metrics["clip_score_kept_by_synthetic"] == 10
    seen = _shard_samples(out / "shards")
    assert set(seen) == rescued
    for uid, parts in seen.items():
        meta = json.loads(parts["json"])
        assert parts["txt"].decode() == f"A long description {uid}." == meta["long_positive"]
        assert meta["caption_choice"] == "synthetic" and meta["alt_text"].startswith(("a ", "the "))
        assert meta["long_negative"] == f"A wrong description {uid}." and meta[
            "short_negative"
        ] == ["fox"]
        assert meta["recaption_sources"] == {"long_positive": "composer:templates-v1"}
    assert (out / "report" / "caption_scores.png").is_file()
    raw = run(
        _params(
            hand_pool, tmp_path / "raw", steps=steps, clip_score=score, holdout={"fraction": 0.0}
        )
    )
    assert raw["clip_score_kept_by_synthetic"] == 0 and raw["subset_size"] == 0
