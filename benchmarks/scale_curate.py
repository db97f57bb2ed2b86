"""Issue 17, key `curate_rss_10m_vs_1m`: the driver's peak RSS running curate's streamed
decisions (tasks/curate/stream.py) over a synthetic 10M-row pool vs a 1M-row one.

The pool is a LanceDB table written in chunks into a temp folder (never whole in memory), with
the columns curate's prepare step would have stored, so no images and no model are needed:
24-hex uids, texts from a small vocabulary whose words are the metadata entries, 5% exact
duplicates (same sha256), 2% failed downloads, some small or wide images, 1-3 MetaCLIP entry
ids per row (Zipf-like: head entries exceed t), and L2-normalised 8-dim image/text embeddings.
Steps that run: basic, exact_dedup, clip_score (fraction 0.3, DataComp's rank over the whole
pool), balance (t = 2000), then the 5% holdout; text matching and image features are taken as
already stored (prepare is not part of the measure). Each size runs in a fresh process (its
VmHWM is the driver's peak); its own local Ray cluster is a child of it, and the peak of the
summed RSS of that process tree (sampled every 0.5 s) is the cluster's peak, in `extra`.

    .venv/bin/python benchmarks/scale.py --only curate_rss_10m_vs_1m [--small]
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
KEY = "curate_rss_10m_vs_1m"
TARGET = 1.2
N_ENTRIES = 1000
DIM = 8
CHUNK = 500_000
BLOCK_ROWS = 65_536
VOCAB = ["photo", "picture", "image", "of", "the", "a", "with", "and", "on", "in", "near"]


def entry_word(e: int) -> str:
    return f"entry{e:04d}"


def write_pool(uri: Path, rows: int, seed: int = 0) -> None:
    """The synthetic pool, written CHUNK rows at a time (peak memory: one chunk)."""
    import lancedb
    import pyarrow as pa

    db = lancedb.connect(str(uri))
    table = None
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        rng = np.random.default_rng(seed + start)
        raw = rng.bytes(12 * n).hex()
        uids = [raw[24 * i : 24 * i + 24] for i in range(n)]
        sha = rng.bytes(32 * n).hex()
        digests = [sha[64 * i : 64 * i + 64] for i in range(n)]
        for i in range(1, n, 20):  # 5% exact duplicates of the row before
            digests[i] = digests[i - 1]
        n_ids = rng.integers(1, 4, n)
        flat = np.minimum(rng.zipf(1.3, int(n_ids.sum())) - 1, N_ENTRIES - 1).astype(np.int32)
        offsets = np.concatenate([[0], np.cumsum(n_ids)]).astype(np.int32)
        words = rng.choice(VOCAB, size=(n, 3))
        texts = [
            f"a {w[0]} {w[1]} {w[2]} {entry_word(int(flat[offsets[i]]))}"
            for i, w in enumerate(words)
        ]
        side = rng.integers(60, 900, size=(n, 2))
        status = np.where(rng.random(n) < 0.02, "http_404", "success")
        img = rng.standard_normal((n, DIM)).astype(np.float32)
        txt = img + rng.standard_normal((n, DIM)).astype(np.float32)
        img /= np.linalg.norm(img, axis=1, keepdims=True)
        txt /= np.linalg.norm(txt, axis=1, keepdims=True)
        vec = pa.list_(pa.float32(), DIM)
        chunk = pa.table(
            {
                "uid": pa.array(uids, pa.string()),
                "url": pa.array([f"http://x.test/{u}.jpg" for u in uids], pa.string()),
                "text": pa.array(texts, pa.string()),
                "language": pa.array(["en"] * n, pa.string()),
                "sha256": pa.array(digests, pa.string()),
                "width": pa.array(side[:, 0], pa.int32()),
                "height": pa.array(side[:, 1], pa.int32()),
                "original_width": pa.array(side[:, 0], pa.int32()),
                "original_height": pa.array(side[:, 1], pa.int32()),
                "shard": pa.array(["shards/00000.tar"] * n, pa.string()),
                "status": pa.array(status, pa.string()),
                "curate_entry_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
                "curate_match_digest": pa.array(["bench"] * n, pa.string()),
                "curate_features_model": pa.array(["bench"] * n, pa.string()),
                "curate_image_emb": pa.FixedSizeListArray.from_arrays(pa.array(img.ravel()), DIM),
                "curate_text_emb": pa.FixedSizeListArray.from_arrays(pa.array(txt.ravel()), DIM),
            }
        ).cast(
            pa.schema(
                [
                    *(
                        pa.field(f, pa.string())
                        for f in ("uid", "url", "text", "language", "sha256")
                    ),
                    *(
                        pa.field(f, pa.int32())
                        for f in ("width", "height", "original_width", "original_height")
                    ),
                    pa.field("shard", pa.string()),
                    pa.field("status", pa.string()),
                    pa.field("curate_entry_ids", pa.list_(pa.int32())),
                    pa.field("curate_match_digest", pa.string()),
                    pa.field("curate_features_model", pa.string()),
                    pa.field("curate_image_emb", vec),
                    pa.field("curate_text_emb", vec),
                ]
            )
        )
        if table is None:
            table = db.create_table("pool", chunk)
        else:
            table.add(chunk)


def child(uri: str, out: str) -> None:
    """One size, in a fresh process: the streamed decisions, then this process's VmHWM."""
    import ray

    sys.path.insert(0, str(ROOT))
    from tasks.curate.params import CurateParams
    from tasks.curate.poolio import open_pool_table
    from tasks.curate.steps.base import StepContext
    from tasks.curate.steps.registry import build_steps
    from tasks.curate.stream import stream_decide

    for attempt in range(4):  # Ray gives its raylet 30 s to start: too short on a loaded machine
        try:
            ray.init(
                num_cpus=2,
                object_store_memory=512 * 1024 * 1024,
                include_dashboard=False,
                logging_level="WARNING",
            )
            break
        except Exception:
            ray.shutdown()
            if attempt == 3:
                raise
    p = CurateParams(
        steps=["basic", "exact_dedup", "clip_score", "balance"],
        paths=dict(pool_uri=uri, out_dir=out),
        basic=dict(languages=["en"]),
        clip_score=dict(fraction=0.3),
        balance=dict(t=2000),
        holdout=dict(fraction=0.05),
        compute=dict(rows_per_block=BLOCK_ROWS),
    )
    ctx = StepContext(params=p, out_dir=Path(out), n_entries=N_ENTRIES)
    steps = build_steps(p)
    for step in steps:
        step.setup(ctx)
    t0 = time.perf_counter()
    outcome = stream_decide(open_pool_table(uri), uri, steps, ctx, Path(out) / "scratch")
    seconds = time.perf_counter() - t0
    hwm_kb = next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    ray.shutdown()
    print(
        "RESULT "
        + json.dumps(
            {
                "driver_peak_mb": hwm_kb / 1024,
                "seconds": seconds,
                "curated": outcome.curated_size,
                "held": outcome.holdout_size,
                "funnel": [(f["step"], f["left"]) for f in outcome.funnel],
            }
        ),
        flush=True,
    )


class TreeRss:
    """The peak of the summed RSS of a process and its descendants (the driver and its Ray)."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.peak = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        import psutil

        while not self.done.is_set():
            total = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_info().rss
            self.peak = max(self.peak, total)
            self.done.wait(0.5)

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return self.peak / 2**20


def run_size(rows: int, work: Path) -> dict[str, Any]:
    """Write the pool of `rows`, run the child on it, return its numbers and the cluster's peak."""
    uri = work / f"pool-{rows}"
    out = work / f"out-{rows}"
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    write_pool(uri, rows)
    write_s = time.perf_counter() - t0
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", str(uri), str(out)],  # run the script with nice
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    meter = TreeRss(proc.pid)
    log, _ = proc.communicate()
    cluster = meter.stop()
    line = next((x for x in log.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"curate decisions over {rows} rows failed:\n{log[-4000:]}")
    got = json.loads(line[len("RESULT ") :])
    got.update(rows=rows, cluster_peak_mb=cluster, write_pool_s=write_s)
    shutil.rmtree(uri, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return got


def measure(args: Any) -> dict[str, Any]:
    """{KEY: entry}: ours = the driver's peak RSS at the large size, baseline = at the small."""
    small = bool(getattr(args, "small", False))
    big_n, base_n = (100_000, 10_000) if small else (10_000_000, 1_000_000)
    if getattr(args, "sizes", None):  # this script alone: e.g. --sizes 1000000 100000
        big_n, base_n = args.sizes
    work = Path(tempfile.mkdtemp(prefix="clipmill-scale-curate-"))
    try:
        base = run_size(base_n, work)
        big = run_size(big_n, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = big["driver_peak_mb"] / base["driver_peak_mb"]
    return {
        KEY: {
            "ours": round(big["driver_peak_mb"], 1),
            "baseline": round(base["driver_peak_mb"], 1),
            "ratio": round(ratio, 3),
            "unit": f"MB, driver peak RSS (VmHWM) of curate's decisions, {big_n} vs {base_n} rows",
            "target": TARGET,
            "met": ratio <= TARGET,
            "extra": {
                "steps": "basic, exact_dedup, clip_score (fraction 0.3), balance (t 2000), holdout 0.05",
                "rows_per_block": BLOCK_ROWS,
                "cluster_peak_mb": {
                    str(big_n): round(big["cluster_peak_mb"], 1),
                    str(base_n): round(base["cluster_peak_mb"], 1),
                },
                "seconds": {
                    str(big_n): round(big["seconds"], 1),
                    str(base_n): round(base["seconds"], 1),
                },
                "funnel": {str(big_n): big["funnel"], str(base_n): base["funnel"]},
            },
        }
    }


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        import argparse

        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--small", action="store_true", help="100k vs 10k rows")
        parser.add_argument("--sizes", type=int, nargs=2, metavar=("BIG", "BASE"))
        print(json.dumps(measure(parser.parse_args()), indent=2))
