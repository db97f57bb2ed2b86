"""tasks/clip/reinforced.py: augmentation sampling, bit-exact views, storage dtypes, the reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.clip.reinforced import (
    MANIFEST_FILE,
    AugParams,
    AugSampling,
    Manifest,
    ReinforcedDataError,
    ReinforcedReader,
    ReinforcedRow,
    ViewConfig,
    apply_aug,
    decode_embeddings,
    encode_embeddings,
    rows_to_table,
    sample_augs,
    storage_tolerance,
    write_part,
)

VIEW = ViewConfig((16, 16), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bicubic")


def _image(w: int = 40, h: int = 30, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_sample_augs_follow_random_resized_crop_rules() -> None:
    cfg = AugSampling(scale=(0.3, 0.6), ratio=(0.5, 2.0), flip_prob=0.5)
    augs = sample_augs(np.random.default_rng(1), 200, 100, 200, cfg)
    assert len(augs) == 200
    for a in augs:
        assert a.top >= 0 and a.top + a.height <= 100 and a.left >= 0 and a.left + a.width <= 200
        area = a.height * a.width / (200 * 100)
        assert 0.3 - 0.02 <= area <= 0.6 + 0.02  # rounding of w, h
        assert 0.5 - 0.05 <= a.width / a.height <= 2.0 + 0.05
    flips = sum(a.flip for a in augs)
    assert 60 < flips < 140  # p = 0.5 over 200 draws
    # the same seed draws the same boxes; another seed others
    assert sample_augs(np.random.default_rng(1), 200, 100, 200, cfg) == augs
    assert sample_augs(np.random.default_rng(2), 200, 100, 200, cfg) != augs


def test_sample_augs_fall_back_to_a_centre_crop_clamped_to_the_ratio() -> None:
    # a 1000 x 10 strip: no box with ratio <= 4/3 and area >= 90% fits, so torchvision's
    # fallback takes the full height and width = round(10 * 4/3), centred
    (a,) = sample_augs(np.random.default_rng(0), 1000, 10, 1, AugSampling(scale=(0.9, 1.0)))
    assert (a.top, a.height, a.width) == (0, 10, 13)
    assert a.left == (1000 - 13) // 2


def test_bad_sampling_inputs_name_the_value() -> None:
    with pytest.raises(ValueError, match="scale"):
        AugSampling(scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="image size 0x5"):
        sample_augs(np.random.default_rng(0), 0, 5, 1)


def test_apply_aug_is_crop_resize_flip_normalise() -> None:
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode

    img = _image()
    aug = AugParams(top=3, left=5, height=20, width=24, flip=True)
    got = apply_aug(img, aug, VIEW)
    assert got.shape == (3, 16, 16) and got.dtype == torch.float32
    crop = img.crop((5, 3, 29, 23)).resize((16, 16), Image.Resampling.BICUBIC)
    want = F.normalize(
        F.to_tensor(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)), VIEW.mean, VIEW.std
    )
    assert torch.equal(got, want)
    # the flip is really applied: unflipped differs, and equals its own mirror
    plain = apply_aug(img, AugParams(3, 5, 20, 24, False), VIEW)
    assert not torch.equal(plain, got) and torch.equal(plain.flip(-1), got)
    # same bits as torchvision's RandomResizedCrop would produce for that box
    rrc = F.resized_crop(img, 3, 5, 20, 24, [16, 16], InterpolationMode.BICUBIC, antialias=True)
    assert torch.equal(F.normalize(F.to_tensor(rrc), VIEW.mean, VIEW.std), plain)


def test_apply_aug_reads_open_clip_preprocess_cfg_and_converts_to_rgb() -> None:
    cfg = {"size": [16, 16], "mean": VIEW.mean, "std": VIEW.std, "interpolation": "bicubic"}
    img = _image().convert("L")
    aug = AugParams(0, 0, 30, 40, False)
    assert torch.equal(apply_aug(img, aug, cfg), apply_aug(img.convert("RGB"), aug, VIEW))
    with pytest.raises(ValueError, match="does not fit a 40x30 image"):
        apply_aug(img, AugParams(0, 0, 31, 40, False), VIEW)
    with pytest.raises(ValueError, match="interpolation"):
        ViewConfig.from_preprocess_cfg({**cfg, "interpolation": "lanczos9"})


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_storage_dtypes_round_trip_within_their_tolerance(dtype: str) -> None:
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    back = decode_embeddings(encode_embeddings(x, dtype), dtype)  # type: ignore[arg-type]
    assert back.dtype == np.float32
    rel = np.abs(back - x) / np.abs(x)
    assert rel.max() <= storage_tolerance(dtype)  # type: ignore[arg-type]
    if dtype != "fp32":
        assert not np.array_equal(back, x)  # really stored narrower
    if dtype == "bf16":  # matches torch's own bf16 rounding
        want = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
        assert np.array_equal(back, want)


def _dataset(root: Path, dtype: str, k: int = 3, d: int = 4) -> dict[str, ReinforcedRow]:
    rng = np.random.default_rng(0)
    rows = {
        uid: ReinforcedRow(
            uid,
            sample_augs(rng, 40, 30, k),
            rng.normal(size=(k, d)).astype(np.float32),
            {
                "txt": rng.normal(size=d).astype(np.float32),
                "syn": None if i == 1 else rng.normal(size=d).astype(np.float32),
            },
        )
        for i, uid in enumerate(["a", "b", "c"])
    }
    parts = ("parts/part-000.parquet", "parts/part-001.parquet")
    write_part(root / parts[0], rows_to_table([rows["a"], rows["b"]], k, d, dtype, ["txt", "syn"]))  # type: ignore[arg-type]
    write_part(root / parts[1], rows_to_table([rows["c"]], k, d, dtype, ["txt", "syn"]))  # type: ignore[arg-type]
    m = Manifest(
        teacher="t",
        teacher_weights_sha256="0" * 64,
        k=k,
        embed_dim=d,
        dtype=dtype,  # type: ignore[arg-type]
        view=VIEW,
        sampling=AugSampling(),
        caption_fields=("txt", "syn"),
        seed=0,
        source_shards="s",
        parts=parts,
        rows=3,
    )
    (root / MANIFEST_FILE).write_text(json.dumps(m.to_json()))
    return rows


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_reader_returns_what_was_written(tmp_path: Path, dtype: str) -> None:
    rows = _dataset(tmp_path, dtype)
    reader = ReinforcedReader(tmp_path)
    assert reader.manifest.k == 3 and reader.manifest.view == VIEW and len(reader) == 3
    got = reader.lookup(["c", "a", "b"])
    tol = storage_tolerance(dtype)  # type: ignore[arg-type]
    for uid, row in rows.items():
        assert got[uid].augs == row.augs
        assert got[uid].image_emb.dtype == np.float32 and got[uid].image_emb.shape == (3, 4)
        np.testing.assert_allclose(got[uid].image_emb, row.image_emb, rtol=tol, atol=0)
        np.testing.assert_allclose(got[uid].text_emb["txt"], row.text_emb["txt"], rtol=tol, atol=0)
    assert got["b"].text_emb["syn"] is None and got["a"].text_emb["syn"] is not None


def test_reader_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ReinforcedDataError, match="no manifest.json"):
        ReinforcedReader(tmp_path)
    _dataset(tmp_path, "fp16")
    with pytest.raises(ReinforcedDataError, match="uid 'zz'"):
        ReinforcedReader(tmp_path).lookup(["a", "zz"])
    with pytest.raises(ReinforcedDataError, match=r"need 3 and \(3, 4\)"):
        rows_to_table([ReinforcedRow("x", [], np.zeros((3, 4), np.float32), {})], 3, 4, "fp32", [])
