"""The crawl stage end to end through the runner: site + WAT + WARC -> shards + pool; resume; retry."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.crawl.plan import PlanMismatchError
from tasks.crawl.records import make_uid
from tasks.pool import open_pool

from . import images
from .sitegen import BASE, build_sample


@pytest.fixture()
def env(tmp_path, monkeypatch, mlflow_store, ray_session):
    from tasks.settings import get_settings

    monkeypatch.setenv(
        "CLIPMILL_ROOT", str(tmp_path)
    )  # metrics/crawl.json goes under tmp, not the repo
    get_settings.cache_clear()
    root = tmp_path / "sample"
    root.mkdir()
    info = build_sample(root)
    overrides = {  # dotted paths into the params' sections, as `-s` takes them
        "inputs.sources": ["site", "wat", "warc"],
        "inputs.sample_site_dir": str(root / "site"),
        "inputs.archives_index": str(root / "archives/index.json"),
        "inputs.shard_size": 5,
        "output.output_dir": str(tmp_path / "crawl"),
        "output.lancedb_uri": str(tmp_path / "lancedb"),
        "output.progress": False,
        "http.retries": 0,
        "download.connections_per_shard": 8,
    }
    return tmp_path, root, info, overrides


def _run(overrides: dict, more: dict | None = None) -> dict:
    from tasks import PROJECT_ROOT
    from tasks.runner import run_stage

    return run_stage(
        "crawl", PROJECT_ROOT / "params/crawl.yaml", overrides={**overrides, **(more or {})}
    )


def _tar_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def test_stage_layout_pool_resume_and_retry(env):
    tmp, root, info, ov = env
    metrics = _run(ov)
    ok_uids = {make_uid(BASE + p) for p in info["expected"]}
    late_uid = make_uid(BASE + "img/late.jpg")
    assert metrics["count"] == len(ok_uids) + 1 and metrics["successes"] == len(ok_uids)
    assert metrics["status_http_404"] == 1 and metrics["shards"] == 3
    assert metrics["site_pages"] == 4 and metrics["input_error_site_robots_disallowed"] == 1
    assert json.loads((tmp / "metrics/crawl.json").read_text())["successes"] == len(ok_uids)

    shards = tmp / "crawl/shards"
    assert sorted(p.name for p in shards.iterdir() if not p.name.startswith(".")) == sorted(
        [f"0000{i}{ext}" for i in range(3) for ext in (".tar", ".parquet", "_stats.json", ".done")]
    )
    names = [n for i in range(3) for n in _tar_names(shards / f"0000{i}.tar")]
    assert {n.split(".")[0] for n in names} == ok_uids and len(names) == 3 * len(ok_uids)
    with tarfile.open(shards / "00000.tar") as tar:
        first = tar.getnames()[0].split(".")[0]
        meta = json.loads(tar.extractfile(f"{first}.json").read())
        assert tar.extractfile(f"{first}.txt").read().decode() == meta["caption"]
    rows = [r for i in range(3) for r in pq.read_table(shards / f"0000{i}.parquet").to_pylist()]
    assert {r["uid"] for r in rows} == ok_uids | {late_uid}
    stats = json.loads((shards / "00000_stats.json").read_text())
    assert {
        "count",
        "successes",
        "failed_to_download",
        "failed_to_resize",
        "status_dict",
        "duration",
    } <= set(stats)

    pool = open_pool(str(tmp / "lancedb")).to_arrow().to_pylist()
    by_uid = {r["uid"]: r for r in pool}
    assert set(by_uid) == ok_uids | {late_uid}
    logo = by_uid[make_uid(BASE + "img/logo.png")]
    assert (
        logo["texts"] == ["Site logo", "The logo", "café crème logo"]
        and logo["url"] == BASE + "img/logo.png"
    )
    assert (
        logo["page_url"].startswith(BASE)
        and logo["status"] == "success"
        and len(logo["sha256"]) == 64
    )
    assert by_uid[make_uid(BASE + "img/g7.jpg")]["language"] == "de"
    assert by_uid[late_uid]["status"] == "http_404"

    # Re-run: every shard is done, nothing is downloaded again, nothing is duplicated.
    again = _run(ov)
    assert again["shards_run"] == 0 and again["shards_skipped"] == 3 and again["plan_reused"] == 1
    assert len(open_pool(str(tmp / "lancedb")).to_arrow()) == len(ok_uids) + 1
    # A new pool (another CLIPMILL_LANCEDB_URI, a fresh clone): the record of what is in a pool
    # lives in the pool, so this one is refilled from the shards, nothing downloaded.
    moved = _run(ov, {"output.lancedb_uri": str(tmp / "lancedb2")})
    assert moved["shards_run"] == 0
    assert sorted(open_pool(str(tmp / "lancedb2")).to_arrow().column("uid").to_pylist()) == sorted(
        ok_uids | {late_uid}
    )
    assert pq.read_table(tmp / "crawl/refused.parquet").num_rows == 0

    # retry_failed: the missing image now exists; only it is fetched, and merged into its shard + pool.
    (root / "site/img/late.jpg").write_bytes(images.jpeg(90, 90))
    retried = _run(ov, {"output.retry_failed": True, "output.retry_error_classes": ["http_404"]})
    assert (
        retried["retried"] == 1
        and retried["recovered"] == 1
        and retried["successes"] == len(ok_uids) + 1
    )
    names = [n for i in range(3) for n in _tar_names(shards / f"0000{i}.tar")]
    assert f"{late_uid}.jpg" in names and len(names) == 3 * (len(ok_uids) + 1)
    pool = {r["uid"]: r for r in open_pool(str(tmp / "lancedb")).to_arrow().to_pylist()}
    assert pool[late_uid]["status"] == "success" and len(pool) == len(ok_uids) + 1

    # Other inputs into the same folder are refused unless overwrite=true.
    with pytest.raises(PlanMismatchError, match="output.overwrite=true"):
        _run(ov, {"inputs.max_images": 3})
    with pytest.raises(PlanMismatchError):  # the resize is part of what a plan's shards hold
        _run(ov, {"resize.image_size": 128})
    replaced = _run(
        ov, {"inputs.max_images": 3, "output.overwrite": True, "output.write_pool": False}
    )
    assert replaced["count"] == 3 and replaced["shards"] == 1


def test_bad_params_and_inputs_are_clear(env):
    tmp, root, _, ov = env
    from tasks.base import ParamsError
    from tasks.crawl.inputs import InputError

    with pytest.raises(ParamsError, match="field 'inputs.shard_size' = 0"):
        _run(ov, {"inputs.shard_size": 0})
    with pytest.raises(ParamsError, match="unknown field 'bogus'"):
        _run(ov, {"bogus": 1})
    with pytest.raises(ParamsError, match="unknown field 'http.bogus'"):
        _run(ov, {"http.bogus": 1})
    with pytest.raises(ParamsError, match="unknown field 'shard_size'"):  # flat names are gone
        _run(ov, {"shard_size": 5})
    with pytest.raises(InputError, match="'urls' but inputs.url_lists is empty"):
        _run(ov, {"inputs.sources": ["urls"]})
    with pytest.raises(FileNotFoundError, match="sample site not found"):
        _run(ov, {"inputs.sample_site_dir": str(tmp / "nowhere")})
    shutil.rmtree(tmp / "crawl", ignore_errors=True)
    with pytest.raises(FileNotFoundError, match="holds no crawl"):
        _run(ov, {"output.retry_failed": True})
    assert io
