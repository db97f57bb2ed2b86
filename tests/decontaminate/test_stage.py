"""The decontaminate stage on a tiny crawl: the planted eval copy is flagged (for every set that
holds its picture), nothing else is, and the training data loader never yields what it flagged."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from .conftest import PLANTED_UID


def test_planted_copy_is_flagged_for_every_set_holding_it(outputs, tiny_crawl) -> None:
    out, metrics = outputs
    flagged = pq.read_table(out / "flagged_uids.parquet").to_pylist()
    assert {(r["uid"], r["eval_set"], r["eval_id"]) for r in flagged} == {
        (PLANTED_UID, "toyset", "toyset/e0"),
        (PLANTED_UID, "otherset", "otherset/e0"),
    }
    assert all(r["reason"].startswith("eval_near_duplicate_") for r in flagged)
    assert metrics["rows_checked"] == len(tiny_crawl.clean) + 1
    assert metrics["flagged_uids"] == 1 and metrics["flagged_pairs"] == 2
    assert metrics["flagged_toyset"] == 1 and metrics["flagged_otherset"] == 1
    assert metrics["eval_images"] == 5  # 4 + 1, each with its crops hashed besides
    assert metrics["eval_views"] > metrics["eval_images"]
    assert metrics["decontam_recall"] == 1.0 and metrics["decontam_false_positives"] == 0
    assert json.loads((out / "summary.json").read_text())["flagged_uids"] == 1
    views = pq.read_table(out / "eval_hashes.parquet")
    assert views.num_rows == metrics["eval_views"] and None not in views.column("phash").to_pylist()
    planted = pq.read_table(out / "planted_uids.parquet").to_pylist()
    assert planted == [
        {
            "uid": PLANTED_UID,
            "url": planted[0]["url"],
            "eval_ids": ["toyset/e0", "otherset/e0"],
            "transformation": "resize",
            "flagged": True,
        }
    ]


def test_train_loader_never_yields_a_flagged_uid(outputs, tiny_crawl) -> None:
    """The teacher's loader with exclude_uids = the stage's list: every epoch holds every clean
    row and never the planted copy; without the list the copy is trained on (the check can fail)."""
    from tasks.train.data import count_samples, global_batches, list_shards, load_excluded

    out, _ = outputs
    shards = list_shards(str(tiny_crawl.shards))
    exclude = load_excluded(str(out / "flagged_uids.parquet"))
    assert exclude == {PLANTED_UID}

    def seen(excluded: frozenset[str]) -> list[str]:
        batches = global_batches(shards, 4, seed=0, resample=False, buffer=1, exclude=excluded)
        return [s["__key__"] for _ in range(9) for s in next(batches)]  # three epochs

    with_list = seen(exclude)
    assert PLANTED_UID not in with_list and set(with_list) == set(tiny_crawl.clean)
    assert PLANTED_UID in seen(frozenset())
    assert count_samples(shards, exclude) == count_samples(shards) - 1


def test_missing_shards_or_eval_sets_name_the_input(tmp_path, tiny_crawl, ray_session) -> None:
    from tasks.decontaminate.params import DecontaminateParams
    from tasks.decontaminate.stage import run

    base = {"eval_dir": str(tiny_crawl.eval_dir), "planted": None, "out_dir": str(tmp_path)}
    with pytest.raises(FileNotFoundError, match="nope.*run the crawl stage"):
        run(DecontaminateParams(paths={**base, "shards": str(tmp_path / "nope")}))
    empty = tmp_path / "noeval"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no eval tars under .*noeval"):
        run(
            DecontaminateParams(
                paths={**base, "shards": str(tiny_crawl.shards), "eval_dir": str(empty)}
            )
        )


def test_bad_exclusion_list_names_the_file(tmp_path) -> None:
    import pyarrow as pa

    from tasks.train.data import DataError, load_excluded

    assert load_excluded(None) == frozenset()
    with pytest.raises(DataError, match="missing.parquet.*run the decontaminate stage"):
        load_excluded(str(tmp_path / "missing.parquet"))
    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "noid.parquet")
    with pytest.raises(DataError, match="noid.parquet.*no `uid` column"):
        load_excluded(str(tmp_path / "noid.parquet"))
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="junk.parquet.*not a parquet file"):
        load_excluded(str(tmp_path / "junk.parquet"))


def test_teacher_preflight_sizes_the_run_without_the_flagged_rows(outputs, tiny_crawl) -> None:
    """The teacher's params with exclude_uids: the sample count that sizes batches leaves the
    flagged copy out, and a batch that only fits with it is refused before any worker starts."""
    from tasks.train.data import DataError
    from tasks.train.params import TrainParams
    from tasks.train.stage import preflight

    out, _ = outputs
    flagged = str(out / "flagged_uids.parquet")
    n_all = len(tiny_crawl.clean) + 1
    common = dict(model="clipmill-tiny", shards=str(tiny_crawl.shards))
    _, n = preflight(TrainParams(**common, exclude_uids=flagged, batch_size=4))
    assert n == n_all - 1
    with pytest.raises(DataError, match=f"larger than the {n_all - 1} samples"):
        preflight(TrainParams(**common, exclude_uids=flagged, batch_size=n_all))


def test_stored_hashes_are_what_curate_would_compute(outputs, tiny_crawl) -> None:
    """eval_hashes.parquet carries the fingerprint of its views (so curate reuses it only for the
    same eval tars and view) and crawl_hashes.parquet the hashes of every checked image, equal
    to hashing the shard's bytes again."""
    from tasks.decontam.hashing import hash_batch
    from tasks.decontam.stored import known_hashes, read_eval_hashes, views_fingerprint
    from tasks.decontam.views import EvalView, crawl_resize
    from tasks.decontaminate.params import DecontaminateParams
    from tasks.io.wds import read_images

    out, metrics = outputs
    view = EvalView(
        mode="crawl", resize=crawl_resize(), crops=tuple(DecontaminateParams().match.crops)
    )
    table, why = read_eval_hashes(
        out / "eval_hashes.parquet", views_fingerprint(tiny_crawl.eval_dir, view)
    )
    assert table is not None, why
    assert table.num_rows == metrics["eval_views"]
    other = EvalView(mode="crawl", resize=crawl_resize(), crops=(0.5,))
    stale, why = read_eval_hashes(
        out / "eval_hashes.parquet", views_fingerprint(tiny_crawl.eval_dir, other)
    )
    assert stale is None and "other eval sets or another view" in why

    import pyarrow as pa

    known = known_hashes(out / "crawl_hashes.parquet")
    images = [
        d for tar in sorted(tiny_crawl.shards.glob("*.tar")) for _, d, _ in read_images(tar, None)
    ]
    assert len(known) == metrics["rows_checked"] == len(images)
    fresh = hash_batch(pa.table({"image": images})).to_pylist()
    assert {r["image_sha256"]: (r["phash"], r["dhash"]) for r in fresh} == known


def test_shared_eval_pictures_are_hashed_once_with_the_same_rows(outputs, tiny_crawl) -> None:
    """toyset/e0 holds otherset/e0's bytes: its views are made once and copied, and the stored
    rows equal hashing every eval id's views on its own (the undeduplicated pass)."""
    from tasks.decontam.reading import ReadAndHash, read_shard, shard_items
    from tasks.decontam.views import eval_prefixes, eval_shards
    from tasks.decontaminate.params import DecontaminateParams
    from tasks.decontaminate.stage import distinct_eval_images, eval_view_of

    out, _ = outputs
    shards = eval_shards(tiny_crawl.eval_dir)
    prefixes = eval_prefixes(shards, tiny_crawl.eval_dir)
    distinct, same_as, order = distinct_eval_images(shards, prefixes)
    assert same_as == {"toyset/e0": "otherset/e0"}  # otherset/ is read first
    assert sum(len(v) for v in distinct.values()) == len(order) - 1 == 4
    hash_one = ReadAndHash(read_shard, eval_view_of(DecontaminateParams()))
    every = [
        row
        for item in shard_items({str(k): v for k, v in shards.items()}, prefixes=prefixes)
        for row in hash_one(item)
    ]
    columns = ["variant", "image_sha256", "phash", "dhash", "image_reason"]
    stored = pq.read_table(out / "eval_hashes.parquet").to_pylist()
    assert sorted((r["id"], *(str(r[c]) for c in columns)) for r in stored) == sorted(
        (r["uid"], *(str(r[c]) for c in columns)) for r in every
    )
    ids = [r["id"] for r in stored]
    assert ids == sorted(ids, key=order.index)  # grouped by id, in reading order
