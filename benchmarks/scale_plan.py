"""Driver memory of crawl PLANNING at 10M vs 1M input URLs (issue 17, key driver_rss_10m_vs_1m).

Planning only, no downloads: the crawl stage's `ensure_plan` (URL lists and a few WAT files
extracted by one Ray task per file into uid partitions, de-duplicated and sorted by reduce
tasks, plan.json written) on synthetic inputs from tests/support/synthetic_web.py: N URLs in
parquet lists of at most 1M rows each (every 10th row repeats a URL with another caption) plus
3 WAT files of 2,000 pages x 10 images. Each size runs in a FRESH process (`--child`) that starts
its own local Ray; ours = that driver's peak RSS (VmHWM) at 10M, baseline = at 1M, ratio =
ours / baseline (target <= 1.2: the driver's memory does not grow with the input). The extra
holds the Ray cluster's peak RSS (the sum over the driver's descendant processes - raylet, GCS,
workers - of each one's VmHWM, sampled from /proc every 0.5 s), wall and CPU seconds.
`--small` (benchmarks/scale.py) measures 100k vs 10k.

    nice -n 10 .venv/bin/python benchmarks/scale.py --only driver_rss_10m_vs_1m [--small]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KEY = "driver_rss_10m_vs_1m"
PER_FILE = 1_000_000  # rows per synthetic URL list file
BASE = "http://img.synthetic.test/"


def _status_kib(pid: int | str, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_s(pid: int) -> float:
    """user + sys seconds of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class ClusterPeak:
    """Peak RSS of the driver's descendant processes (the local Ray cluster): per process the
    highest VmHWM seen, summed over every process seen (workers that exited included)."""

    def __init__(self) -> None:
        self.hwm: dict[int, int] = {}
        self.cpu: dict[int, float] = {}  # pid -> user + sys seconds last seen
        self.live_peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        me = os.getpid()
        while not self.stop.wait(0.5):
            live = 0
            for pid in _descendants(me):
                self.hwm[pid] = max(self.hwm.get(pid, 0), _status_kib(pid, "VmHWM"))
                self.cpu[pid] = max(self.cpu.get(pid, 0.0), _cpu_s(pid))
                live += _status_kib(pid, "VmRSS")
            self.live_peak = max(self.live_peak, live)

    def result(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        return {
            "cluster_sum_of_peak_rss_mib": round(sum(self.hwm.values()) / 1024, 1),
            "cluster_peak_live_rss_mib": round(self.live_peak / 1024, 1),
            "cluster_processes_seen": len(self.hwm),
            "cluster_cpu_s": round(sum(self.cpu.values()), 1),
        }


def make_inputs(folder: Path, n: int) -> tuple[list[Path], list[Path]]:
    """Synthetic URL lists (n rows, parquet, streamed) and 3 WAT files under `folder`."""
    from tests.support.synthetic_web import write_url_list, write_wat

    folder.mkdir(parents=True, exist_ok=True)
    lists = []
    for k, lo in enumerate(range(0, n, PER_FILE)):
        path = folder / f"urls-{k:04d}.parquet"
        write_url_list(path, min(PER_FILE, n - lo), BASE, start=lo, duplicate_every=10)
        lists.append(path)
    wats = []
    for k in range(3):
        path = folder / f"synthetic-{k}.wat.gz"
        write_wat(path, 2000, BASE, images_per_page=10, start=k * 1500)
        wats.append(path)
    return lists, wats


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One planning run in this (fresh) process; prints its measures as JSON."""
    import contextlib

    import ray

    from tasks.crawl.context import build_context
    from tasks.crawl.params import CrawlParams
    from tasks.crawl.stage import ensure_plan

    peak = ClusterPeak()
    ray.init(
        num_cpus=spec["cpus"],
        object_store_memory=256 * 1024 * 1024,
        include_dashboard=False,
        logging_level="WARNING",
    )
    p = CrawlParams.model_validate(
        {
            "inputs": {
                "sources": ["urls", "wat"],
                "sample_site_dir": "",
                "archives_index": "",
                "url_lists": spec["lists"],
                "wat_files": spec["wats"],
                "plan_partitions": spec["partitions"],
            },
            "output": {"output_dir": spec["out"], "progress": False},
        }
    )
    started = time.perf_counter()
    plan, metrics = ensure_plan(p, build_context(p, contextlib.ExitStack()))
    seconds = time.perf_counter() - started
    ray.shutdown()
    cluster = peak.result()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "driver_peak_rss_mib": round(_status_kib("self", "VmHWM") / 1024, 1),
        "plan_rows": plan.rows,
        "unique_images": metrics["unique_images"],
        "urls_rows": metrics.get("urls_rows", 0),
        "wat_image_refs": metrics.get("wat_image_refs", 0),
        "plan_seconds": round(seconds, 1),
        "driver_cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        **cluster,
    }


def run_size(n: int, scratch: Path, cpus: int) -> dict[str, Any]:
    folder = scratch / f"n{n}"
    lists, wats = make_inputs(folder / "inputs", n)
    spec = {
        "lists": [str(p) for p in lists],
        "wats": [str(p) for p in wats],
        "out": str(folder / "crawl"),
        "cpus": cpus,
        "partitions": 64,
    }
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    for attempt in range(3):  # Ray's start can time out on a loaded machine: start again
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
            cwd=str(ROOT),
        )
        if proc.returncode == 0 or "timed out during startup" not in proc.stderr:
            break
        print(f"scale_plan: Ray did not start (attempt {attempt + 1}), again", file=sys.stderr)
        shutil.rmtree(spec["out"], ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"planning {n} URLs failed:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(f"scale_plan: {n} URLs: {json.dumps(result)}", file=sys.stderr, flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    return result


def measure(args: argparse.Namespace) -> dict[str, Any]:
    small, big = (10_000, 100_000) if getattr(args, "small", False) else (1_000_000, 10_000_000)
    if getattr(args, "sizes", None):  # e.g. "100000,1000000": what a loaded machine allows
        small, big = (int(x) for x in args.sizes.split(","))
    cpus = max(1, min(os.cpu_count() or 2, 8))
    scratch = Path(tempfile.mkdtemp(prefix="scale_plan-"))
    try:
        base = run_size(small, scratch, cpus)
        ours = run_size(big, scratch, cpus)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    label = f"{big:,} vs {small:,}"
    return {
        KEY: {
            "ours": ours["driver_peak_rss_mib"],
            "baseline": base["driver_peak_rss_mib"],
            "ratio": round(ours["driver_peak_rss_mib"] / base["driver_peak_rss_mib"], 3),
            "unit": (
                f"MiB driver peak RSS (VmHWM), planning only (extract + dedup + plan, no "
                f"downloads), {label} input URLs + 3 WAT files; ratio = ours / baseline"
            ),
            "target": 1.2,
            "sizes": [small, big],
            "ray_cpus": cpus,
            "ours_run": ours,
            "baseline_run": base,
        }
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--small", action="store_true")
        parser.add_argument("--sizes", help="SMALL,BIG input URLs instead of 1M,10M")
        parser.add_argument("--one", type=int, help="measure this one size only (prints its run)")
        ns = parser.parse_args()
        if ns.one:
            scratch = Path(tempfile.mkdtemp(prefix="scale_plan-"))
            try:
                print(json.dumps(run_size(ns.one, scratch, max(1, min(os.cpu_count() or 2, 8)))))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(json.dumps(measure(ns), indent=2))
