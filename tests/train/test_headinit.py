"""The heads' data-driven init (tasks/train/headinit.py): CCA and the text-space regression
recover a planted relation, the params refuse them where features are not stored, and the stage
starts its heads from them (and resumes without recomputing)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .test_features import lit_params, store  # noqa: F401  (the fixture, used by name)


def _planted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (n, 40) and y (n, 24): each a different random linear map of the same 6-d latent,
    plus noise (x also carries 10 loud dimensions of its own that y knows nothing about)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 6))
    px, py = rng.normal(size=(6, 40)), rng.normal(size=(6, 24))
    x = z @ px + 0.1 * rng.normal(size=(n, 40)) + 3.0
    x[:, :10] += 5.0 * rng.normal(size=(n, 10))  # loud, uncorrelated with y
    y = z @ py + 0.1 * rng.normal(size=(n, 24))
    return x, y, z


def test_cca_recovers_a_planted_linear_relation() -> None:
    """Six canonical correlations near 1, the rest near 0; held-out pairs find each other by
    cosine in the shared space, which the loud private dimensions of x would spoil for a
    random or PCA projection."""
    from tasks.train.headinit import cca_projections

    x, y, _ = _planted(2200, 0)
    x, xt, y, yt = x[:2000], x[2000:], y[:2000], y[2000:]  # fit on 2,000 pairs, 200 held out
    a, b, corr = cca_projections(x, y, 8, ridge=1e-3, center=True, power=1.0)
    assert a.shape == (8, 40) and b.shape == (8, 24)
    assert corr[:6].min() > 0.97
    assert corr[6:].max() < 0.2

    def unit(m: np.ndarray) -> np.ndarray:
        return m / np.linalg.norm(m, axis=1, keepdims=True)

    sims = unit(xt @ a.T) @ unit(yt @ b.T).T
    r1 = float((sims.argmax(axis=1) == np.arange(200)).mean())
    assert r1 > 0.8, r1
    # the same projections of x alone (no y): a random map of the same size finds far fewer
    rand = np.random.default_rng(2).normal(size=(8, 40))
    sims_rand = unit(xt @ rand.T) @ unit(yt @ b.T).T
    assert float((sims_rand.argmax(axis=1) == np.arange(200)).mean()) < 0.2


def test_centre_removes_the_shared_offset_and_power_reweights() -> None:
    from tasks.train.headinit import cca_projections

    x, y, _ = _planted(1000, 3)
    a, b, corr = cca_projections(x, y, 8, ridge=1e-3, center=True, power=0.0)
    assert np.abs(a @ x.mean(axis=0)).max() < 1e-8  # the mean image maps to the origin
    a2, _, _ = cca_projections(x, y, 8, ridge=1e-3, center=True, power=2.0)
    ratio = np.linalg.norm(a2, axis=1) / np.linalg.norm(a, axis=1)
    np.testing.assert_allclose(ratio, corr**2, rtol=1e-6)


def test_caption_weights_follow_pick_caption() -> None:
    from tasks.train.headinit import caption_weights

    sample = {"txt": b"alt", "json": json.dumps({"recaption": ["r1", "r2"]}).encode()}
    got = dict(caption_weights(sample, {"txt": 0.5, "recaption": 0.5}))
    assert got == pytest.approx({"alt": 0.5, "r1": 0.25, "r2": 0.25})
    assert caption_weights({"txt": b"alt"}, {"recaption": 1.0}) == [("alt", 1.0)]


def test_params_refuse_cca_without_stored_features(tmp_path: Path, shards_dir: Path) -> None:
    with pytest.raises(ValueError, match="head_init.method 'cca'"):
        lit_params(tmp_path, shards_dir, head_init={"method": "cca"}, feature_cache=False)
    with pytest.raises(ValueError, match="head_init.method 'cca'"):
        lit_params(tmp_path, shards_dir, head_init={"method": "cca"}, lock_text=False)
    plain = lit_params(tmp_path, shards_dir)
    assert "head_init" not in plain.fingerprint_fields()  # the default keeps old run folders
    cca = lit_params(tmp_path, shards_dir, head_init={"method": "cca"})
    assert cca.fingerprint_fields()["head_init"]["method"] == "cca"


def _history(params: Any) -> list[float]:
    (summary,) = Path(params.run_root).glob("*/summary.json")
    return [loss for _, loss in json.loads(summary.read_text())["history"]]


KW: dict[str, Any] = dict(caption_fields={"txt": 1.0}, lr=1e-4, steps=4, checkpoint_every=2)


def test_stage_starts_the_heads_from_the_text_space_regression(
    tmp_path: Path,
    shards_dir: Path,
    store: Path,  # noqa: F811
) -> None:
    """The train stage with head_init regress (the teacher's) reports the init, and its first
    step's loss is far below ln(batch) = 2.77, where unaligned heads start (the random init
    measured 2.78 here): the heads already pair images with their captions."""
    from tasks.train.stage import run

    p = lit_params(tmp_path, shards_dir, head_init={"method": "regress", "ridge": 0.1}, **KW)
    m = run(p)
    assert m["head_init_pairs"] == 96 and 0.5 < m["head_init_text_variance"] <= 1.0
    assert _history(p)[0] < math.log(16) - 0.8, _history(p)


@pytest.mark.slow
def test_stage_cca_against_random_and_resume(
    tmp_path: Path,
    shards_dir: Path,
    store: Path,  # noqa: F811
) -> None:
    """Against the random init on the same data (first loss 1.38 vs 2.78 measured), and a run
    resumed after its last checkpoint was dropped continues from the checkpointed heads (no
    second init) to the same weights."""
    from safetensors.torch import load_file

    from tasks.train.stage import run

    rand = lit_params(tmp_path / "rand", shards_dir, **KW)
    cca = lit_params(tmp_path / "cca", shards_dir, head_init={"method": "cca", "ridge": 0.1}, **KW)
    m_rand = run(rand)
    run(cca)
    assert "head_init_corr_top" not in m_rand
    first_rand, first_cca = _history(rand)[0], _history(cca)[0]
    assert first_cca < first_rand - 0.8, (first_cca, first_rand)

    weights = load_file(str(Path(cca.output_dir) / "model.safetensors"))
    (run_dir,) = Path(cca.run_root).glob("*/")
    shutil.rmtree(run_dir / "checkpoint_00000004")
    shutil.rmtree(cca.output_dir)
    resumed = run(cca)
    assert resumed["resumed_from_step"] == 2
    assert "head_init_corr_top" not in resumed  # not recomputed: the checkpoint holds it
    again = load_file(str(Path(cca.output_dir) / "model.safetensors"))
    assert max(float((again[k] - weights[k]).abs().max()) for k in weights) < 1e-6


def test_regress_maps_images_onto_the_texts_principal_space() -> None:
    """`regress`: the text head is the top principal directions of y (orthonormal rows: the
    text geometry kept), the image head the ridge regression onto them, so held-out images
    land next to their own captions; with a huge ridge they do not."""
    from tasks.train.headinit import regress_projections

    x, y, _ = _planted(2200, 0)
    x, xt, y, yt = x[:2000], x[2000:], y[:2000], y[2000:]
    a, b, share = regress_projections(x, y, 8, ridge=1e-4, center=False)
    np.testing.assert_allclose(b @ b.T, np.eye(8), atol=1e-8)
    assert share[:6].sum() > 0.99 and share[6:].sum() < 0.01  # the 6-d latent's variance

    def r1(a: np.ndarray) -> float:
        ex = xt @ a.T
        ey = yt @ b.T
        ex /= np.linalg.norm(ex, axis=1, keepdims=True)
        ey /= np.linalg.norm(ey, axis=1, keepdims=True)
        return float(((ex @ ey.T).argmax(axis=1) == np.arange(200)).mean())

    assert r1(a) > 0.8, r1(a)
    a_far, _, _ = regress_projections(x, y, 8, ridge=1e4, center=False)
    assert r1(a_far) < r1(a) - 0.2
