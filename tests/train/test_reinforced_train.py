"""Offline distillation from a reinforced dataset: each stored augmentation is rebuilt bit-exactly
from its parameters, the right stored embeddings go with it, and a short run trains and resumes
exactly. The stored teacher embeddings are random unit vectors (a code-path fixture)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from .conftest import tiny_params
from .distill_support import (
    interrupted_then_resumed,
    same_weights,
    write_hq_shards,
    write_reinforced,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reinforced")
    shards = write_hq_shards(root / "shards")
    return {"shards": shards, "reinforced": write_reinforced(root / "reinforce", shards, k=3)}


def _views(data: dict[str, Path], pick: str) -> tuple[object, list[dict], object]:
    from tasks.clip import build_model
    from tasks.train.data import Picked, list_shards, sample_seed, worker_samples
    from tasks.train.reinforced_views import ReinforcedViews

    built = build_model("clipmill-tiny-vit")
    views = ReinforcedViews(
        str(data["reinforced"]), built.preprocess_cfg, [None, "recaption"], pick, built.tokenizer
    )
    samples = next(
        worker_samples(
            list_shards(str(data["shards"])),
            batch_size=8,
            rank=0,
            world=1,
            seed=0,
            resample=False,
            buffer=8,
            start_step=9,  # 72 samples in: the second pass over the 64 (epoch 1)
        )
    )
    seeds = [sample_seed(0, s["__index__"]) for s in samples]
    fields = ["txt"] * len(samples)
    out = views(samples, Picked(seeds, fields, ["x"] * len(samples)))
    return views, samples, out


@pytest.mark.parametrize("pick", ["random", "epoch"])
def test_stored_views_rebuilt_bit_exactly(data: dict[str, Path], pick: str) -> None:
    import torch
    from PIL import Image

    from tasks.clip.reinforced import apply_aug

    views, samples, out = _views(data, pick)
    recs = views.reader.lookup([s["__key__"] for s in samples])  # type: ignore[attr-defined]
    for i, s in enumerate(samples):
        rec, k = recs[s["__key__"]], int(out["aug_index"][i])
        if pick == "epoch":
            assert k == (s["__index__"] // 64) % 3
        want = apply_aug(Image.open(io.BytesIO(s["jpg"])), rec.augs[k], views.view)  # type: ignore[attr-defined]
        assert torch.equal(out["images"][i], want)
        assert torch.equal(out["teacher_image_emb:0"][i], torch.from_numpy(rec.image_emb[k]))
        assert torch.equal(out["teacher_text_emb:0:0"][i], torch.from_numpy(rec.text_emb["txt"]))
        recap = torch.from_numpy(rec.text_emb["recaption"])
        assert torch.equal(out["teacher_text_emb:0:1"][i], recap)
    assert out["texts:1"].shape[0] == len(samples)
    if pick == "random":
        assert len(set(out["aug_index"].tolist())) > 1  # not always the same view


def test_offline_run_trains_and_resumes_exactly(
    tmp_path: Path, data: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.train.stage import run

    distill = {"mode": "offline", "reinforced_dir": str(data["reinforced"]), "w0": 0.5}
    p = tiny_params(tmp_path / "a", data["shards"], steps=6, checkpoint_every=3, distill=distill)
    run(p)
    off = tiny_params(tmp_path / "off", data["shards"], steps=6, checkpoint_every=3)
    run(off)
    assert not same_weights(p.output_dir, off.output_dir, atol=1e-4)
    resumed = p.model_copy(
        update={"run_root": str(tmp_path / "b" / "runs"), "output_dir": str(tmp_path / "b" / "m")}
    )
    assert interrupted_then_resumed(resumed, monkeypatch, stop_after=4)["resumed_from_step"] == 3
    assert same_weights(p.output_dir, resumed.output_dir)


def test_missing_reinforced_dir_is_named(tmp_path: Path, data: dict[str, Path]) -> None:
    from tasks.train.stage import run

    distill = {"mode": "offline", "reinforced_dir": str(tmp_path / "absent")}
    with pytest.raises(Exception, match="absent"):
        run(tiny_params(tmp_path, data["shards"], distill=distill))
