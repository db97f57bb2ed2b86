"""Streaming crawl inputs (issue 17 point 1): chunked URL-list readers, the partitioned plan equal
to the in-memory one, resume, and errors naming the input."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.crawl import planparts
from tasks.crawl.extract_wat import extract_wat
from tasks.crawl.gather import screen_refs
from tasks.crawl.params import CrawlParams
from tasks.crawl.plan import load_plan, plan_rows, read_all_rows
from tasks.crawl.records import ImageRef, make_uid, merge_refs
from tasks.crawl.urllists import UrlListError, iter_chunks, read_url_list
from tests.support.synthetic_web import caption, image_url, write_url_list, write_wat

BASE = "http://img.test/"
FORMATS = ["txt", "csv", "tsv", "json", "jsonl", "parquet"]


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_chunked_readers_read_every_row_of_every_format(tmp_path: Path, fmt: str, gz: bool) -> None:
    path = tmp_path / f"list.{fmt}{'.gz' if gz else ''}"
    write_url_list(path, 300, BASE)
    cols = ["url"] if fmt == "txt" else ["url", "caption", "source_id"]
    chunks = list(iter_chunks(str(path), cols, chunk_rows=64))
    assert len(chunks) >= 5  # read in pieces, not whole (a .json array is parsed whole, then cut)
    assert [u for c in chunks for u in c["url"]] == [image_url(BASE, i) for i in range(300)]
    if fmt != "txt":
        assert [t for c in chunks for t in c["caption"]] == [caption(i) for i in range(300)]
    extra = () if fmt == "txt" else ("source_id",)
    refs, refused = read_url_list(str(path), extra_cols=extra)
    assert len(refs) == 300 and not refused
    if fmt != "txt":
        assert refs[7].texts == [caption(7)] and refs[7].language == "en"
        assert json.loads(refs[7].extra)["source_id"] in (7, "7")  # csv cells are strings
    else:
        assert refs[7].extra == "" and refs[7].texts == []


def test_csv_column_typed_late_stays_text(tmp_path: Path) -> None:
    """A caption column that is numeric in the first block and text later is still read (types
    are not inferred from a first block)."""
    path = tmp_path / "l.csv"
    rows = [f"{image_url(BASE, i)},{i}" for i in range(120_000)] + [f"{image_url(BASE, 9)},a dog"]
    path.write_text("url,caption\n" + "\n".join(rows) + "\n")
    refs, _ = read_url_list(str(path))
    assert refs[-1].texts == ["a dog"] and refs[3].texts == ["3"]


@pytest.mark.parametrize("name", ["l.csv.gz", "l.parquet", "l.jsonl", "l.txt.gz"])
def test_unreadable_list_is_an_error_naming_it(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x1f\x8b\x08 not really gzip" if name.endswith(".gz") else b"\x00garbage{")
    with pytest.raises(UrlListError, match=name.replace(".", r"\.")):
        read_url_list(str(path))
    with pytest.raises(UrlListError, match=r"nope\.csv"):
        read_url_list(str(tmp_path / "nope.csv"))


def test_missing_additional_column_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    write_url_list(path, 5, BASE)
    with pytest.raises(UrlListError, match=r"l\.jsonl: no column 'license'"):
        read_url_list(str(path), extra_cols=("license",))


def _random_refs(n: int, seed: int) -> list[ImageRef]:
    """Refs with repeated URLs, repeated and new texts, empty texts and late languages."""
    rng = random.Random(seed)
    refs = []
    for _ in range(n):
        u = rng.randrange(n // 3)
        texts = rng.sample(["a", "b", "c", "d", ""], rng.randrange(0, 3))
        lang = rng.choice(["", "", "en", "de"])
        extra = rng.choice(["", json.dumps({"k": u})])
        refs.append(
            ImageRef(f"{BASE}{u}.jpg", texts, f"{BASE}p{rng.randrange(9)}", lang, "x", extra)
        )
    return refs


def test_partition_merge_equals_merge_refs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planparts, "BUFFER_BYTES", 97 * 220)  # several part files per partition
    refs = _random_refs(3000, seed=3)
    work = str(tmp_path / "work")
    for task, lo in enumerate(range(0, len(refs), 1000)):  # three inputs, as three tasks
        writer = planparts.PartWriter(work, task, 7)
        for k, ref in enumerate(refs[lo : lo + 1000]):
            writer.add(ref, task, k)
        writer.flush()
    got, pairs = [], 0
    for part in range(7):
        out = str(tmp_path / f"p{part}.parquet")
        pairs += planparts.reduce_partition(work, part, out)["pairs"]
        got += pq.read_table(out).to_pylist()
    want = plan_rows(merge_refs(refs), shard_size=10**9)
    assert [r["uid"] for r in got] == sorted(r["uid"] for r in got)  # partition order = uid order
    keys = ("uid", "url", "caption", "texts", "page_url", "language", "source", "extra")
    assert [{k: r[k] for k in keys} for r in got] == [{k: r[k] for k in keys} for r in want]
    assert pairs == len({(r.url, t) for r in refs for t in (r.texts or [""])})


def test_partition_of_is_monotone_in_uid() -> None:
    uids = sorted(make_uid(f"{BASE}{i}") for i in range(2000))
    parts = [planparts.partition_of(u, 13) for u in uids]
    assert parts == sorted(parts) and set(parts) == set(range(13))


# --- the stage's planning: Ray tasks, partitions, plan.json -------------------------------


def _params(tmp: Path, lists: list[Path], wats: list[Path], **inputs: object) -> CrawlParams:
    sources = (["urls"] if lists else []) + (["wat"] if wats else [])
    return CrawlParams.model_validate(
        {
            "inputs": {
                "sources": sources,
                "sample_site_dir": "",
                "archives_index": "",
                "url_lists": [str(p) for p in lists],
                "wat_files": [str(p) for p in wats],
                "shard_size": 37,
                "plan_partitions": 5,
                **inputs,
            },
            "output": {"output_dir": str(tmp / "crawl"), "progress": False},
        }
    )


def _ctx(p: CrawlParams):  # type: ignore[no-untyped-def]
    import contextlib

    from tasks.crawl.context import build_context

    return build_context(p, contextlib.ExitStack())


def _reference_rows(p: CrawlParams) -> list[dict]:
    """The old in-memory plan: every ref read, screened, merged by merge_refs, sorted by uid."""
    from tasks.crawl.security import rules_of

    refs: list[ImageRef] = []
    for uri in p.inputs.url_lists:
        refs += read_url_list(uri, extra_cols=tuple(p.inputs.save_additional_columns))[0]
    for uri in p.inputs.wat_files:
        refs += [r for r, _ in screen_refs(extract_wat(uri).refs, rules_of(p.policy)) if r]
    return plan_rows(merge_refs(refs), p.inputs.shard_size, p.inputs.max_images)


@pytest.fixture()
def inputs(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    lists = [tmp_path / "a.csv.gz", tmp_path / "b.jsonl", tmp_path / "c.parquet"]
    write_url_list(lists[0], 400, BASE, duplicate_every=5)
    write_url_list(lists[1], 300, BASE, start=350)  # overlaps a.csv.gz: texts merge across files
    write_url_list(lists[2], 200, BASE, start=600, duplicate_every=3)
    wats = [tmp_path / "x.wat.gz", tmp_path / "y.wat.gz"]
    write_wat(wats[0], 30, BASE, images_per_page=5, shared=4)
    write_wat(wats[1], 30, BASE, images_per_page=5, start=25, shared=4)
    return lists, wats


def test_partitioned_plan_equals_the_in_memory_plan(tmp_path, ray_session, inputs) -> None:  # type: ignore[no-untyped-def]
    from tasks.crawl.stage import ensure_plan

    lists, wats = inputs
    p = _params(tmp_path, lists, wats, save_additional_columns=["source_id"])
    plan, metrics = ensure_plan(p, _ctx(p))
    got = read_all_rows(str(tmp_path / "crawl"))
    want = _reference_rows(p)
    assert len(got) == len(want) == plan.rows and metrics["plan_reused"] == 0
    assert got == want  # same rows, same texts in the same order, same shards
    assert metrics["unique_images"] == len(want) and metrics["urls_rows"] == 900
    assert any(len(r["texts"]) > 1 for r in got) and any(r["extra"] for r in got)
    # The driver got counts only; the plan is files.
    meta = json.loads((tmp_path / "crawl/_plan/plan.json").read_text())
    assert sum(e["rows"] for e in meta["partitions"]) == len(want) and "work" not in {
        p.name for p in (tmp_path / "crawl/_plan").iterdir()
    }
    assert (tmp_path / "crawl/refused.parquet").exists()


def test_max_images_keeps_the_lowest_uids(tmp_path, ray_session, inputs) -> None:  # type: ignore[no-untyped-def]
    from tasks.crawl.stage import ensure_plan

    lists, _ = inputs
    p = _params(tmp_path, lists, [], max_images=111)
    plan, _ = ensure_plan(p, _ctx(p))
    got = read_all_rows(str(tmp_path / "crawl"))
    assert plan.rows == 111 and plan.shards == 3 and plan.shard_count(2) == 111 - 74
    assert got == _reference_rows(p)


def test_rerun_reuses_the_plan_and_a_killed_planning_run_restarts(
    tmp_path, ray_session, inputs
) -> None:  # type: ignore[no-untyped-def]
    from tasks.crawl.stage import ensure_plan

    lists, wats = inputs
    p = _params(tmp_path, lists[:1], wats[:1])
    # What a planning run killed before its commit point leaves: part files, no plan.json.
    junk = tmp_path / "crawl/_plan/work/refs/p0000/t0000000-00000.parquet"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"half a file")
    first, m1 = ensure_plan(p, _ctx(p))
    plan_json = tmp_path / "crawl/_plan/plan.json"
    stamp = plan_json.stat().st_mtime_ns
    again, m2 = ensure_plan(p, _ctx(p))
    assert m1["plan_reused"] == 0 and m2["plan_reused"] == 1
    assert plan_json.stat().st_mtime_ns == stamp and again.meta == first.meta
    assert read_all_rows(str(tmp_path / "crawl")) == _reference_rows(p)
    loaded = load_plan(str(tmp_path / "crawl"))
    assert loaded is not None and loaded.shard_rows(1) == [
        r for r in _reference_rows(p) if r["shard"] == 1
    ]


def test_unreadable_list_in_the_stage_is_one_error_naming_it(tmp_path, ray_session) -> None:  # type: ignore[no-untyped-def]
    from tasks.crawl.stage import ensure_plan

    bad = tmp_path / "broken.jsonl.gz"
    bad.write_bytes(gzip.compress(b'{"url": "http://a/1.jpg"}\n') + b"trailing junk")
    p = _params(tmp_path, [bad], [])
    with pytest.raises(UrlListError, match=r"broken\.jsonl\.gz: cannot read") as info:
        ensure_plan(p, _ctx(p))
    assert "Traceback" not in str(info.value)
    assert load_plan(str(tmp_path / "crawl")) is None  # nothing committed


def test_a_big_parquet_list_is_read_by_several_tasks(tmp_path, ray_session, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A parquet list above inputs.TASK_ROWS rows is cut by row groups into several extraction
    tasks; the plan (texts merged across the cut, refused rows numbered in the file) is the same."""
    import pyarrow as pa

    from tasks.crawl import inputs as inputs_module
    from tasks.crawl.stage import ensure_plan
    from tasks.crawl.urllists import parquet_ranges

    rows = [{"url": image_url(BASE, i % 260), "caption": caption(i)} for i in range(300)]
    rows[123]["url"] = "not a url"
    path = tmp_path / "big.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=50)
    assert parquet_ranges(str(path), 120) == [((0, 3), 0), ((3, 6), 150)]
    assert parquet_ranges(str(path), 1000) is None
    monkeypatch.setattr(inputs_module, "TASK_ROWS", 120)
    p = _params(tmp_path, [path], [])
    plan, metrics = ensure_plan(p, _ctx(p))
    assert metrics["extract_tasks"] == 2 and metrics["urls_rows"] == 300
    assert read_all_rows(str(tmp_path / "crawl")) == _reference_rows(p)
    refused = pq.read_table(tmp_path / "crawl/refused.parquet").to_pylist()
    assert [(r["row"], r["status"]) for r in refused] == [(123, "bad_url")]
