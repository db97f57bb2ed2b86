"""Filters and dedup on hand-made rows: decisions, reasons, global thresholds, twins recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.curate.params import CurateParams
from tasks.curate.steps.base import StepContext, StepResult
from tasks.curate.steps.registry import build_step


def decide(
    name: str, rows: pa.Table, tmp_path: Path, ctx_kw: dict | None = None, **kw
) -> StepResult:
    """Build step `name` from the registry with params `kw` (nested sections), set it up, call it."""
    kw.setdefault("paths", {"clip_model": "random:clipmill-tiny"})
    params = CurateParams(**kw)
    ctx = StepContext(params=params, out_dir=tmp_path, **(ctx_kw or {}))
    step = build_step(name, params)
    step.setup(ctx)
    return step(rows, ctx)


def vectors(rows: list[list[float] | None]) -> pa.Array:
    dim = len(next(r for r in rows if r is not None))
    return pa.array(
        [None if r is None else np.asarray(r, np.float32) / np.linalg.norm(r) for r in rows],
        pa.list_(pa.float32(), dim),
    )


def test_basic_filter_reasons(tmp_path):
    rows = pa.table(
        {
            "text": [
                "a big red barn",
                "a big red barn",
                "two words",
                "abc d e",
                "a big red barn",
                "a big red barn",
                "un grand chien noir",
            ],
            "language": ["en", "en", "en", "en", "en", "en", None],
            "original_width": [300, 199, 300, 300, 900, 300, 300],
            "original_height": [300, 300, 300, 300, 300, None, 300],
            "width": [256] * 7,
            "height": [256] * 7,
        }
    )
    got = decide("basic", rows, tmp_path)
    assert got.reason == [None, "image_too_small", "too_few_words", None, None, None, "language"]
    # a missing original size falls back to the stored size (256 x 256)
    assert got.keep.tolist() == [True, False, False, True, True, True, False]
    strict = decide("basic", rows.slice(3, 2), tmp_path, basic={"min_chars": 8, "max_aspect": 2.0})
    assert strict.reason == ["too_few_chars", "aspect_ratio"]


def _scored(scores: list[float | None], **cols) -> pa.Table:
    """Rows whose image . text cosine is exactly `score` (None = no embeddings)."""
    img = [None if s is None else [1.0, 0.0] for s in scores]
    txt = [None if s is None else [s, float(np.sqrt(1.0 - s * s))] for s in scores]
    return pa.table({"image_emb": vectors(img), "text_emb": vectors(txt), **cols})


def test_top_fraction_threshold_is_datacomps_rank():
    from tasks.curate.steps.clip_score import top_fraction_threshold

    scores = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0])
    # DataComp: -np.sort(-scores)[int(N * fraction)], the 0-based rank 3 of the descending list
    assert top_fraction_threshold(scores, 0.3) == 0.6
    assert top_fraction_threshold(scores, 1.0) == 0.0, "fraction 1 keeps every scored row"
    assert top_fraction_threshold(np.array([]), 0.3) == float("inf")


def test_clip_score_threshold_is_the_whole_pools_quantile_not_the_survivors(tmp_path):
    """The survivors' own top-25% cut (rank int(5 * .25) = 1 -> 0.5) would keep 0.9 and 0.5; the
    pool's (10 downloaded, embedded rows: rank int(10 * .25) = 2 -> 0.7) keeps 0.9 only."""
    pool_scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    pool = pa.concat_tables(
        [
            _scored(pool_scores, status=["success"] * 10),
            # not part of N: failed downloads (one with stale vectors), an undecodable image
            _scored([None, 0.95, None], status=["http_404", "http_404", "success"]),
        ]
    )
    survivors = _scored([0.9, 0.5, 0.3, 0.2, None])
    got = decide(
        "clip_score",
        survivors,
        tmp_path,
        ctx_kw={"pool_rows": pool},
        clip_score={"fraction": 0.25},
    )
    assert got.metrics["clip_score_threshold"] == pytest.approx(0.7)
    assert got.metrics["clip_score_pool_n"] == 10
    assert got.keep.tolist() == [True, False, False, False, False]
    assert got.reason[1:] == ["clip_score_low"] * 3 + ["no_embedding"]
    assert got.metrics["clip_score_passed"] == 1 and got.metrics["clip_score_reaching"] == 5
    assert np.isnan(got.score[4]) and got.score[0] == pytest.approx(0.9)


def test_clip_score_fraction_without_pool_rows_is_a_named_error(tmp_path):
    with pytest.raises(ValueError, match="pool_rows"):
        decide("clip_score", _scored([0.5]), tmp_path, clip_score={"fraction": 0.3})


def test_clip_score_fixed_threshold_needs_no_pool(tmp_path):
    from tasks.curate.steps.registry import build_step

    rows = _scored([0.9, 0.1, 0.85, 0.79, None])
    fixed = decide("clip_score", rows, tmp_path, clip_score={"fraction": None, "threshold": 0.8})
    assert fixed.keep.tolist() == [True, False, True, False, False]
    params = CurateParams(clip_score={"fraction": None, "threshold": 0.8})
    assert "pool_rows" not in build_step("clip_score", params).inputs()
    assert "pool_rows" in build_step("clip_score", CurateParams()).inputs()


def test_text_based_first_synset(tmp_path):
    wn = tmp_path / "wn.parquet"
    pq.write_table(
        pa.table(
            {
                "synset_id": ["v1", "n1", "n2", "n3"],
                "pos": ["v", "n", "n", "n"],
                "lemmas": [["dog"], ["dog", "domestic_dog"], ["dog", "frump"], ["cherry"]],
                "in_imagenet21k": [False, True, False, False],
            }
        ),
        wn,
    )
    rows = pa.table(
        {
            "text": ["two dogs outside", "a cherry tree", "a frump", "deux chiens"],
            "language": ["en", "en", "en", "fr"],
        }
    )
    got = decide("text_based", rows, tmp_path, metadata={"wordnet": str(wn)})
    # "dog": first NOUN synset n1 is in 21k (the verb sense does not count); "frump"'s first synset is not
    assert got.reason == [None, "no_imagenet21k_word", "no_imagenet21k_word", "language"]


def test_image_based_keeps_clusters_nearest_to_targets(tmp_path):
    rng = np.random.default_rng(0)
    centres = np.eye(4)[:3]
    pts = np.concatenate([c + 0.05 * rng.standard_normal((20, 4)) for c in centres])
    rows = pa.table({"image_emb": vectors([*pts.tolist(), None])})
    got = decide(
        "image_based",
        rows,
        tmp_path,
        {"target_embeddings": np.array([[1.0, 0.02, 0.0, 0.0]], np.float32)},
        steps=["image_based"],
        image_based={"kmeans_k": 3, "target_dir": "x"},
    )
    assert got.keep[:20].all() and not got.keep[20:60].any() and got.reason[60] == "no_embedding"
    assert set(got.reason[20:60]) == {"cluster_not_near_target"}


def test_exact_and_perceptual_dedup(tmp_path):
    rows = pa.table(
        {
            "uid": ["c", "a", "b", "d"],
            "sha256": ["x", "x", None, "y"],
            "image_sha256": ["x", "x", None, "z"],
        }
    )
    got = decide("exact_dedup", rows, tmp_path)
    assert got.reason == ["duplicate_sha256", None, "no_sha256", None] and got.ref[0] == "a"
    ph = ["ffff0000ffff0000", "ffff0000ffff0001", "0000ffff0000ffff", "ffff0000ffff0003", None]
    dh = ["0f0f0f0f0f0f0f0f", "0f0f0f0f0f0f0f0f", "0f0f0f0f0f0f0f0f", "f0f0f0f0f0f0f0f0", None]
    rows = pa.table({"uid": ["u1", "u2", "u3", "u4", "u5"], "phash": ph, "dhash": dh})
    got = decide("perceptual_dedup", rows, tmp_path, perceptual_dedup={"max_distance": 2})
    # u2 is 1 bit from u1 in both hashes; u4 is 2 bits away in pHash but far in dHash: kept
    assert got.reason == [None, "duplicate_phash", None, None, "no_image_hash"]
    assert got.ref[1] == "u1" and got.score[1] == 1


def _near_dup_cloud(n: int, dups: int, dim: int, seed: int) -> tuple[np.ndarray, set[int]]:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, dim)).astype(np.float32)
    twins = rng.choice(n, dups, replace=False)
    extra = base[twins] + 0.001 * rng.standard_normal((dups, dim)).astype(np.float32)
    x = np.concatenate([base, extra])
    return x / np.linalg.norm(x, axis=1, keepdims=True), set(range(n, n + dups))


@pytest.mark.parametrize("ann_min_rows", [10**9, 1])  # exact matrix path, LanceDB ANN path
def test_semdedup_finds_planted_twins(tmp_path, ann_min_rows):
    x, planted = _near_dup_cloud(600, 40, 32, seed=1)
    rows = pa.table(
        {
            "uid": [f"u{i:04d}" for i in range(len(x))],
            "image_emb": pa.array(list(x), pa.list_(pa.float32(), 32)),
        }
    )
    got = decide(
        "semantic_dedup",
        rows,
        tmp_path,
        semantic_dedup={"clusters": 4, "eps": 0.01, "ann_min_rows": ann_min_rows},
    )
    dropped = set(np.flatnonzero(~got.keep).tolist())
    # each twin pair loses exactly one member, and it names the other one
    assert len(dropped) == 40
    for i in dropped:
        j = int(got.ref[i][1:])
        assert {i, j} & planted and abs(i - j) != 0 and float(x[i] @ x[j]) > 0.99
    assert got.metrics["semdedup_ann_clusters"] == (4 if ann_min_rows == 1 else 0)


def test_semdedup_flags_rows_without_embeddings(tmp_path):
    rows = pa.table({"uid": ["a", "b", "c"], "image_emb": vectors([[1.0, 0.0], None, [0.0, 1.0]])})
    got = decide("semantic_dedup", rows, tmp_path, semantic_dedup={"clusters": 1})
    assert got.reason == [None, "no_embedding", None]
