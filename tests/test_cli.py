"""The command line's own helpers (the stages themselves are run in tests/test_doors.py)."""

from __future__ import annotations

import yaml

from tasks import PROJECT_ROOT
from tasks.cli import _default_site_dir, main


def test_serve_sample_defaults_to_the_sample_stage_site() -> None:
    from tasks.settings import get_settings

    out_dir = yaml.safe_load((PROJECT_ROOT / "params" / "sample.yaml").read_text())["out_dir"]
    assert _default_site_dir() == get_settings().root / out_dir / "site"  # outputs' root


def test_stages_lists_the_registry_in_order(capsys) -> None:
    assert main(["stages"]) == 0
    assert capsys.readouterr().out.split() == [
        "sample",
        "crawl",
        "decontaminate",
        "teacher",
        "recaption",
        "curate",
        "coca",
        "reinforce",
        "train",
        "evaluate",
        "expert_fashion",
        "expert_emoji",
        "expert_tuxpaint",
        "expert_openclipart",
        "merge",
        "evaluate_merge",
    ]
