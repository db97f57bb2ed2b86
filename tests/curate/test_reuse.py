"""Work curate takes from earlier stages instead of redoing it: the decontaminate stage's eval view
hashes, embeddings of only the eval images the gates compare, and the locked towers' features
the teacher stored (the same scores with and without the store)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tasks.curate.params import CurateParams
from tasks.curate.steps.base import StepContext
from tasks.decontam.hashing import hash_batch

from .conftest import HandPool, image_bytes, reencode

LIT = "random:clipmill-lit-mnv2-minilm"  # the teacher's towers (timm trunk, HF text + pooler)


def _params(hp: HandPool, dec_dir: Path | None, **decontaminate: Any) -> CurateParams:
    return CurateParams(
        paths={
            "clip_model": "random:clipmill-tiny",
            "eval_dir": str(hp.eval_dir),
            "decontaminate_dir": None if dec_dir is None else str(dec_dir),
        },
        steps=["decontaminate"],
        decontaminate=decontaminate,
    )


def _pool_rows(images: dict[str, bytes]) -> pa.Table:
    rows = [{"uid": u, "image": d, "text": ""} for u, d in images.items()]
    return hash_batch(pa.Table.from_pylist(rows)).drop_columns(["image"])


def _embedded(ev: pa.Table) -> set[str]:
    return {
        i
        for i, v, e in zip(
            *(ev.column(c).to_pylist() for c in ("id", "variant", "image_emb")), strict=True
        )
        if e is not None and v == "full"
    }


def test_eval_features_reuse_the_stage_hashes_and_embed_only_matched(
    hand_pool: HandPool, tmp_path: Path, ray_session: object
) -> None:
    from tasks.curate.evalsets import eval_view
    from tasks.curate.inputs import _eval_features, _eval_hashes, decontaminate_match
    from tasks.decontam.stored import EVAL_HASHES_FILE, views_fingerprint, write_table
    from tasks.decontam.views import crawl_resize, eval_shards

    match = decontaminate_match()
    view = eval_view(match, crawl_resize())
    computed = _eval_hashes(
        _params(hand_pool, None), hand_pool.eval_dir, eval_shards(hand_pool.eval_dir), view
    )
    # The stage's file, with e5's whole view given the hashes of an unrelated pool image: only
    # a reused file can make that image match e5.
    other = image_bytes(3)
    lure = _pool_rows({"other": other}).to_pylist()[0]
    ids, variants = computed.column("id").to_pylist(), computed.column("variant").to_pylist()
    e5 = next(
        k
        for k, (i, v) in enumerate(zip(ids, variants, strict=True))
        if i == "toyset/e5" and v == "full"
    )
    stored = computed.to_pylist()
    stored[e5].update(phash=lure["phash"], dhash=lure["dhash"])
    dec_dir = tmp_path / "decontaminate"
    fingerprint = views_fingerprint(hand_pool.eval_dir, view)
    write_table(
        pa.Table.from_pylist(stored, computed.schema), dec_dir / EVAL_HASHES_FILE, fingerprint
    )

    planted = reencode(image_bytes(1000), (240, 240))  # the hand pool's copy of toyset/e0
    rows = _pool_rows({"planted": planted, "other": other, "plain": image_bytes(7)})
    ctx = StepContext(params=_params(hand_pool, dec_dir), out_dir=tmp_path)
    _eval_features(ctx, rows)
    ev = ctx.eval_features
    assert ev is not None and ev.num_rows == computed.num_rows
    assert ev.column("phash")[e5].as_py() == lure["phash"], "the stage's hashes are reused"
    # the gates compare only hash-matched eval images: only those are embedded (whole views)
    assert _embedded(ev) == {"toyset/e0", "toyset/e5"}
    assert all(
        e is None
        for v, e in zip(variants, ev.column("image_emb").to_pylist(), strict=True)
        if v != "full"
    )

    # a stale file (another view) is not reused; a threshold on its own embeds every eval image
    write_table(pa.Table.from_pylist(stored, computed.schema), dec_dir / EVAL_HASHES_FILE, "old")
    ctx = StepContext(params=_params(hand_pool, dec_dir, embed_threshold=0.99), out_dir=tmp_path)
    _eval_features(ctx, rows)
    ev = ctx.eval_features
    assert ev is not None and ev.column("phash")[e5].as_py() == computed.column("phash")[e5].as_py()
    assert _embedded(ev) == {f"toyset/e{i}" for i in range(6)}


def test_matched_eval_ids_count_whole_views_and_crops() -> None:
    from tasks.curate.inputs import matched_eval_ids
    from tasks.decontam.params import HashMatchParams

    ev = pa.table(
        {
            "id": ["s/a", "s/a", "s/b", "s/c"],
            "variant": ["full", "crop0.9@0,0", "full", "crop0.9@0,0"],
            "phash": ["0" * 16, "f" * 16, "00000000000000ff", "0f" * 8],
            "dhash": ["0" * 16, "f" * 16, "0" * 16, "0" * 16],
        }
    )
    rows = pa.table({"phash": ["0" * 16, "0f" * 8], "dhash": ["0" * 16, "0" * 16]})
    m = HashMatchParams(hash_max_distance=4, crop_hash_max_distance=4, crops=[0.9])
    # row 0 is s/a's whole view (s/b is 8 bits away); row 1 is s/c's crop only
    assert matched_eval_ids(rows, ev, m) == {"s/a", "s/c"}
    assert matched_eval_ids(rows, ev, m.model_copy(update={"crops": []})) == {"s/a"}
    loose = m.model_copy(update={"hash_max_distance": 8})
    assert matched_eval_ids(rows, ev, loose) == {"s/a", "s/b", "s/c"}


@pytest.fixture(scope="module")
def lit() -> tuple[Any, Any, Any]:
    from tasks.clip import load_clip

    return load_clip(LIT)


def _batch(n: int) -> pa.Table:
    images = [image_bytes(50 + i, (96, 64)) for i in range(n)]
    texts = [f"a picture of thing {i}" for i in range(n - 1)] + ["a picture of thing 0"]
    return pa.table(
        {
            "uid": [f"u{i}" for i in range(n)],
            "image": images[:-1] + images[:1],  # one image and one caption twice
            "text": texts,
            "image_reason": pa.nulls(n, pa.string()),
        }
    )


def test_stored_tower_features_give_the_same_embeddings(
    lit: tuple[Any, Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The teacher's towers split (timm trunk | head, MiniLM + pooler | proj): embeddings
    through the store equal the whole towers' on a first pass (features computed and stored)
    and on a second pass that reads them without decoding an image or running a frozen part."""
    import tasks.curate.images
    from tasks.curate.cached import CachedTowers
    from tasks.curate.features import embed_table

    model, preprocess, tokenizer = lit
    batch = _batch(5)
    plain = embed_table(batch, model, preprocess, tokenizer)

    def vectors(t: pa.Table, col: str) -> np.ndarray:
        return np.array(t.column(col).to_pylist(), dtype=np.float32)

    cache = CachedTowers.open(model, LIT, tmp_path, batch_size=2)
    first = embed_table(batch, model, preprocess, tokenizer, cache)
    assert len(cache.image_store) == 4 and len(cache.text_store) == 4  # distinct contents
    for col in ("image_emb", "text_emb"):
        np.testing.assert_allclose(vectors(first, col), vectors(plain, col), rtol=1e-5, atol=1e-5)

    def no_decoding(data: bytes) -> Any:
        raise AssertionError("a stored image was decoded again")

    monkeypatch.setattr(tasks.curate.images, "decode_rgb", no_decoding)
    again = CachedTowers.open(model, LIT, tmp_path, batch_size=2)  # a new reader (another run)
    second = embed_table(batch, model, preprocess, tokenizer, again)
    for col in ("image_emb", "text_emb"):
        np.testing.assert_allclose(vectors(second, col), vectors(plain, col), rtol=1e-5, atol=1e-5)
    # the scores decisions are made on: CLIP score per pair
    score = (vectors(second, "image_emb") * vectors(second, "text_emb")).sum(1)
    plain_score = (vectors(plain, "image_emb") * vectors(plain, "text_emb")).sum(1)
    np.testing.assert_allclose(score, plain_score, rtol=1e-5, atol=1e-5)


def test_stage_scores_with_and_without_the_store(
    hand_pool: HandPool, tmp_path: Path, ray_session: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole stage: CLIP scores and SemDeDup decisions with the feature store equal those
    without it; the store run leaves the towers' features in the store."""
    import lancedb

    from tasks.clip.featurestore import STORE_ENV
    from tasks.curate.stage import run

    store = tmp_path / "features"
    monkeypatch.setenv(STORE_ENV, str(store))

    def scores(feature_store: bool, out: str) -> dict[str, tuple[Any, Any]]:
        p = CurateParams(
            paths={
                "pool_uri": hand_pool.lance_uri,
                "crawl_dir": str(hand_pool.crawl_dir),
                "out_dir": str(tmp_path / out),
                "clip_model": LIT,
                "eval_dir": str(hand_pool.eval_dir),
            },
            steps=["basic", "clip_score", "semantic_dedup"],
            metadata={"wordnet": None, "extra": [str(hand_pool.metadata)]},
            clip_score={"fraction": 0.5},
            compute={"feature_store": feature_store},
            outputs={"materialise": False, "report_examples": 0},
        )
        run(p)
        table = lancedb.connect(hand_pool.lance_uri).open_table("pool").to_arrow()
        # another run must embed again: forget the pool's stored embeddings
        lancedb.connect(hand_pool.lance_uri).open_table("pool").drop_columns(
            ["curate_image_emb", "curate_text_emb", "curate_features_model"]
        )
        return {
            r["uid"]: (r["curate_clip_score_score"], r["curate_semantic_dedup_reason"])
            for r in table.to_pylist()
        }

    plain = scores(False, "plain")
    assert not store.exists(), "the store is only touched when compute.feature_store is on"
    cached = scores(True, "cached")
    assert store.is_dir() and any(store.rglob("part-*.parquet"))
    assert plain.keys() == cached.keys()
    for uid, (score, reason) in plain.items():
        assert (score is None) == (cached[uid][0] is None), uid
        if score is not None:
            assert cached[uid][0] == pytest.approx(score, abs=1e-5), uid
        assert reason == cached[uid][1], uid


def test_a_saved_teacher_has_the_keys_the_teacher_stored_under(tmp_path: Path) -> None:
    """Curate opens the stores of the towers of the model folder it loads; they must be the
    keys the teacher stage wrote its features under (tasks/train/features.py: the built model's
    preprocess_cfg and model_cfg), or curate would never find them."""
    import torch

    from tasks.clip import build_model, load_clip
    from tasks.clip.locked import split_image, split_text, tokenizer_config
    from tasks.curate.cached import CachedTowers
    from tasks.train.checkpoints import export_model_folder

    torch.manual_seed(0)
    built = build_model("clipmill-lit-mnv2-minilm", image_size=64)
    folder = export_model_folder(tmp_path / "teacher", built, "model: x\n", step=1)
    model, _, _ = load_clip(str(folder))
    towers = CachedTowers.open(model, str(folder), tmp_path / "store", batch_size=8)
    assert towers.image.key == split_image(built.model, built.preprocess_cfg).key
    assert towers.text.key == split_text(built.model, tokenizer_config(built.model_cfg)).key
    with torch.no_grad():  # another trunk, another key: a trained-away trunk is never reused
        next(iter(built.model.visual.trunk.parameters())).add_(1.0)
    assert towers.image.key != split_image(built.model, built.preprocess_cfg).key
