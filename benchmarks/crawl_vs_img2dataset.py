"""clipmill crawl vs img2dataset 1.47.0: same image URLs from the sample site, same local server.

Both run as the separate processes users run: `img2dataset` from its own venv
(.venv-peers/img2dataset, created here from PyPI when missing) and `clipmill run crawl`. Both get
the same parquet of URLs (every image of the sample site, served on 127.0.0.1 by nginx, see
benchmarks/static_server.py; `--server python` uses the project's Python server instead), resize
border 256, JPEG quality 95, the same number of processes (img2dataset processes_count = our
shards in flight = Ray CPUs) and connections (thread_count = connections per shard), no retries.
images/s = successfully written images / wall seconds of the whole command (start-up included),
best of `--repeat` alternating rounds per tool.
Also measured: WAT and WARC extraction, records/s on one core (one process, files in sequence).
Result: benchmarks/results/crawl.json. Usage: .venv/bin/python benchmarks/crawl_vs_img2dataset.py
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PEER = ROOT / ".venv-peers" / "img2dataset"
PEER_PINS = ["img2dataset==1.47.0"]
# Scratch outside the shared tree (other engineers clean benchmarks/.work while this runs).
WORK = Path(os.environ.get("CLIPMILL_BENCH_WORK", "/tmp/clipmill-bench/crawl"))
RESULT = ROOT / "benchmarks" / "results" / "crawl.json"
MAX_PIXELS = 16_000_000  # images over 16 MP are left out of the list (see url_list)
DIRECTIVES = ["noai", "noimageai", "noindex", "noimageindex"]
OFFLINE_ENV = {
    "DO_NOT_TRACK": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "WANDB_MODE": "disabled",
    "HF_HUB_OFFLINE": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
}  # albumentations phones PyPI on import otherwise


def ensure_peer() -> Path:
    """img2dataset in its own venv (it would downgrade pandas and webdataset in ours)."""
    exe = PEER / "bin" / "img2dataset"
    if exe.exists():
        return exe
    print(f"creating {PEER} (img2dataset from PyPI) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER)], check=True)
    subprocess.run([str(PEER / "bin" / "pip"), "install", "-qq", *PEER_PINS], check=True)
    return exe


def extraction_rates(archives: dict) -> dict[str, dict[str, float]]:
    """Records/s of our WAT and WARC extractors on one core, every file of the sample in sequence."""
    from tasks.crawl.extract_warc import extract_warc
    from tasks.crawl.extract_wat import extract_wat

    out = {}
    for kind, fn in (("wat", extract_wat), ("warc", extract_warc)):
        records = refs = 0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for path in archives[kind]:
            res = fn(path)
            records, refs = records + res.records, refs + len(res.refs)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        out[kind] = {
            "records": records,
            "image_refs": refs,
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            # one thread: records per CPU-second = per core, even on a machine shared with others
            "records_per_s_per_core": round(records / max(cpu, 1e-9), 1),
            "records_per_s_wall": round(records / wall, 1),
        }
        print(
            f"{kind}: {records} records, {refs} image refs in {wall:.1f}s -> "
            f"{out[kind]['records_per_s_per_core']} records/s per core",
            flush=True,
        )
    return out


def _too_big(site: Path, rel: str) -> bool:
    """True for files over MAX_PIXELS (header only); such images are left out of the list."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = (
        None  # only the header is read; Pillow's own bomb check would hide the size
    )
    try:
        with Image.open(site / rel) as img:
            return img.size[0] * img.size[1] > MAX_PIXELS
    except (OSError, ValueError):
        return False  # missing (404) or not an image: both tools must handle it, keep it


def url_list(archives: dict, n: int, served: str, site: Path, path: Path) -> tuple[int, int]:
    """The first n (0 = all) image URLs, by uid, of the sample's WAT files, mapped onto the
    served site.

    Images over MAX_PIXELS are left out: img2dataset decodes them whole in up to 32 threads at
    once; on the sample's 105-623 MP openclipart renders one of its workers grew to
    16-21 GB, was OOM-killed on this shared 24 GB machine and left its pool hanging for good.
    (Ours bounds concurrent decodes and refuses > max_image_pixels as decompression bombs.)
    Leaving the 16 giant files out keeps the machine safe and the comparison about downloading.
    """
    import pandas as pd

    from tasks.crawl.extract_wat import extract_wat
    from tasks.crawl.records import merge_refs

    refs = merge_refs(r for f in archives["wat"] for r in extract_wat(f).refs)
    base = archives["base_url"].rstrip("/") + "/"
    refs = sorted((r for r in refs if r.url.startswith(base)), key=lambda r: r.uid)
    kept, dropped = [], 0
    for ref in refs:
        if n and len(kept) >= n:
            break
        if _too_big(site, ref.url[len(base) :]):
            dropped += 1
            continue
        kept.append(ref)
    urls = [served + r.url[len(base) :] for r in kept]
    pd.DataFrame({"url": urls, "caption": [r.text for r in kept]}).to_parquet(path)
    return len(urls), dropped


def run_timed(cmd: list[str], env: dict[str, str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("wb") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}); see {log}")
    return wall


def run_img2dataset(exe: Path, urls: Path, out: Path, a: argparse.Namespace) -> dict[str, float]:
    cmd = [
        str(exe),
        "--url_list",
        str(urls),
        "--input_format",
        "parquet",
        "--url_col",
        "url",
        "--caption_col",
        "caption",
        "--output_format",
        "webdataset",
        "--output_folder",
        str(out),
        "--processes_count",
        str(a.processes),
        "--thread_count",
        str(a.connections),
        "--number_sample_per_shard",
        str(a.shard_size),
        "--image_size",
        "256",
        "--resize_mode",
        "border",
        "--encode_format",
        "jpg",
        "--encode_quality",
        "95",
        "--retries",
        "0",
        "--timeout",
        "10",
        "--distributor",
        "multiprocessing",
        "--enable_wandb",
        "False",
        "--compute_hash",
        "sha256",
        "--disallowed_header_directives",
        json.dumps(DIRECTIVES),
    ]
    wall = run_timed(cmd, {**os.environ, **OFFLINE_ENV}, WORK / "img2dataset.log")
    stats = [json.loads(Path(p).read_text()) for p in glob.glob(str(out / "*_stats.json"))]
    ok = sum(s["successes"] for s in stats)
    return {
        "wall_s": round(wall, 2),
        "successes": ok,
        "count": sum(s["count"] for s in stats),
        "images_per_s": round(ok / wall, 2),
    }


def run_clipmill(urls: Path, out: Path, a: argparse.Namespace) -> dict[str, float]:
    import yaml

    params = yaml.safe_load((ROOT / "params/crawl.yaml").read_text())
    sections = {  # params/crawl.yaml's sections, updated field by field
        "inputs": {
            "sources": ["urls"],
            "url_lists": [str(urls)],
            "sample_site_dir": "",
            "archives_index": "",
            "shard_size": a.shard_size,
        },
        "policy": {"allow_addresses": ["127.0.0.1"], "disallowed_header_directives": DIRECTIVES},
        "download": {
            "shards_in_flight": a.processes,
            "connections_per_shard": a.connections,
            "cpus_per_shard": 1.0,
        },
        "http": {"connections_per_host": a.connections, "retries": 0, "total_timeout_s": 10.0},
        "resize": {
            "image_size": 256,
            "resize_mode": "border",
            "encode_format": "jpg",
            "encode_quality": 95,
        },
        "output": {
            "output_dir": str(out / "crawl"),
            "lancedb_uri": str(out / "lancedb"),
            "progress": False,
        },
    }
    for name, values in sections.items():
        params[name].update(values)
    pfile = WORK / "clipmill_params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "CLIPMILL_ROOT": str(out),
        "CLIPMILL_RAY_NUM_CPUS": str(a.processes),
        "CLIPMILL_MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}",
        "CLIPMILL_MLFLOW_ARTIFACT_ROOT": (out / "mlartifacts").as_uri(),
    }
    # A user's MLflow store exists before their crawl; creating a fresh SQLite store (schema
    # migrations, several seconds) is one-time set-up, not crawl work, so it happens untimed.
    init = "from tasks.tracking import configure_mlflow; configure_mlflow()"
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(ROOT / ".venv/bin/python"), "-c", init], env=env, check=True, cwd=ROOT)
    cmd = [str(ROOT / ".venv/bin/python"), "-m", "tasks.cli", "run", "crawl", "-p", str(pfile)]
    wall = run_timed(cmd, env, WORK / "clipmill.log")
    metrics = json.loads((out / "metrics" / "crawl.json").read_text())
    return {
        "wall_s": round(wall, 2),
        "successes": metrics["successes"],
        "count": metrics["count"],
        "images_per_s": round(metrics["successes"] / wall, 2),
        "download_phase_images_per_s": metrics["images_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample-dir", default=str(ROOT / "data" / "sample"))
    parser.add_argument("--n-urls", type=int, default=0, help="0 = every image of the site")
    parser.add_argument("--server", choices=("nginx", "python"), default="nginx")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per tool; best one counts")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=1000)
    a = parser.parse_args()

    from static_server import nginx_binary, nginx_site

    from tasks.crawl.gather import archive_index
    from tasks.io.serve import serve_site

    sample = Path(a.sample_dir)
    archives = archive_index(str(sample / "archives" / "index.json"))
    exe = ensure_peer()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    extraction = extraction_rates(archives)
    serve, server = serve_site, a.server
    if a.server == "nginx":
        try:
            nginx_binary()
            serve = nginx_site
        except Exception as exc:  # noqa: BLE001 - any failure to get nginx: say so, go on
            server = f"python (nginx unavailable: {exc})"
            print(f"WARNING: {server}; both tools get the Python server instead", flush=True)
    with serve(sample / "site") as served:
        n, dropped = url_list(archives, a.n_urls, served, sample / "site", WORK / "urls.parquet")
        if n < 5000:
            print(
                f"WARNING: only {n} image URLs in {sample} (the issue asks for 5,000+)", flush=True
            )
        for f in (sample / "site").rglob(
            "*"
        ):  # warm the page cache so neither tool pays for the disk
            if f.is_file():
                f.read_bytes()
        theirs_runs, ours_runs = [], []
        for i in range(a.repeat):  # alternate the tools; a noisy neighbour then hits both
            print(f"{n} URLs; round {i + 1}/{a.repeat}: img2dataset ...", flush=True)
            theirs_runs.append(
                run_img2dataset(exe, WORK / "urls.parquet", WORK / f"img2dataset_out_{i}", a)
            )
            print(f"img2dataset: {theirs_runs[-1]}\nclipmill ...", flush=True)
            ours_runs.append(run_clipmill(WORK / "urls.parquet", WORK / f"clipmill_out_{i}", a))
            print(f"clipmill: {ours_runs[-1]}", flush=True)
        # Best of the rounds for each tool: noise only ever slows a run down.
        theirs = max(theirs_runs, key=lambda r: r["images_per_s"])
        ours = max(ours_runs, key=lambda r: r["images_per_s"])

    def entry(o: float, b: float | None, unit: str, target: float | None, **extra: object) -> dict:
        return {
            "ours": o,
            "baseline": b,
            "ratio": round(o / b, 3) if b else None,
            "unit": unit,
            "target": target,
            **extra,
        }

    no_peer = (
        "no standalone WAT/WARC image extractor is benchmarked (cc2dataset needs Spark and "
        "kenlm); baseline left empty rather than invented"
    )
    result = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, {platform.python_version()}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "results": {
            "img2dataset": entry(
                ours["images_per_s"],
                theirs["images_per_s"],
                "images/s (wall, whole command)",
                2.0,
                urls=n,
                left_out_over_16mp=dropped,
                server=server,
                rounds=a.repeat,
                images_per_s_each_round={
                    "clipmill": [r["images_per_s"] for r in ours_runs],
                    "img2dataset": [r["images_per_s"] for r in theirs_runs],
                },
                processes=a.processes,
                connections=a.connections,
                clipmill=ours,
                img2dataset=theirs,
            ),
            "wat_extraction": entry(
                extraction["wat"]["records_per_s_per_core"],
                None,
                "records/s per core",
                None,
                note=no_peer,
                **{k: v for k, v in extraction["wat"].items()},
            ),
            "warc_extraction": entry(
                extraction["warc"]["records_per_s_per_core"],
                None,
                "records/s per core",
                None,
                note=no_peer,
                **{k: v for k, v in extraction["warc"].items()},
            ),
        },
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["results"]["img2dataset"], indent=2))


if __name__ == "__main__":
    main()
