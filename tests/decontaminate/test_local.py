"""decontaminate without Ray (compute.ray: never, what `auto` does on one machine): the same
tasks on local processes write the very files the Ray run wrote (issue 12)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from .conftest import TinyCrawl

FILES = (
    "flagged_uids.parquet",
    "planted_uids.parquet",
    "eval_hashes.parquet",
    "crawl_hashes.parquet",
)


@pytest.mark.parametrize("processes", [1, 2])
def test_local_processes_write_the_ray_runs_files(
    outputs: tuple[Path, dict], tiny_crawl: TinyCrawl, tmp_path: Path, processes: int
) -> None:
    from tasks.decontaminate.params import DecontaminateParams
    from tasks.decontaminate.stage import run

    ray_out, ray_metrics = outputs  # the runner's run, on the test session's Ray
    params = DecontaminateParams(
        paths={
            "shards": str(tiny_crawl.shards),
            "eval_dir": str(tiny_crawl.eval_dir),
            "planted": str(tiny_crawl.planted),
            "out_dir": str(tmp_path),
        },
        compute={"rows_per_block": 4, "ray": "never", "processes": processes},
    )
    assert params.local_processes() == processes and not params.needs_ray()
    metrics = run(params)
    assert metrics == {k: v for k, v in ray_metrics.items() if k in metrics}
    assert metrics["flagged_uids"] == 1
    for name in FILES:
        assert pq.read_table(tmp_path / name).equals(
            pq.read_table(ray_out / name), check_metadata=True
        )
        assert (tmp_path / name).read_bytes() == (ray_out / name).read_bytes()


def test_auto_uses_ray_only_on_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.decontaminate.params import DecontaminateParams
    from tasks.settings import get_settings

    get_settings.cache_clear()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("CLIPMILL_RAY_ADDRESS", raising=False)
    try:
        assert not DecontaminateParams().needs_ray()
        assert DecontaminateParams(compute={"ray": "always"}).needs_ray()
        monkeypatch.setenv("CLIPMILL_RAY_ADDRESS", "ray://head:10001")
        get_settings.cache_clear()
        assert DecontaminateParams().needs_ray()
        assert not DecontaminateParams(compute={"ray": "never"}).needs_ray()
    finally:
        get_settings.cache_clear()
