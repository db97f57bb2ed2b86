"""Offline distillation inputs: each sample's stored augmentation rebuilt from its parameters,
with the teacher embeddings the reinforce stage stored for that view and for its caption.

Per sample and step one of the K stored augmentations is used: `random` draws it with the
sample's own seed (so a resumed run draws the same), `epoch` takes (pass over the data) % K, the
pass being the sample's global stream index // the dataset's size. The student's view is
`tasks.clip.reinforced.apply_aug` of that box at the STUDENT's size and normalisation (the teacher
embedded the same box at its own), bit-exact and without randomness.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from typing import Any

from tasks.train.data import DataError, Picked
from tasks.train.teachers import type_captions


class ReinforcedViews:
    """Batch extras: `images` (the rebuilt views), `teacher_image_emb:0`, `teacher_text_emb:0:<c>`
    and `texts:<c>` (student tokens of caption field c); also `aug_index` (the view used)."""

    replaces_images = True

    def __init__(
        self,
        root: str,
        preprocess_cfg: dict[str, Any],
        types: Sequence[str | None],
        aug_pick: str,
        tokenizer: Any,
    ) -> None:
        from tasks.clip.reinforced import ReinforcedReader, ViewConfig

        self.reader = ReinforcedReader(root)
        self.view = ViewConfig.from_preprocess_cfg(preprocess_cfg)
        self.types, self.aug_pick, self.tokenizer = list(types), aug_pick, tokenizer
        self.size = max(len(self.reader), 1)

    def pick(self, sample: dict[str, Any], seed: int, k: int) -> int:
        if self.aug_pick == "random":
            return random.Random(seed ^ 0x5EED).randrange(k)
        return (int(sample["__index__"]) // self.size) % k

    def __call__(self, samples: list[dict[str, Any]], picked: Picked) -> dict[str, Any]:
        import torch
        from PIL import Image

        from tasks.clip.reinforced import apply_aug
        from tasks.io.wds import image_ext

        recs = self.reader.lookup([str(s["__key__"]) for s in samples])
        views, t_img, index = [], [], []
        for s, seed in zip(samples, picked.seeds, strict=True):
            rec = recs[str(s["__key__"])]
            k = self.pick(s, seed, len(rec.augs))
            image = Image.open(io.BytesIO(s[image_ext(s) or "jpg"]))
            views.append(apply_aug(image, rec.augs[k], self.view))
            t_img.append(torch.from_numpy(rec.image_emb[k]))
            index.append(k)
        out: dict[str, Any] = {
            "images": torch.stack(views),
            "teacher_image_emb:0": torch.stack(t_img),
            "aug_index": torch.tensor(index),
        }
        for c, f in enumerate(self.types):
            fields, captions = type_captions(samples, picked, f)
            embs = []
            for s, field in zip(samples, fields, strict=True):
                text = recs[str(s["__key__"])].text_emb
                # No fallback to the alt text's embedding: the student's caption IS this field's,
                # so a teacher embedding of another text would pair unlike with unlike.
                emb = text.get(field)
                if emb is None:
                    raise DataError(
                        f"sample {s['__key__']}: the reinforced dataset {self.reader.root} stores "
                        f"no embedding of caption field {field!r}; add it to the reinforce "
                        "stage's caption_fields (params/reinforce.yaml) and rerun reinforce"
                    )
                embs.append(torch.from_numpy(emb))
            out[f"teacher_text_emb:0:{c}"] = torch.stack(embs)
            if f is not None:
                out[f"texts:{c}"] = self.tokenizer(captions)
        return out
