"""The feature store: a pure cache (round trip, missing ids, two writers, clear errors)."""

from __future__ import annotations

import hashlib
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.clip import build_random
from tasks.clip.featurestore import (
    FeatureStore,
    FeatureStoreError,
    content_id,
    default_store_root,
    encode_cached,
    encode_missing,
)
from tasks.clip.locked import split_image


def _feats(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_content_id_is_sha1_of_bytes_and_utf8() -> None:
    assert content_id(b"\x89PNG") == hashlib.sha1(b"\x89PNG").hexdigest()
    assert content_id("café") == hashlib.sha1("café".encode()).hexdigest()
    assert content_id("a") != content_id("b")


def test_round_trip_and_missing_ids(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path, "k1")
    feats = _feats(3, 5)
    store.add(["a", "b", "c"], feats)
    got, found = FeatureStore(tmp_path, "k1").lookup(["c", "x", "a"])  # a fresh reader
    assert found.tolist() == [True, False, True]
    np.testing.assert_array_equal(got[0], feats[2])
    np.testing.assert_array_equal(got[1], np.zeros(5, np.float32))
    np.testing.assert_array_equal(got[2], feats[0])
    assert got.dtype == np.float32
    assert FeatureStore(tmp_path, "other").lookup(["a"])[1].tolist() == [False]  # keys separate
    assert list((tmp_path / "k1").glob(".*")) == []  # no temporary files left behind


def test_widths_must_agree(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path, "k")
    store.add(["a"], _feats(1, 4))
    with pytest.raises(FeatureStoreError, match="width"):
        FeatureStore(tmp_path, "k").add(["b"], _feats(1, 3))
    with pytest.raises(FeatureStoreError, match=r"\(n, d\)"):
        store.add(["a", "b"], _feats(1, 4))


def _writer(root: str, start: int) -> None:
    store = FeatureStore(Path(root), "shared")
    for j in range(start, start + 20, 5):
        store.add([f"id{i}" for i in range(j, j + 5)], np.full((5, 3), j, np.float32))


def test_two_writers_at_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), s)) for s in (0, 10)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ids = [f"id{i}" for i in range(30)]
    got, found = FeatureStore(tmp_path, "shared").lookup(ids)
    assert found.all()  # ids 10..19 were written by both: either copy is the same
    assert got[:, 0].tolist() == [float(i - i % 5) for i in range(30)]
    assert len(list((tmp_path / "shared").glob("part-*.parquet"))) == 8


def test_a_reader_sees_parts_written_after_it_opened(tmp_path: Path) -> None:
    reader = FeatureStore(tmp_path, "k")
    assert reader.lookup(["a"])[1].tolist() == [False]
    FeatureStore(tmp_path, "k").add(["a"], _feats(1, 2))
    assert reader.lookup(["a"])[1].tolist() == [True]


def test_a_bad_store_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(FeatureStoreError, match=str(not_a_dir)):
        FeatureStore(not_a_dir, "k")
    (tmp_path / "root" / "k").mkdir(parents=True)
    bad = tmp_path / "root" / "k" / "part-1.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(FeatureStoreError, match=str(bad)):
        FeatureStore(tmp_path / "root", "k").lookup(["a"])


def test_default_root_follows_the_settings_root_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.settings import get_settings

    monkeypatch.delenv("CLIPMILL_FEATURE_STORE", raising=False)
    assert default_store_root() == Path(get_settings().root) / "data" / "features"
    monkeypatch.setenv("CLIPMILL_FEATURE_STORE", str(tmp_path / "shared"))
    assert default_store_root() == tmp_path / "shared"


def test_encode_cached_is_a_pure_cache(tmp_path: Path) -> None:
    model, _, _ = build_random("random:clipmill-tiny-vit")
    split = split_image(model, {"size": 64})
    images = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ids = ["i0", "i1", "i2", "i1", "i4"]  # a repeated id is computed once
    made: list[list[int]] = []

    def make_inputs(idx: list[int]) -> torch.Tensor:
        made.append(list(idx))
        return images[idx]

    with torch.no_grad():
        want = model.encode_image(images)
    want[3] = want[1]
    store = FeatureStore(tmp_path, split.key)
    with torch.no_grad():
        torch.testing.assert_close(encode_cached(split, None, ids, make_inputs, 2), want)
        made.clear()
        torch.testing.assert_close(encode_cached(split, store, ids, make_inputs, 2), want)
        assert sorted(i for b in made for i in b) == [0, 1, 2, 4]
        made.clear()
        torch.testing.assert_close(encode_cached(split, store, ids, make_inputs, 2), want)
    assert made == []  # everything came from the store
    _, computed = encode_missing(split, store, ["i0", "new"], lambda idx: images[:1], 8)
    assert computed == 1
