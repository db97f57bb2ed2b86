"""Test data for the distillation / HQ-CLIP / inheritance runs: shards with HQ-CLIP fields, a
tiny teacher folder, a reinforced dataset over the shards, and an interrupted-then-resumed run."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tasks.io.wds import write_tar

from .shards import COLOURS, SHAPES, _image


def write_hq_shards(folder: Path, n_shards: int = 2, per_shard: int = 32, seed: int = 0) -> Path:
    """Like tests/train/shards.py, plus the four HQ-CLIP fields in each JSON side file (every
    fourth sample has no negative description, to exercise the mask)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    uid = 0
    for s in range(n_shards):
        samples = []
        for _ in range(per_shard):
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            other = rng.choice([c for c in COLOURS if c != colour])
            key = f"{uid:012x}"
            meta = {
                "uid": key,
                "recaption": f"a picture of a {shape} coloured {colour}",
                "long_positive": f"a {colour} {shape} on a dark background",
                "long_negative": "" if uid % 4 == 3 else f"a {other} {shape} on a dark background",
                "short_positive": [colour, shape],
                "short_negative": [other],
            }
            image = _image(COLOURS[colour], shape, rng, 48)
            samples.append((key, {"jpg": image, "txt": f"a {colour} {shape}", "json": meta}))
            uid += 1
        write_tar(folder / f"{s:05d}.tar", samples)
    return folder


def write_reinforced(root: Path, shards: Path, k: int = 2, d: int = 16, seed: int = 0) -> Path:
    """A reinforced dataset over `shards` in the reinforce stage's layout (tasks/clip/reinforced.py):
    K stored boxes per sample and random unit teacher embeddings (a code-path fixture)."""
    import io

    import numpy as np
    import webdataset as wds
    from PIL import Image

    from tasks.clip.reinforced import (
        MANIFEST_FILE,
        PARTS_DIR,
        AugSampling,
        Manifest,
        ReinforcedRow,
        ViewConfig,
        rows_to_table,
        sample_augs,
        write_part,
    )

    rng = np.random.default_rng(seed)
    fields = ("txt", "recaption")
    parts = []
    total = 0
    (root / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    for shard in sorted(shards.glob("*.tar")):
        rows = []
        for sample in wds.tariterators.tarfile_samples([{"url": str(shard)}]):
            w, h = Image.open(io.BytesIO(sample["jpg"])).size
            emb = rng.standard_normal((k + 2, d)).astype(np.float32)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            rows.append(
                ReinforcedRow(
                    sample["__key__"],
                    sample_augs(rng, w, h, k, AugSampling(scale=(0.3, 1.0), flip_prob=0.5)),
                    emb[:k],
                    {"txt": emb[k], "recaption": emb[k + 1]},
                )
            )
        part = f"{PARTS_DIR}/part-{shard.stem}.parquet"
        write_part(root / part, rows_to_table(rows, k, d, "fp32", fields))
        parts.append(part)
        total += len(rows)
    manifest = Manifest(
        teacher="random:test",
        teacher_weights_sha256="0" * 64,
        k=k,
        embed_dim=d,
        dtype="fp32",
        view=ViewConfig((32, 32), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        sampling=AugSampling(scale=(0.3, 1.0), flip_prob=0.5),
        caption_fields=fields,
        seed=seed,
        source_shards=str(shards),
        parts=tuple(parts),
        rows=total,
        extra={"logit_scale": 50.0},
    )
    (root / MANIFEST_FILE).write_text(json.dumps(manifest.to_json()))
    return root


def interrupted_then_resumed(params: Any, monkeypatch: Any, stop_after: int = 5) -> dict:
    """Run, fail after step `stop_after` (checkpoint at checkpoint_every is on disk), run again:
    the second run resumes; returns its metrics."""
    import pytest

    import tasks.train.loop as loop
    from tasks.train.stage import run

    real = loop.train_steps

    def stopping(*args: Any, on_step: Any, **kwargs: Any) -> None:
        def hook(r: Any) -> None:
            on_step(r)
            if r.step == stop_after:
                raise KeyboardInterrupt("planted stop")

        real(*args, on_step=hook, **kwargs)

    monkeypatch.setattr(loop, "train_steps", stopping)
    with pytest.raises(KeyboardInterrupt, match="planted stop"):
        run(params)
    monkeypatch.setattr(loop, "train_steps", real)
    return run(params)


def weights(folder: str | Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def same_weights(a: str | Path, b: str | Path, atol: float = 0.0) -> bool:
    """Bitwise equal (atol 0) or within `atol` everywhere."""
    import torch

    wa, wb = weights(a), weights(b)
    if wa.keys() != wb.keys():
        return False
    if atol == 0:
        return all(torch.equal(wa[k], wb[k]) for k in wa)
    return all(torch.allclose(wa[k], wb[k], rtol=0, atol=atol) for k in wa)
