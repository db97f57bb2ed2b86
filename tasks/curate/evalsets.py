"""Curate's view of the eval images: decontaminate's `match` section turned into the library's
EvalView, and the target images of the image-based filter.

The model-free code (eval views, eval tars and ids, pixel distances, planted-copy recall) lives
in the library, tasks/decontam/, shared with the `decontaminate` stage that runs before any model
trains.
"""

from __future__ import annotations

from pathlib import Path

from tasks.decontam.params import HashMatchParams
from tasks.decontam.views import EvalView
from tasks.imaging.resize import ResizeParams
from tasks.io.wds import sample_keys


def eval_view(match: HashMatchParams, resize: ResizeParams | None) -> EvalView:
    """The view decontamination asks for: `eval_view`, the crawl's `resize` section, crops.

    `match` is the `match` section of params/decontaminate.yaml (its `eval_view` and crops) and
    `resize` the `resize` section of params/crawl.yaml (both read by tasks/curate/inputs.py);
    `resize` may be None for the "raw" view, which does not resize.
    """
    return EvalView(mode=match.eval_view, resize=resize or ResizeParams(), crops=tuple(match.crops))


def image_shards(folder: Path) -> dict[Path, list[tuple[str, str]]]:
    """Target images for the image-based filter: .tar shards anywhere under the folder."""
    return {tar: [(k, "") for k in sample_keys(tar)] for tar in sorted(folder.rglob("*.tar"))}
