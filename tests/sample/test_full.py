"""The full build from params/sample.yaml (slow: about two minutes on 2 cores)."""

from __future__ import annotations

import pytest

from tasks import PROJECT_ROOT
from tasks.sample import stage
from tasks.sample.params import SampleParams


@pytest.mark.slow
def test_full_build_has_enough_for_the_crawl_benchmark(tmp_path, ray_session):
    params = SampleParams.from_yaml(
        PROJECT_ROOT / "params" / "sample.yaml", {"out_dir": str(tmp_path / "s")}
    )
    counts = stage.run(params)
    assert counts["images"]["distinct_urls"] >= 5000
    assert counts["pages"]["gimp"] == 685
    assert counts["eval"]["fashion_mnist"] == 10_000
    assert counts["eval_train_split"] == {"fashion_mnist": 2000}  # the probe's train split
    assert counts["planted_near_duplicates"] == params.planted_count
    groups = (tmp_path / "s" / "eval" / "emoji_groups" / "classnames.txt").read_text().splitlines()
    subgroups = (
        (tmp_path / "s" / "eval" / "emoji_subgroups" / "classnames.txt").read_text().splitlines()
    )
    assert len(groups) == 9 and len(subgroups) >= 90
    for source in ("gimp", "openclipart", "emoji", "tuxpaint"):
        assert counts["pairs"][source] > 1000
