"""The README's benchmark table shows every key of every committed benchmark result, met or not:
a key that a benchmark writes but the README leaves out is a result nobody reading it would see."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _key_rows(readme: str) -> set[tuple[str, str]]:
    """(results file, key) of every row of the README's every-key table."""
    return set(re.findall(r"^\| `([a-z_]+\.json)` \| `([A-Za-z0-9_]+)` \|", readme, re.M))


def test_every_result_key_is_in_the_readme_table() -> None:
    rows = _key_rows((ROOT / "README.md").read_text())
    results = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    assert results, "no committed benchmark results"
    missing = [
        (path.name, key)
        for path in results
        for key in json.loads(path.read_text())["results"]
        if (path.name, key) not in rows
    ]
    assert not missing, f"README.md benchmark table lacks {missing}"


def test_the_row_parser_sees_a_missing_key() -> None:
    """The check can fail: a table without one row is reported."""
    table = (
        "| `demo.json` | `demo_minutes` | 14 | 114 |\n| `demo.json` | `teacher_average` | 0.2 |\n"
    )
    assert ("demo.json", "teacher_average") in _key_rows(table)
    assert ("demo.json", "teacher_average") not in _key_rows(table.splitlines()[0])
