"""Decontamination against eval images seen as the crawl stored the pool's images (fast, no Ray)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.curate.features import embed_table
from tasks.curate.params import CurateParams
from tasks.curate.steps.base import StepContext
from tasks.curate.steps.registry import build_step
from tasks.decontam.hashing import hash_batch
from tasks.decontam.params import HashMatchParams
from tasks.decontam.planted import planted_recall
from tasks.decontam.views import EvalView, crop, pixel_distances
from tasks.imaging.resize import ResizeParams, process_image

from .conftest import image_bytes

CRAWL = ResizeParams()  # params/crawl.yaml: border 256 px, JPEG q95


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _eval_png(seed: int) -> bytes:
    """A 2:1 eval image: the crawl's border mode pads it with white bands to 256x256."""
    return image_bytes(seed, (320, 160), fmt="PNG")


def _crawled(data: bytes) -> bytes:
    """What the crawl stores for an image found on the web (its own resize + encode)."""
    return process_image(data, CRAWL).data


def _resized_copy(data: bytes) -> bytes:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    return _png(img.resize((224, 112), Image.Resampling.LANCZOS))


def _cropped_copy(data: bytes) -> bytes:
    from PIL import Image

    return _png(crop(Image.open(io.BytesIO(data)).convert("RGB"), 0.86, 1.0, 0.0))


def _eval_table(images: dict[str, bytes], view: EvalView) -> pa.Table:
    rows = [r for i, data in images.items() for r in view({"uid": i, "image": data, "text": ""})]
    table = hash_batch(pa.Table.from_pylist(rows)).drop_columns(["image"])
    return table.append_column("id", table.column("uid"))


def _pool_table(images: dict[str, bytes]) -> pa.Table:
    rows = [{"uid": u, "image": d, "text": ""} for u, d in images.items()]
    return hash_batch(pa.Table.from_pylist(rows)).drop_columns(["image"])


def _params(clip_model: str | None = None, **decontaminate) -> CurateParams:
    section = dict(embed_threshold=None, hash_embed_min=None, crop_embed_min=None)
    return CurateParams(
        paths={"clip_model": clip_model},
        steps=["decontaminate"],
        decontaminate={**section, **decontaminate},
    )


def decontaminate(rows: pa.Table, ctx: StepContext):
    """The registered decontaminate step with the context's params."""
    return build_step("decontaminate", ctx.params)(rows, ctx)


def _decide(
    pool: dict[str, bytes],
    evals: dict[str, bytes],
    crops: list[float],
    eval_view: Literal["raw", "crawl"] = "crawl",
) -> dict[str, tuple]:
    """`crops` and `eval_view`: the `match` section of params/decontaminate.yaml the run would
    read."""
    from tasks.curate.evalsets import eval_view as view_of

    p = _params()
    match = HashMatchParams(crops=crops, eval_view=eval_view)
    view = view_of(match, CRAWL)
    ctx = StepContext(
        params=p, out_dir=Path("."), eval_features=_eval_table(evals, view), hash_match=match
    )
    res = decontaminate(_pool_table(pool), ctx)
    return {u: (r, ref) for u, r, ref in zip(pool, res.reason, res.ref, strict=True)}


@pytest.fixture(scope="module")
def toy():
    evals = {"toy/e0": _eval_png(1000), "toy/e1": _eval_png(1001)}
    pool = {
        "planted": _crawled(_resized_copy(evals["toy/e0"])),  # a resized re-post, then crawled
        "cropped": _crawled(_cropped_copy(evals["toy/e1"])),  # 86 % of each side, then crawled
        "other": _crawled(_eval_png(2000)),  # an unrelated picture
    }
    return pool, evals


def test_crawl_view_finds_a_crawled_copy_raw_view_does_not(toy):
    pool, evals = toy
    crawl = _decide(pool, evals, crops=[])
    assert crawl["planted"] == ("eval_near_duplicate_phash", "toy/e0")
    assert crawl["other"] == (None, None)
    # the same copy against the eval images as stored: the white border bands of the crawl's
    # resize move the hashes far away, so it is missed
    raw = _decide(pool, evals, crops=[], eval_view="raw")
    assert raw["planted"] == (None, None)


def test_eval_crops_find_a_cropped_copy(toy):
    pool, evals = toy
    whole_only = _decide(pool, evals, crops=[])
    assert whole_only["cropped"] == (None, None)
    with_crops = _decide(pool, evals, crops=[0.82, 0.9])
    assert with_crops["cropped"] == ("eval_near_duplicate_crop", "toy/e1")
    assert with_crops["planted"] == ("eval_near_duplicate_phash", "toy/e0")
    assert with_crops["other"] == (None, None)


def test_eval_view_rows():
    data = _eval_png(1000)
    rows = EvalView(crops=(0.82, 0.9))({"uid": "toy/e0", "image": data, "text": ""})
    assert len(rows) == 1 + 2 * 9 and {r["uid"] for r in rows} == {"toy/e0"}
    assert [r["embed"] for r in rows] == [True] + [False] * 18, "crops are hashed, not embedded"
    assert rows[0]["variant"] == "full" and rows[0]["image"] == _crawled(data)
    assert EvalView(mode="raw")({"uid": "x", "image": data, "text": ""})[0]["image"] == data
    bad = EvalView(crops=(0.9,))({"uid": "x", "image": b"not an image", "text": ""})
    assert len(bad) == 1 and bad[0]["image"] == b"not an image"


def test_embed_table_skips_rows_not_to_embed():
    import torch

    class Model:
        def encode_image(self, x):
            return torch.ones(len(x), 4)

        def encode_text(self, t):
            return torch.ones(len(t), 4)

    batch = pa.table(
        {
            "uid": ["a", "a"],
            "image": [image_bytes(1), image_bytes(2)],
            "text": ["", ""],
            "image_reason": pa.array([None, None], pa.string()),
            "embed": [True, False],
        }
    )
    out = embed_table(
        batch, Model(), lambda im: torch.zeros(3, 8, 8), lambda t: torch.zeros(len(t))
    )
    emb = out.column("image_emb").to_pylist()
    assert emb[0] is not None and emb[1] is None


def _emb_tables(cos: float) -> tuple[pa.Table, pa.Table]:
    """One pool row and one eval image with identical hashes and the given embedding cosine."""
    ph, dh = "a5a5a5a5a5a5a5a5", "0f0f0f0f0f0f0f0f"
    x = np.array([1.0, 0.0], np.float32)
    e = np.array([cos, np.sqrt(1 - cos**2)], np.float32)
    typ = pa.list_(pa.float32())
    rows = pa.table(
        {"uid": ["r"], "phash": [ph], "dhash": [dh], "image_emb": pa.array([x.tolist()], typ)}
    )
    ev = pa.table(
        {
            "id": ["toy/e0"],
            "variant": ["full"],
            "phash": [ph],
            "dhash": [dh],
            "image_emb": pa.array([e.tolist()], typ),
        }
    )
    return rows, ev


@pytest.mark.parametrize(("cos", "flagged"), [(0.2, False), (0.95, True)])
def test_hash_match_needs_the_embedding_gate(cos, flagged):
    rows, ev = _emb_tables(cos)
    # the step only reads stored embeddings; a model is named because the params require one
    p = _params(clip_model="random:clipmill-tiny", hash_embed_min=0.85)
    ctx = StepContext(params=p, out_dir=Path("."), eval_features=ev, hash_match=HashMatchParams())
    res = decontaminate(rows, ctx)
    assert (res.reason[0] == "eval_near_duplicate_phash") is flagged
    assert res.score[0] == pytest.approx(cos, abs=1e-5)


def test_pixel_distances_tell_copies_from_other_images():
    data = _eval_png(1000)
    same, other, missing = pixel_distances(
        [(_crawled(data), data), (_crawled(_eval_png(2000)), data), (None, data)],
        EvalView(),
    )
    assert same < 2.0 < 20.0 < other and missing is None


def test_planted_recall_breakdown(tmp_path):
    sample = tmp_path / "sample"
    (sample / "eval").mkdir(parents=True)
    (sample / "metadata").mkdir()
    planted = {"up/a.png": "resize", "up/b.png": "crop", "up/c.png": "crop", "up/d.png": "jpeg"}
    pq.write_table(
        pa.table({"site_path": list(planted), "transformation": list(planted.values())}),
        sample / "eval" / "planted.parquet",
    )
    pq.write_table(
        pa.table({"path": ["g/x.png", "g/y.png", "g/z.png"], "source": ["emoji", "emoji", "gimp"]}),
        sample / "metadata" / "site_images.parquet",
    )
    base = "http://sample.clipmill.test/"
    urls = [base + p for p in ["up/a.png", "up/b.png", "up/c.png", "g/x.png", "g/y.png", "g/z.png"]]
    reasons = [
        "eval_near_duplicate_phash",  # planted, found
        "eval_near_duplicate_crop",  # planted, found
        None,  # planted crop, missed
        "eval_near_duplicate_phash",  # a look-alike (close in pixels to its eval image)
        "eval_near_duplicate_crop",  # a false positive
        "eval_near_duplicate_phash",  # a false positive
    ]
    m = planted_recall(
        sample / "eval" / "planted.parquet",
        urls,
        reasons,
        distances=[0.5, 20.0, None, 3.0, 30.0, 9.0],
        lookalike_mad=8.0,
    )
    assert m["decontam_planted"] == 4 and m["decontam_planted_in_pool"] == 3
    assert m["decontam_recall"] == pytest.approx(2 / 3)
    assert m["decontam_recall_resize"] == 1.0 and m["decontam_recall_crop"] == 0.5
    assert np.isnan(m["decontam_recall_jpeg"]), "not in the pool: no recall to report"
    assert m["decontam_flagged"] == 5 and m["decontam_flagged_not_planted"] == 3
    assert m["decontam_lookalikes"] == 1 and m["decontam_false_positives"] == 2
    assert m["decontam_false_positives_crop"] == 1 and m["decontam_false_positives_phash"] == 1
    assert m["decontam_false_positives_source_emoji"] == 1
    assert m["decontam_false_positives_source_gimp"] == 1
    assert m["decontam_found_by_phash"] == 1 and m["decontam_found_by_crop"] == 1
