"""The committed params/curate.yaml is sized to the sample web: its basic filter keeps the
sample's 128-px emoji and 2-word clip-art names whatever language a detector guessed, and still
drops UI icons and one-word captions; DataComp's defaults (tasks/curate/params.py) would not."""

from __future__ import annotations

import pyarrow as pa

from tasks import PROJECT_ROOT
from tasks.curate.params import CurateParams
from tasks.curate.steps.base import StepContext
from tasks.curate.steps.basic import Basic


def _rows() -> pa.Table:
    rows = [  # (text, side, detected language) as the sample crawl has them
        ("fuel pump", 128, "es"),  # an emoji: 128 px, two words, language ID says Spanish
        ("A pineapple.", 150, "it"),  # Tux Paint stamp
        ("Part of the Flat Icon Collection", 60, "en"),  # a 60-px icon
        ("gramastar", 300, "et"),  # one word
    ]
    return pa.table(
        {
            "uid": [f"u{i}" for i in range(len(rows))],
            "text": [r[0] for r in rows],
            "language": [r[2] for r in rows],
            "original_width": [r[1] for r in rows],
            "original_height": [r[1] for r in rows],
        }
    )


def test_committed_basic_filter_keeps_the_sample_webs_emoji_and_names() -> None:
    committed = CurateParams.from_yaml(PROJECT_ROOT / "params" / "curate.yaml")
    res = Basic(committed.basic)(_rows(), StepContext(params=committed, out_dir=PROJECT_ROOT))
    assert res.reason == [None, None, "image_too_small", "too_few_words"]
    datacomp = CurateParams()  # the code's defaults: DataComp's basic filter
    res = Basic(datacomp.basic)(_rows(), StepContext(params=datacomp, out_dir=PROJECT_ROOT))
    assert res.reason[:2] == ["language", "language"]
    assert (datacomp.basic.min_side, datacomp.basic.min_words) == (200, 3)
