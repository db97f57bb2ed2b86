"""Training from stored features (tasks/train/features.py): the same samples, captions and loss
curve as decoding every step; a second run reuses the store; Ray Train workers and resume."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from .conftest import tiny_params

CAPTIONS = {"txt": 0.5, "recaption": 0.5}  # the caption picked per sample matters


def lit_params(tmp: Path, shards: Path, **over: Any) -> Any:
    """A LiT-like run: timm trunk + HF text transformer, both locked, heads trained, tiny images."""
    base: dict[str, Any] = dict(
        model="clipmill-lit-mnv2-minilm",
        image_size=32,
        lock_image=True,
        lock_text=True,
        train_augment=False,
        caption_fields=CAPTIONS,
        steps=6,
        batch_size=16,
        checkpoint_every=3,
        lr=5e-3,
    )
    base.update(over)
    return tiny_params(tmp, shards, **base)


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh feature store for this test (the driver resolves it and hands it to workers)."""
    root = tmp_path / "features"
    monkeypatch.setenv("CLIPMILL_FEATURE_STORE", str(root))
    return root


def _history(params: Any) -> list[float]:
    runs = list(Path(params.run_root).glob("*/summary.json"))
    assert len(runs) == 1, runs
    return [loss for _, loss in json.loads(runs[0].read_text())["history"]]


def _weights(params: Any) -> dict[str, torch.Tensor]:
    return load_file(str(Path(params.output_dir) / "model.safetensors"))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_feature_batches_give_the_decoded_batches_outputs(
    tmp_path: Path, shards_dir: Path, store: Path
) -> None:
    """Per sample and per step: the heads on stored features give what the whole model gives on
    the decoded batch (so a different order or caption choice would fail here)."""
    from tasks.clip import build_model
    from tasks.train.data import list_shards, pick_caption, sample_seed, worker_batches
    from tasks.train.data import worker_samples as samples_of
    from tasks.train.features import (
        cached_towers,
        caption_options,
        encode_all,
        feature_batches,
        heads_model,
        replay,
    )

    p = lit_params(tmp_path, shards_dir)
    built = build_model(p.model, image_size=p.image_size)
    model = built.model.eval()
    model.output_dict = True
    towers = cached_towers(model, built, p, str(store))
    assert towers is not None and towers.image is not None and towers.text is not None
    encode_all(
        towers,
        p,
        transform=built.preprocess_val,
        tokenizer=built.tokenizer,
        rank=0,
        world=1,
        label="t",
    )
    assert towers.counts["image_computed"] == 96  # every sample of the two shards, once
    kw: dict[str, Any] = dict(batch_size=16, rank=0, world=1, seed=0, resample=True, buffer=16)
    shards = list_shards(p.shards)
    decoded = worker_batches(
        shards,
        transform=built.preprocess_val,
        tokenizer=built.tokenizer,
        fields=CAPTIONS,
        augment=False,
        **kw,
    )
    cached = feature_batches(
        towers,
        samples_of(shards, reader=replay(towers), **kw),  # light records, no image bytes
        p,
        transform=built.preprocess_val,
        tokenizer=built.tokenizer,
    )
    heads = heads_model(model, towers)
    with torch.no_grad():
        for _ in range(4):
            want, got = model(*next(decoded)), heads(*next(cached))
            for k in ("image_features", "text_features"):
                torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)
    assert towers.counts["image_computed"] == 96  # nothing was encoded again at step time
    # a pure cache: with the store gone, a step computes what it lacks (bytes read again)
    from tasks.clip.featurestore import FeatureStore

    towers.image_store = FeatureStore(tmp_path / "empty", towers.image.key)
    with torch.no_grad():
        want, got = model(*next(decoded)), heads(*next(cached))
    torch.testing.assert_close(got["image_features"], want["image_features"], rtol=1e-4, atol=1e-5)
    assert towers.counts["image_computed"] == 96 + 16
    # every caption a sample can be given is one the encoding pass stored
    for batch in samples_of(shards, **{**kw, "start_step": 0}):
        for s in batch:
            picked = pick_caption(s, CAPTIONS, random.Random(sample_seed(0, s["__index__"])))
            assert picked in caption_options(s, CAPTIONS)
        break


def test_cached_run_has_the_uncached_loss_curve_and_a_second_run_reuses_it(
    tmp_path: Path, shards_dir: Path, store: Path
) -> None:
    from tasks.train.stage import run

    plain = lit_params(tmp_path / "plain", shards_dir, feature_cache=False)
    cold = lit_params(tmp_path / "cold", shards_dir)
    warm = lit_params(tmp_path / "warm", shards_dir)
    m_plain, m_cold = run(plain), run(cold)
    assert m_plain["feature_cache_used"] == 0
    assert m_cold["feature_cache_used"] == 1
    assert m_cold["image_features_computed"] == 96 and m_cold["image_features_reused"] == 0
    assert m_cold["text_features_computed"] == 24  # 12 distinct alt texts + 12 recaptions
    curve_plain, curve_cold = _history(plain), _history(cold)
    assert len(curve_cold) == 6
    assert curve_cold == pytest.approx(curve_plain, rel=1e-4, abs=1e-5)
    assert max(curve_plain) - min(curve_plain) > 1e-3  # a curve, not a constant
    assert _max_diff(_weights(plain), _weights(cold)) < 1e-4
    parts = list(store.glob("*/part-*.parquet"))
    assert len({p.parent.name for p in parts}) == 2  # one key per tower

    m_warm = run(warm)
    assert m_warm["features_computed"] == 0
    assert m_warm["features_reused"] == m_cold["features_computed"]
    assert _history(warm) == pytest.approx(curve_cold, rel=1e-6)
    assert sorted(store.glob("*/part-*.parquet")) == sorted(parts)  # nothing added


def test_a_different_caption_choice_changes_the_curve(
    tmp_path: Path, shards_dir: Path, store: Path
) -> None:
    """The curve comparison above can fail: picking only alt texts gives another curve."""
    from tasks.train.stage import run

    mixed = lit_params(tmp_path / "mixed", shards_dir, steps=3)
    alt = lit_params(tmp_path / "alt", shards_dir, steps=3, caption_fields={"txt": 1.0})
    run(mixed)
    run(alt)
    assert _history(mixed) != pytest.approx(_history(alt), rel=1e-4, abs=1e-5)


@pytest.mark.slow  # half a minute; two Ray Train workers run by default in test_distributed.py
def test_two_ray_workers_and_resume_on_stored_features(
    tmp_path: Path, shards_dir: Path, store: Path, ray_session
) -> None:
    from tasks.train.stage import run

    one = lit_params(tmp_path / "one", shards_dir)
    two = lit_params(tmp_path / "two", shards_dir, num_workers=2)
    m1, m2 = run(one), run(two)
    assert m2["world_size"] == 2 and m2["feature_cache_used"] == 1
    assert m2["features_computed"] == 0  # the first run's store, read by both workers
    assert _history(two) == pytest.approx(_history(one), rel=1e-4, abs=1e-5)
    assert _max_diff(_weights(one), _weights(two)) < 1e-4

    # resume: drop the last checkpoint and the model; the run continues from step 3
    (run_dir,) = Path(one.run_root).glob("*/")
    shutil.rmtree(run_dir / "checkpoint_00000006")
    before = _weights(one)
    shutil.rmtree(one.output_dir)
    resumed = run(one)
    assert resumed["resumed_from_step"] == 3 and resumed["feature_cache_used"] == 1
    assert _max_diff(before, _weights(one)) < 1e-6
    assert _history(one) == pytest.approx([h for h in _history(two)], rel=1e-4, abs=1e-5)
    assert m1["loss_last"] == pytest.approx(resumed["loss_last"], rel=1e-6)
