"""Evaluation images to decontaminate against, and recall / false positives on planted copies."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tasks.imaging.resize import ResizeParams
from tasks.io.wds import IMAGE_EXTS, read_images, sample_keys

if TYPE_CHECKING:
    from tasks.curate.params import DecontaminateParams

CROP_POSITIONS = (0.0, 0.5, 1.0)  # crop offsets along each axis: start, centre, end


@dataclass(frozen=True)
class EvalView:
    """How an eval image is looked at before it is hashed and embedded (a Ray Data flat_map).

    "crawl": through the crawl's own decode + resize + encode (tasks.imaging.resize), so it is
    compared with pool images in the form the crawl stored them (border-padded to 256 px and
    re-encoded as JPEG by default); "raw": as stored. `crops` adds, per kept fraction, nine crops
    (3x3 positions) taken before the resize, as a re-posted crop of the image would be: those rows
    are hashed only (`embed` False); the whole view keeps variant "full".
    """

    mode: str = "crawl"
    resize: ResizeParams = ResizeParams()
    crops: tuple[float, ...] = ()

    def __call__(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        full = {**row, "variant": "full", "embed": True}
        if not row["image"]:
            return [full]
        try:
            img = self._decode(row["image"])
            out = [full if self.mode == "raw" else {**full, "image": self._encode(img)}]
            for keep in self.crops:
                for x in CROP_POSITIONS:
                    for y in CROP_POSITIONS:
                        out.append(
                            {
                                **row,
                                "image": self._encode(crop(img, keep, x, y)),
                                "variant": f"crop{keep:g}@{x:g},{y:g}",
                                "embed": False,
                            }
                        )
        except Exception:  # undecodable: hash_batch records the reason on the whole view
            return [full]
        return out

    def _decode(self, data: bytes) -> Any:
        from tasks.curate.images import decode_rgb
        from tasks.imaging.resize import decode

        if self.mode == "raw":
            return decode_rgb(data)
        return decode(data, self.resize)[0]

    def _encode(self, img: Any) -> bytes:
        import io

        from tasks.imaging.resize import encode, resize

        if self.mode == "raw":
            buf = io.BytesIO()
            img.save(buf, "PNG")
            return buf.getvalue()
        return encode(resize(img, self.resize), self.resize)


def crop(img: Any, keep: float, x: float, y: float) -> Any:
    """`keep` of each side, the window placed at fraction x, y of the room left (0 = left/top)."""
    w, h = max(1, round(img.width * keep)), max(1, round(img.height * keep))
    left, top = round((img.width - w) * x), round((img.height - h) * y)
    return img.crop((left, top, left + w, top + h))


def eval_view(p: DecontaminateParams, resize: ResizeParams | None) -> EvalView:
    """The view decontamination asks for: `eval_view`, the crawl's `resize` section, crops.

    `resize` is read from params/crawl.yaml (tasks/curate/inputs.py) and may be None for the
    "raw" view, which does not resize.
    """
    return EvalView(mode=p.eval_view, resize=resize or ResizeParams(), crops=tuple(p.crops))


def eval_shards(eval_dir: Path) -> dict[Path, list[tuple[str, str]]]:
    """Every eval tar (any split) -> [(sample key, "")]; the id of an image is `<set>/<key>`."""
    out: dict[Path, list[tuple[str, str]]] = {}
    for tar in sorted(eval_dir.glob("*/*/*.tar")):
        out[tar] = [(k, "") for k in sample_keys(tar, IMAGE_EXTS)]
    return out


def image_shards(folder: Path) -> dict[Path, list[tuple[str, str]]]:
    """Target images for the image-based filter: .tar shards anywhere under the folder."""
    return {tar: [(k, "") for k in sample_keys(tar)] for tar in sorted(folder.rglob("*.tar"))}


def eval_prefixes(shards: dict[Path, list[tuple[str, str]]], eval_dir: Path) -> dict[str, str]:
    """shard -> `<set>/`: eval sets reuse sample keys (s0000000 is in every set)."""
    return {str(tar): tar.relative_to(eval_dir).parts[0] + "/" for tar in shards}


def with_eval_ids(features: pa.Table) -> pa.Table:
    """The eval image id is its `<set>/<key>` uid."""
    return features.append_column("id", features.column("uid"))


def read_eval_images(eval_dir: Path, ids: set[str]) -> dict[str, bytes]:
    """Image bytes of the wanted eval ids (`<set>/<key>`)."""
    out: dict[str, bytes] = {}
    for tar in eval_shards(eval_dir):
        prefix = tar.relative_to(eval_dir).parts[0] + "/"
        if not any(i.startswith(prefix) for i in ids):
            continue
        wanted = {i.removeprefix(prefix) for i in ids if i.startswith(prefix)}
        for key, data, _ in read_images(tar, wanted):
            out[prefix + key] = data
    return out


def thumbnail(data: bytes, side: int = 32) -> Any:
    """side x side RGB thumbnail (box filter) as float32, for look-alike checks."""
    import numpy as np
    from PIL import Image

    from tasks.curate.images import decode_rgb

    img = decode_rgb(data).resize((side, side), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32)


def pixel_distances(
    pairs: list[tuple[bytes | None, bytes | None]], view: EvalView
) -> list[float | None]:
    """Mean absolute RGB difference (0-255) of 32x32 thumbnails of each (pool image, eval image),
    the eval image seen through `view` (its whole view, as the pool stores images); None when
    either image is missing or undecodable. Independent of the detector's hashes and embeddings,
    so it can tell look-alikes of an eval image from unrelated images among the flagged."""
    whole = replace(view, crops=())
    out: list[float | None] = []
    for pool_img, eval_img in pairs:
        if not pool_img or not eval_img:
            out.append(None)
            continue
        try:
            viewed = whole({"uid": "", "image": eval_img, "text": ""})[0]["image"]
            out.append(float(abs(thumbnail(pool_img) - thumbnail(viewed)).mean()))
        except Exception:
            out.append(None)
    return out


def _col(table: pa.Table, *names: str) -> list[Any]:
    for n in names:
        if n in table.column_names:
            return table.column(n).to_pylist()
    raise KeyError(
        f"planted near-duplicates file has none of the columns {names}: {table.column_names}"
    )


def _site_path(url: str | None) -> str | None:
    """Site-relative path of a pool URL (`http://host/a/b.png` -> `a/b.png`)."""
    return url.split("://", 1)[-1].split("/", 1)[-1] if url else None


def _site_sources(planted_path: Path) -> dict[str, str]:
    """site path -> source (openclipart, emoji, ...) from the sample's site metadata when the
    planted file sits in a sample folder (`<sample>/eval/planted...`); {} otherwise."""
    import pyarrow.parquet as pq

    meta = planted_path.parent.parent / "metadata" / "site_images.parquet"
    if not meta.exists():
        return {}
    table = pq.read_table(meta, columns=["path", "source"])
    out: dict[str, str] = {}
    for path, source in zip(
        table.column("path").to_pylist(), table.column("source").to_pylist(), strict=True
    ):
        if path and source:
            out.setdefault(path, source)
    return out


def planted_recall(
    planted_path: Path,
    pool_urls: list[str | None],
    reasons: list[str | None],
    refs: list[str | None] | None = None,
    distances: list[float | None] | None = None,
    lookalike_mad: float = 8.0,
) -> dict[str, Any]:
    """Decontamination quality on the planted copies, broken down.

    A pool row matches a planted image when its URL ends with the planted site path; it is
    flagged when its reason starts with `eval_`. Recall = planted images in the pool that were
    flagged, overall and per transformation (resize, crop, jpeg, color_shift). Among flagged rows
    that are not planted, a look-alike is one within `lookalike_mad` (pixel_distances) of the eval
    image it was matched to: a picture a person would take for that eval image (the sample's
    generated stars, playing cards one pip apart, identical flags); the rest are false positives,
    counted per reason (phash, crop, embedding) and per site source when the sample's site
    metadata is next to the planted file.
    """
    import pyarrow.parquet as pq

    planted = pq.read_table(planted_path)
    paths = [
        str(x).lstrip("/")
        for x in _col(planted, "site_path", "site_image_path", "path", "image_path")
    ]
    kinds = (
        [str(t) for t in _col(planted, "transformation")]
        if "transformation" in planted.column_names
        else ["unknown"] * len(paths)
    )
    kind_of = dict(zip(paths, kinds, strict=True))
    sources = _site_sources(planted_path)
    row_path = [_site_path(u) for u in pool_urls]
    flagged = [bool(r and r.startswith("eval_")) for r in reasons]
    dist = distances or [None] * len(flagged)
    in_pool = {x for x in row_path if x in kind_of}
    found: dict[str, str] = {}
    not_planted = lookalikes = 0
    false_pos: dict[str, int] = {}
    for x, f, r, d in zip(row_path, flagged, reasons, dist, strict=True):
        if not f:
            continue
        why = str(r).removeprefix("eval_near_duplicate_")
        if x in kind_of:
            found.setdefault(x, why)
            continue
        not_planted += 1
        if d is not None and d <= lookalike_mad:
            lookalikes += 1
            continue
        false_pos[why] = false_pos.get(why, 0) + 1
        src = f"source_{sources.get(x or '', 'other')}"
        false_pos[src] = false_pos.get(src, 0) + 1
    out: dict[str, Any] = {
        "decontam_planted": len(kind_of),
        "decontam_planted_in_pool": len(in_pool),
        "decontam_recall": len(found) / len(in_pool) if in_pool else float("nan"),
        "decontam_flagged": int(sum(flagged)),
        "decontam_flagged_not_planted": not_planted,
        "decontam_lookalikes": lookalikes,
        "decontam_false_positives": not_planted - lookalikes,
    }
    for kind in sorted(set(kinds)):
        here = [x for x in in_pool if kind_of[x] == kind]
        hit = sum(x in found for x in here)
        out[f"decontam_recall_{kind}"] = hit / len(here) if here else float("nan")
    for why in sorted(set(found.values())):
        out[f"decontam_found_by_{why}"] = sum(v == why for v in found.values())
    out.update({f"decontam_false_positives_{k}": v for k, v in sorted(false_pos.items())})
    return out
