"""The reinforce stage on tiny shards with a tiny random teacher: layout, the train-side round trip
(views rebuilt bit-exactly from stored parameters, teacher re-embedding within dtype tolerance),
resume, bad rows and params mistakes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.clip.reinforced import (
    MANIFEST_FILE,
    ReinforcedReader,
    apply_aug,
    sample_augs,
    storage_tolerance,
)
from tasks.io.wds import read_images, write_tar
from tasks.reinforce.embed import uid_rng
from tasks.reinforce.params import ReinforceParams
from tasks.reinforce.stage import ReinforceError, run
from tests.support.tinymodel import save_tiny_model
from tests.train.shards import write_shards

FIELDS = ["txt", "recaption", "recaption_long_negative"]  # the last is on no sample


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("reinforce")
    shards = write_shards(root / "shards", n_shards=2, per_shard=6, size=40)
    return shards, save_tiny_model(root / "teacher", seed=1)


def _params(tmp: Path, inputs: tuple[Path, Path], **over: Any) -> ReinforceParams:
    shards, teacher = inputs
    base: dict[str, Any] = dict(
        shards=str(shards),
        teacher=str(teacher),
        output_dir=str(tmp / "reinforce"),
        k=3,
        caption_fields=FIELDS,
        batch_size=8,
    )
    base.update(over)
    return ReinforceParams(**base)


def _samples(shards: Path) -> dict[str, tuple[Image.Image, dict[str, Any]]]:
    out = {}
    for shard in sorted(shards.glob("*.tar")):
        for key, data, parts in read_images(shard):
            out[key] = (Image.open(io.BytesIO(data)).convert("RGB"), parts)
    return out


def _independent_view(image: Image.Image, aug: Any, view: Any) -> torch.Tensor:
    """The view written out by hand with PIL (not apply_aug): crop, resize, flip, normalise."""
    box = (aug.left, aug.top, aug.left + aug.width, aug.top + aug.height)
    out = image.crop(box).resize(view.size[::-1], Image.Resampling.BICUBIC)
    if aug.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    x = torch.from_numpy(np.asarray(out, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(view.mean)[:, None, None], torch.tensor(view.std)[:, None, None]
    return (x - mean) / std


def test_round_trip_rebuilds_the_embedded_views(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    from tasks.clip import load_clip

    p = _params(tmp_path, inputs, dtype="fp16")
    metrics = run(p)
    assert metrics["rows"] == 12 and metrics["views"] == 36 and metrics["parts_resumed"] == 0
    reader = ReinforcedReader(p.output_dir)
    m = reader.manifest
    assert (m.k, m.dtype, m.caption_fields, m.rows) == (3, "fp16", tuple(FIELDS), 12)
    assert len(m.teacher_weights_sha256) == 64 and m.extra["logit_scale"] > 0
    model, _, tokenizer = load_clip(str(inputs[1]))
    samples = _samples(inputs[0])
    recs = reader.lookup(list(samples))
    tol = storage_tolerance("fp16")
    for uid, (image, parts) in samples.items():
        rec = recs[uid]
        # the stored parameters are the seeded draw for this uid
        assert rec.augs == sample_augs(uid_rng(0, uid), image.width, image.height, 3, m.sampling)
        views = torch.stack([apply_aug(image, a, m.view) for a in rec.augs])
        hand = torch.stack([_independent_view(image, a, m.view) for a in rec.augs])
        assert torch.allclose(views, hand, atol=1e-6)  # apply_aug is what it says
        with torch.no_grad():
            again = model.encode_image(views, normalize=True).numpy()
        np.testing.assert_allclose(rec.image_emb, again, rtol=0, atol=2 * tol)
        # another view of the same image does not match: the check can fail
        other = apply_aug(image, sample_augs(uid_rng(9, uid), 40, 40, 1, m.sampling)[0], m.view)
        if not torch.equal(other, views[0]):
            with torch.no_grad():
                diff = model.encode_image(other[None], normalize=True).numpy()[0]
            assert np.abs(diff - rec.image_emb[0]).max() > 2 * tol
        caption = json.loads(parts["json"])["recaption"]
        with torch.no_grad():
            want = model.encode_text(tokenizer([parts["txt"].decode(), caption]), normalize=True)
        np.testing.assert_allclose(rec.text_emb["txt"], want[0].numpy(), rtol=0, atol=2 * tol)
        np.testing.assert_allclose(rec.text_emb["recaption"], want[1].numpy(), rtol=0, atol=2 * tol)
        assert rec.text_emb["recaption_long_negative"] is None


def test_rerun_resumes_and_a_lost_part_is_rebuilt_the_same(
    tmp_path: Path, inputs: tuple[Path, Path]
) -> None:
    p = _params(tmp_path, inputs, dtype="bf16", k=2)
    run(p)
    first = ReinforcedReader(p.output_dir)
    uids = list(_samples(inputs[0]))
    before = first.lookup(uids)
    assert run(p)["parts_resumed"] == 2
    lost = tmp_path / "reinforce" / first.manifest.parts[0]
    lost.unlink()  # a run killed before this part was written
    again = run(p)
    assert again["parts_resumed"] == 1 and lost.is_file()
    after = ReinforcedReader(p.output_dir).lookup(uids)
    for u in uids:
        assert after[u].augs == before[u].augs
        assert np.array_equal(after[u].image_emb, before[u].image_emb)
    # other params: a new fingerprint folder, the old one removed
    run(_params(tmp_path, inputs, dtype="bf16", k=2, seed=1))
    assert len(list((tmp_path / "reinforce" / "parts").iterdir())) == 1
    assert ReinforcedReader(p.output_dir).lookup(uids[:1])[uids[0]].augs != before[uids[0]].augs


def test_an_undecodable_image_is_skipped_and_listed(
    tmp_path: Path, inputs: tuple[Path, Path]
) -> None:
    shards = tmp_path / "bad"
    shards.mkdir()
    good = next(read_images(sorted(inputs[0].glob("*.tar"))[0]))
    write_tar(
        shards / "00000.tar",
        [("broken", {"jpg": b"not a jpeg", "txt": "x"}), (good[0], good[2])],
    )
    p = _params(tmp_path, (shards, inputs[1]))
    metrics = run(p)
    assert metrics["rows"] == 1 and metrics["skipped_undecodable"] == 1
    manifest = json.loads((tmp_path / "reinforce" / MANIFEST_FILE).read_text())
    assert manifest["extra"]["skipped_uids"] == ["broken"]


def test_params_mistakes_stop_before_any_work(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    with pytest.raises(ReinforceError, match="shards .*no \\*.tar"):
        run(_params(tmp_path, (tmp_path / "none", inputs[1])))
    with pytest.raises(ReinforceError, match="teacher .*model.safetensors"):
        run(_params(tmp_path, (inputs[0], tmp_path)))
    with pytest.raises(ValueError, match="caption_fields"):
        _params(tmp_path, inputs, caption_fields=["txt", "txt"])
    with pytest.raises(ValueError, match="augment.scale_min"):
        _params(tmp_path, inputs, augment={"scale_min": 0.9, "scale_max": 0.5})
    assert not (tmp_path / "reinforce").exists()
