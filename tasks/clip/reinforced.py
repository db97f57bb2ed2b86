"""MobileCLIP-style reinforced data: stored augmentation parameters, their views, and the reader.

A reinforced dataset (apple/ml-mobileclip-dr) keeps, per sample, K image augmentations as their
*parameters* (RandomResizedCrop box, flip) plus the teacher's embedding of each view and of every
caption. Training picks one stored augmentation, rebuilds the view from its parameters with
`apply_aug` (bit-exact: PIL crop + resize, no randomness), and distils towards the stored
embedding. The `reinforce` stage writes it, the train stage reads it; both use this module so the
view the teacher saw and the view the student sees are made by the same code.

On-disk layout (docs/CONTRACTS.md, "reinforce"): `<root>/manifest.json` and
`<root>/parts/part-<shard>.parquet`, one part per curated shard, with columns `uid`,
`aug_top`/`aug_left`/`aug_height`/`aug_width` (K int32 each), `aug_flip` (K bool), `image_emb`
(K*d values, row-major K x d) and `text_emb_<field>` (a list of d values, null when the sample has no such
caption). Embeddings are stored as float32, float16 or bfloat16 (bf16 as its raw uint16 bits,
Arrow has no bf16 type); `ReinforcedReader` always hands back float32.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

MANIFEST_FILE = "manifest.json"
PARTS_DIR = "parts"
FORMAT_VERSION = 1
StorageDtype = Literal["fp32", "fp16", "bf16"]
AUG_COLUMNS = ("aug_top", "aug_left", "aug_height", "aug_width", "aug_flip")
_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


class ReinforcedDataError(ValueError):
    """A reinforced dataset (or one of its parts) is missing, malformed or lacks a uid."""


@dataclass(frozen=True)
class AugParams:
    """One stored augmentation, in source-image pixels: the RandomResizedCrop box, then a flip."""

    top: int  # crop box top row
    left: int  # crop box left column
    height: int  # crop box height
    width: int  # crop box width
    flip: bool  # horizontal flip after the resize


@dataclass(frozen=True)
class AugSampling:
    """How `sample_augs` draws boxes: torchvision RandomResizedCrop's scale and ratio, plus a flip
    probability. open_clip's training transform uses scale (0.9, 1.0) and no flip; MobileCLIP DR
    uses (0.08, 1.0)."""

    scale: tuple[float, float] = (0.9, 1.0)  # crop area as a fraction of the image area
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio (width / height) range
    flip_prob: float = 0.0  # probability of a horizontal flip

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale {self.scale!r}: need 0 < min <= max <= 1")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio {self.ratio!r}: need 0 < min <= max")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"flip_prob {self.flip_prob!r}: need 0 <= p <= 1")


def _one_box(
    rng: np.random.Generator, width: int, height: int, cfg: AugSampling
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params with a numpy Generator: 10 tries, then the
    centre crop clamped to the ratio range (same rules, same fallback)."""
    area = width * height
    log_lo, log_hi = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    for _ in range(10):
        target = area * rng.uniform(cfg.scale[0], cfg.scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < cfg.ratio[0]:
        w, h = width, int(round(width / cfg.ratio[0]))
    elif in_ratio > cfg.ratio[1]:
        h, w = height, int(round(height * cfg.ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def sample_augs(
    rng: np.random.Generator, width: int, height: int, k: int, cfg: AugSampling | None = None
) -> list[AugParams]:
    """K augmentations of a width x height image (RandomResizedCrop box, then flip with prob p)."""
    if width < 1 or height < 1:
        raise ValueError(f"image size {width}x{height}: both sides must be >= 1 pixel")
    if k < 1:
        raise ValueError(f"k {k}: need at least one augmentation")
    cfg = cfg or AugSampling()
    out = []
    for _ in range(k):
        top, left, h, w = _one_box(rng, width, height, cfg)
        flip = bool(rng.random() < cfg.flip_prob) if cfg.flip_prob > 0 else False
        out.append(AugParams(top, left, h, w, flip))
    return out


@dataclass(frozen=True)
class ViewConfig:
    """What `apply_aug` needs of a model's preprocessing (open_clip's preprocess_cfg keys)."""

    size: tuple[int, int]  # output (height, width) in pixels
    mean: tuple[float, float, float]  # per-channel normalisation mean
    std: tuple[float, float, float]  # per-channel normalisation std
    interpolation: str = "bicubic"  # resize filter: bicubic, bilinear or nearest

    @classmethod
    def from_preprocess_cfg(cls, cfg: Mapping[str, Any]) -> ViewConfig:
        """From an open_clip preprocess_cfg (a model folder's `preprocess_cfg`, BuiltModel's)."""
        try:
            size = cfg["size"]
            hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
            interp = str(cfg.get("interpolation", "bicubic"))
            if interp not in _INTERPOLATIONS:
                raise ValueError(f"interpolation {interp!r} not one of {_INTERPOLATIONS}")
            mean = [float(v) for v in cfg["mean"]]
            std = [float(v) for v in cfg["std"]]
            if len(mean) != 3 or len(std) != 3:
                raise ValueError("mean and std need 3 channels")
            return cls(hw, (mean[0], mean[1], mean[2]), (std[0], std[1], std[2]), interp)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(
                f"preprocess_cfg {dict(cfg)!r}: not a usable view config ({exc})"
            ) from None

    def as_dict(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }


def apply_aug(image: Any, aug: AugParams, preprocess_cfg: ViewConfig | Mapping[str, Any]) -> Any:
    """The view an augmentation describes, as a normalised CHW float32 tensor: RGB, crop the box,
    resize to the model's size (PIL, antialiased), flip, to tensor, normalise. No randomness, so
    the same (image, aug, cfg) gives the same bits in the reinforce stage and in training."""
    import torch
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode

    view = (
        preprocess_cfg
        if isinstance(preprocess_cfg, ViewConfig)
        else ViewConfig.from_preprocess_cfg(preprocess_cfg)
    )
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    if aug.top < 0 or aug.left < 0 or aug.top + aug.height > h or aug.left + aug.width > w:
        raise ValueError(f"augmentation {aug} does not fit a {w}x{h} image")
    out = F.resized_crop(
        image,
        aug.top,
        aug.left,
        aug.height,
        aug.width,
        list(view.size),
        interpolation=InterpolationMode(view.interpolation),
        antialias=True,
    )
    if aug.flip:
        out = F.hflip(out)
    tensor: torch.Tensor = F.to_tensor(out)
    return F.normalize(tensor, list(view.mean), list(view.std))


# ---- storage dtypes -------------------------------------------------------------------------


def encode_embeddings(x: np.ndarray, dtype: StorageDtype) -> np.ndarray:
    """float32 array -> what is stored: float32, float16, or bf16 bits (round to nearest even)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if dtype == "fp32":
        return x
    if dtype == "fp16":
        return x.astype(np.float16)
    if dtype == "bf16":
        import torch

        return torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    raise ValueError(f"dtype {dtype!r}: not one of fp32, fp16, bf16")


def decode_embeddings(x: np.ndarray, dtype: StorageDtype) -> np.ndarray:
    """What is stored -> float32 (bf16 bits become the upper half of a float32)."""
    if dtype == "bf16":
        return (np.asarray(x, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(x).astype(np.float32)


def storage_tolerance(dtype: StorageDtype) -> float:
    """Max relative rounding error of one stored value (half an ulp of the storage type)."""
    return {"fp32": 2.0**-24, "fp16": 2.0**-11, "bf16": 2.0**-8}[dtype]


def _arrow_value_type(dtype: StorageDtype) -> Any:
    import pyarrow as pa

    return {"fp32": pa.float32(), "fp16": pa.float16(), "bf16": pa.uint16()}[dtype]


# ---- manifest and parts ---------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """`manifest.json`: how the parts were made, so a reader can rebuild views and trust them."""

    teacher: str  # model reference of the teacher (folder or URI)
    teacher_weights_sha256: str  # the teacher's weights file hash: the embeddings' key
    k: int  # augmentations per sample
    embed_dim: int  # d
    dtype: StorageDtype  # storage of every embedding
    view: ViewConfig  # image size / mean / std / interpolation of apply_aug
    sampling: AugSampling  # how the boxes were drawn (provenance)
    caption_fields: tuple[str, ...]  # text_emb_<field> columns
    seed: int  # seed of the augmentation draws
    source_shards: str  # the curated shards the samples come from
    parts: tuple[str, ...] = ()  # part files, relative to the root
    rows: int = 0  # samples over all parts
    version: int = FORMAT_VERSION  # layout version
    extra: dict[str, Any] = field(default_factory=dict)  # anything else (counts, timings)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "teacher": self.teacher,
            "teacher_weights_sha256": self.teacher_weights_sha256,
            "k": self.k,
            "embed_dim": self.embed_dim,
            "dtype": self.dtype,
            "view": self.view.as_dict(),
            "sampling": {
                "scale": list(self.sampling.scale),
                "ratio": list(self.sampling.ratio),
                "flip_prob": self.sampling.flip_prob,
            },
            "caption_fields": list(self.caption_fields),
            "seed": self.seed,
            "source_shards": self.source_shards,
            "parts": list(self.parts),
            "rows": self.rows,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        v, s = data["view"], data["sampling"]
        return cls(
            teacher=data["teacher"],
            teacher_weights_sha256=data["teacher_weights_sha256"],
            k=int(data["k"]),
            embed_dim=int(data["embed_dim"]),
            dtype=data["dtype"],
            view=ViewConfig(
                tuple(v["size"]), tuple(v["mean"]), tuple(v["std"]), v["interpolation"]
            ),
            sampling=AugSampling(tuple(s["scale"]), tuple(s["ratio"]), float(s["flip_prob"])),
            caption_fields=tuple(data["caption_fields"]),
            seed=int(data["seed"]),
            source_shards=data["source_shards"],
            parts=tuple(data.get("parts", ())),
            rows=int(data.get("rows", 0)),
            version=int(data.get("version", FORMAT_VERSION)),
            extra=dict(data.get("extra", {})),
        )


def part_schema(k: int, d: int, dtype: StorageDtype, caption_fields: Sequence[str]) -> Any:
    """The Arrow schema every part shares (fixed-size lists: K per aug column, K*d; text: d or null)."""
    import pyarrow as pa

    value = _arrow_value_type(dtype)
    cols = [
        pa.field("uid", pa.string(), nullable=False),
        *(pa.field(c, pa.list_(pa.int32(), k)) for c in AUG_COLUMNS[:4]),
        pa.field("aug_flip", pa.list_(pa.bool_(), k)),
        pa.field("image_emb", pa.list_(value, k * d)),
        # variable-size lists: pyarrow cannot read back a null in a fixed-size list column
        *(pa.field(f"text_emb_{f}", pa.list_(value), nullable=True) for f in caption_fields),
    ]
    return pa.schema(cols)


@dataclass
class ReinforcedRow:
    """One sample to write: its augmentations, K x d image embeddings, caption embeddings."""

    uid: str
    augs: list[AugParams]
    image_emb: np.ndarray  # (K, d) float32
    text_emb: dict[str, np.ndarray | None]  # field -> (d,) float32, None when absent


def rows_to_table(
    rows: Sequence[ReinforcedRow], k: int, d: int, dtype: StorageDtype, fields: Sequence[str]
) -> Any:
    """The Arrow table of a part (checked shapes: a wrong K or d fails here, not in training)."""
    import pyarrow as pa

    schema = part_schema(k, d, dtype, fields)
    cols: dict[str, list[Any]] = {name: [] for name in schema.names}
    for r in rows:
        if len(r.augs) != k or r.image_emb.shape != (k, d):
            raise ReinforcedDataError(
                f"uid {r.uid!r}: {len(r.augs)} augs, image_emb {r.image_emb.shape}; need {k} and ({k}, {d})"
            )
        cols["uid"].append(r.uid)
        for name, attr in zip(AUG_COLUMNS, ("top", "left", "height", "width", "flip"), strict=True):
            cols[name].append([getattr(a, attr) for a in r.augs])
        cols["image_emb"].append(encode_embeddings(r.image_emb.reshape(-1), dtype))
        for f in fields:
            t = r.text_emb.get(f)
            if t is not None and t.shape != (d,):
                raise ReinforcedDataError(f"uid {r.uid!r}: text_emb_{f} {t.shape}; need ({d},)")
            cols[f"text_emb_{f}"].append(None if t is None else encode_embeddings(t, dtype))
    return pa.table(cols, schema=schema)


def write_part(path: Path, table: Any) -> None:
    """One part, atomically (temp then rename): a killed run never leaves half a part."""
    import io

    import pyarrow.parquet as pq

    from tasks.io.atomic import atomic_write_bytes

    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue())


@dataclass(frozen=True)
class ReinforcedSample:
    """What training needs of one sample: its K augmentations and float32 embeddings."""

    uid: str
    augs: list[AugParams]
    image_emb: np.ndarray  # (K, d) float32
    text_emb: dict[str, np.ndarray | None]  # field -> (d,) float32 or None


class ReinforcedReader:
    """Reads a reinforced dataset: `manifest`, `lookup(uids)`. Parts load lazily, once each."""

    def __init__(self, root: str | Path) -> None:
        from tasks.io.paths import resolve_path

        self.root = resolve_path(root)
        path = self.root / MANIFEST_FILE
        if not path.is_file():
            raise ReinforcedDataError(
                f"{self.root}: not a reinforced dataset (no {MANIFEST_FILE}; run the reinforce stage)"
            )
        try:
            self.manifest = Manifest.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise ReinforcedDataError(f"{path}: malformed manifest ({exc!r})") from None
        self._tables: dict[str, Any] = {}
        self._index: dict[str, tuple[str, int]] | None = None

    def _table(self, part: str) -> Any:
        import pyarrow.parquet as pq

        if part not in self._tables:
            path = self.root / part
            try:
                self._tables[part] = pq.read_table(path)
            except (OSError, ValueError) as exc:
                raise ReinforcedDataError(f"{path}: unreadable part ({exc})") from None
        return self._tables[part]

    def index(self) -> dict[str, tuple[str, int]]:
        """uid -> (part, row), built from the uid columns once."""
        import pyarrow.parquet as pq

        if self._index is None:
            idx: dict[str, tuple[str, int]] = {}
            for part in self.manifest.parts:
                uids = pq.read_table(self.root / part, columns=["uid"]).column("uid").to_pylist()
                idx.update({u: (part, i) for i, u in enumerate(uids)})
            self._index = idx
        return self._index

    def __len__(self) -> int:
        return len(self.index())

    def __contains__(self, uid: object) -> bool:
        return uid in self.index()

    def lookup(self, uids: Iterable[str]) -> dict[str, ReinforcedSample]:
        """Per-uid augmentations and float32 embeddings; a uid not in the dataset is an error
        naming it (training must not silently fall back to another view)."""
        m, idx = self.manifest, self.index()
        out: dict[str, ReinforcedSample] = {}
        for uid in uids:
            if uid not in idx:
                raise ReinforcedDataError(f"uid {uid!r}: not in the reinforced dataset {self.root}")
            part, row = idx[uid]
            rec = self._table(part).slice(row, 1).to_pylist()[0]
            augs = [
                AugParams(int(t), int(lf), int(h), int(w), bool(f))
                for t, lf, h, w, f in zip(*(rec[c] for c in AUG_COLUMNS), strict=True)
            ]
            img = decode_embeddings(np.asarray(rec["image_emb"]), m.dtype).reshape(m.k, m.embed_dim)
            texts = {
                f: None
                if rec[f"text_emb_{f}"] is None
                else decode_embeddings(np.asarray(rec[f"text_emb_{f}"]), m.dtype)
                for f in m.caption_fields
            }
            out[uid] = ReinforcedSample(uid, augs, img, texts)
        return out
