"""Plan part files bounded by bytes (issue 17 gap 3): fewer, larger part files, the same plan,
and a writer's buffer that never grows past its byte budget."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.crawl import planparts
from tasks.crawl.records import ImageRef

BASE = "http://img.test/"
PARTITIONS = 8


def _refs(n: int, seed: int) -> list[ImageRef]:
    """Refs with repeated URLs and texts, late languages and extras (merging matters)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        u = rng.randrange(n // 3)
        texts = rng.sample(["a dog", "a cat", "the sea", ""], rng.randrange(0, 3))
        extra = rng.choice(["", json.dumps({"k": u})])
        lang = rng.choice(["", "en", "de"])
        out.append(ImageRef(f"{BASE}{u}.jpg", texts, f"{BASE}p{u % 7}", lang, "urls", extra))
    return out


def _plan(tmp: Path, name: str, refs: list[ImageRef]) -> tuple[list[dict], int, int]:
    """(plan rows of every partition, part files written, peak buffered bytes of any writer)."""
    work = str(tmp / name / "work")
    files = peak = 0
    for task, lo in enumerate(range(0, len(refs), 1500)):  # two inputs, two tasks
        writer = planparts.PartWriter(work, task, PARTITIONS)
        for k, ref in enumerate(refs[lo : lo + 1500]):
            writer.add(ref, task, k)
        writer.flush()
        files += writer.files
        peak = max(peak, writer.peak_buffered)
    on_disk = len(list((tmp / name / "work" / "refs").rglob("*.parquet")))
    assert on_disk == files
    rows: list[dict] = []
    for part in range(PARTITIONS):
        out = str(tmp / name / f"p{part}.parquet")
        planparts.reduce_partition(work, part, out)
        rows += pq.read_table(out).to_pylist()
    return rows, files, peak


def test_byte_bounded_buffers_write_fewer_parts_and_the_same_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refs = _refs(3000, seed=5)
    sizes = [planparts.ref_bytes(r) for r in refs]
    # the old way's file count: every partition written every `every` refs (FLUSH_ROWS then)
    monkeypatch.setattr(planparts, "BUFFER_BYTES", 60 * 230)
    monkeypatch.setattr(planparts, "PART_BYTES", 10**12)
    small, small_files, small_peak = _plan(tmp_path, "small", refs)
    assert small_peak <= 60 * 230 + max(sizes)  # never more than the budget plus one ref
    # a budget 20x larger: part files are fewer by about as much, the plan is the same rows
    monkeypatch.setattr(planparts, "BUFFER_BYTES", 20 * 60 * 230)
    big, big_files, big_peak = _plan(tmp_path, "big", refs)
    assert big == small
    assert big_peak <= 20 * 60 * 230 + max(sizes)
    assert big_files * 5 <= small_files, (big_files, small_files)
    assert [r["uid"] for r in big] == sorted(r["uid"] for r in big)
    # one partition's own cap writes a full partition alone, still the same plan
    monkeypatch.setattr(planparts, "PART_BYTES", 40 * 230)
    capped, capped_files, capped_peak = _plan(tmp_path, "capped", refs)
    assert capped == small and capped_files > big_files
    assert capped_peak <= PARTITIONS * 40 * 230


def test_refused_rows_are_written_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planparts, "REFUSED_ROWS", 3)
    writer = planparts.PartWriter(str(tmp_path), 4, PARTITIONS)
    row = {"source": "urls", "input": "l.txt", "row": 0, "url": "", "status": "bad_url"}
    for i in range(7):
        writer.refuse([{**row, "row": i, "url": f"u{i}", "error_message": "x"}])
    writer.flush()
    files = sorted((tmp_path / "refused").glob("*.parquet"))
    assert [f.name for f in files] == [f"t0000004-0000{i}.parquet" for i in range(3)]
    lines = [x for f in files for x in pq.read_table(f).column("row").to_pylist()]
    assert lines == list(range(7)) and writer.refused_count == 7
