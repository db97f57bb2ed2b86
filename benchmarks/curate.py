"""clipmill curate benchmarks -> benchmarks/results/curate.json.

1. matching_vs_naive / matching_vs_pyahocorasick: 1M generated texts against a 500k-entry
   metadata list (every WordNet lemma of data/sample plus generated bigrams), texts/s on ONE core.
   ours = tasks.curate.matching.MatchBatch (the stage's actor code) over Arrow batches;
   naive = MetaCLIP's reference per-entry `in` loop (timed on a subsample);
   pyahocorasick = MetaCLIP's own automaton loop (its str.replace spacing + automaton.iter).
   Both fast paths must return identical id sets (checked on every text).
2. balancing_10m_peak_rss_gb: 10M (text, entry) matches in parquet parts, balanced by the
   streaming map -> reduce -> map of tasks.curate.balancing in a fresh process; peak RSS (GB).
   baseline = the same maths with every match loaded in memory at once (one Arrow table).
3. semdedup_200k: 200k clustered 256-d unit vectors with planted near-duplicates. ours = the
   SemDeDup ANN path (spherical k-means + a LanceDB IVF_PQ index per cluster, k=10 neighbours);
   exact = brute-force top-10 over all 200k (faiss IndexFlatIP, timed on a query subsample and
   scaled). ours value = recall@10 of our neighbours against exact; ratio = speed-up.
   Kept for history: SemDeDup never searches globally, so 4. is the honest comparison.
4. semdedup_vs_cluster_exact: one k-means cluster of N 256-d unit vectors (planted near-duplicates
   included), for N in a sweep. ours = the stage's ANN path (tasks/curate/steps/semdedup.py
   ann_cluster_dups: LanceDB IVF_FLAT, ann_k neighbours, eps 0.01); baseline = SemDeDup's own
   per-cluster exact search (facebookresearch/SemDeDup: the cluster's full similarity matrix,
   diagonal zeroed, upper triangle, max per column; here in column blocks to bound memory, same
   arithmetic) timed on the same cluster. Reported: seconds of each, the speed-up, recall@10 of
   the ANN neighbours against the exact top-10, and the duplicates the ANN path finds of those the
   exact search finds. The smallest N from which the ANN path wins (faster, recall@10 >= 0.95)
   is what `semantic_dedup.ann_min_rows` is set to; the headline entry is the largest N measured.
Usage: .venv/bin/python benchmarks/curate.py [--quick] [--only semdedup_cluster]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = Path(
    os.environ.get("CLIPMILL_BENCH_WORK", "/tmp/clipmill-bench-curate")
)  # scratch, outside git
RESULT = ROOT / "benchmarks" / "results" / "curate.json"
WORDNET = ROOT / "data" / "sample" / "metadata" / "wordnet.parquet"
FILLER = [
    "a",
    "the",
    "of",
    "in",
    "on",
    "with",
    "and",
    "at",
    "by",
    "photo",
    "image",
    "picture",
    "view",
    "close",
    "up",
    "small",
    "large",
    "old",
    "new",
    "red",
    "blue",
]


def build_metadata(size: int, rng: random.Random) -> list[str]:
    """WordNet lemmas (underscores -> spaces), then generated bigrams of lemma words up to `size`."""
    from tasks.curate.metadata import merge_entries, wordnet_entries

    lemmas = list(merge_entries([wordnet_entries(WORDNET)]).entries) if WORDNET.exists() else []
    words = sorted({w for e in lemmas for w in e.split()} | set(FILLER)) or [
        f"w{i}" for i in range(20000)
    ]
    seen, out = set(lemmas), list(lemmas)
    while len(out) < size:
        b = f"{rng.choice(words)} {rng.choice(words)}"
        if b not in seen:
            seen.add(b)
            out.append(b)
    return out[:size]


def build_texts(n: int, entries: list[str], rng: random.Random) -> list[str]:
    """Alt-text-like strings: filler words, metadata entries, punctuation, some case changes."""
    punct = ["", "", "", ",", ".", "!", ":", "?"]
    texts = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(3, 14)):
            w = rng.choice(entries) if rng.random() < 0.4 else rng.choice(FILLER)
            parts.append((w.capitalize() if rng.random() < 0.1 else w) + rng.choice(punct))
        texts.append(" ".join(parts))
    return texts


def metaclip_spacing(text: str) -> str:
    """MetaCLIP's reference spacing, verbatim semantics (ten str.replace calls)."""
    spaced = f" {text} "
    for p in [",", ".", ";", ":", "?", "!", "`"]:
        spaced = spaced.replace(p, f" {p} ")
    for c in ["\t", "\n", "\r"]:
        spaced = spaced.replace(c, " ")
    return spaced


def bench_matching(n_texts: int, n_entries: int) -> dict:
    import ahocorasick
    import pyarrow as pa

    from tasks.curate.matching import MatchBatch, naive_match
    from tasks.curate.metadata import Metadata, save_metadata

    rng = random.Random(0)
    entries = build_metadata(n_entries, rng)
    texts = build_texts(n_texts, entries, rng)
    WORK.mkdir(parents=True, exist_ok=True)
    save_metadata(Metadata(tuple(entries)), WORK / "metadata.parquet")

    t0 = time.perf_counter()
    worker = MatchBatch(str(WORK / "metadata.parquet"), max_chars=100_000)
    build_s = time.perf_counter() - t0
    table = pa.table({"uid": [str(i) for i in range(n_texts)], "text": texts})
    t0 = time.process_time()
    ours = []
    for start in range(0, n_texts, 4096):
        ours.extend(worker(table.slice(start, 4096)).column("entry_ids").to_pylist())
    ours_s = time.process_time() - t0

    automaton = ahocorasick.Automaton()  # MetaCLIP's substr_matching with pyahocorasick
    for idx, key in enumerate(f" {e} " for e in entries):
        automaton.add_word(key, (idx, key))
    automaton.make_automaton()
    t0 = time.process_time()
    bare = []
    for text in texts:
        bare.append([idx for _, (idx, _) in automaton.iter(metaclip_spacing(text))])
    bare_s = time.process_time() - t0
    mismatches = sum(sorted(set(b)) != o for b, o in zip(bare, ours, strict=True))

    sub = texts[:30]
    t0 = time.process_time()
    naive = [naive_match(t, entries) for t in sub]
    naive_s = (time.process_time() - t0) / len(sub) * n_texts
    mismatches += sum(n != o for n, o in zip(naive, ours[: len(sub)], strict=True))
    if mismatches:
        raise SystemExit(f"matching disagrees with the references on {mismatches} texts")
    ours_tps, bare_tps, naive_tps = n_texts / ours_s, n_texts / bare_s, n_texts / naive_s
    print(
        f"matching: ours {ours_tps:,.0f} texts/s, pyahocorasick loop {bare_tps:,.0f}, naive {naive_tps:,.1f} "
        f"(automaton build {build_s:.1f}s, {sum(map(len, ours)) / n_texts:.2f} matches/text)",
        flush=True,
    )
    return {
        "matching_vs_naive": {
            "ours": ours_tps,
            "baseline": naive_tps,
            "ratio": ours_tps / naive_tps,
            "unit": "texts/s per core",
            "target": 100.0,
        },
        "matching_vs_pyahocorasick": {
            "ours": ours_tps,
            "baseline": bare_tps,
            "ratio": ours_tps / bare_tps,
            "unit": "texts/s per core",
            "target": 1 / 1.3,
        },
        "_matching_detail": {
            "texts": n_texts,
            "entries": len(entries),
            "automaton_build_s": build_s,
            "naive_subsample": len(sub),
        },
    }


def write_matches(n_matches: int, n_entries: int, parts: int) -> list[Path]:
    """~n_matches (text, entry) pairs, Zipf-distributed entries, 1-4 entries per text, in parquet parts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = WORK / "matches"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per_part = n_matches // parts
    paths = []
    for k in range(parts):
        path = out / f"part-{k:03d}.parquet"
        paths.append(path)
        if path.exists():
            continue
        lengths = rng.integers(1, 5, size=per_part // 2)
        lengths = lengths[: np.searchsorted(np.cumsum(lengths), per_part) + 1]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        # the j-th id of a text is shifted by j * n/4, so every text's ids form a SET (MetaCLIP semantics)
        position = np.arange(int(lengths.sum())) - np.repeat(offsets[:-1], lengths)
        ids = (
            (rng.zipf(1.3, size=int(lengths.sum())) - 1) % (n_entries // 4)
            + position * (n_entries // 4)
        ) % n_entries
        lists = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids.astype(np.int32)))
        uids = pa.array([f"{k:03d}-{i:09d}" for i in range(len(lengths))])
        pq.write_table(pa.table({"uid": uids, "entry_ids": lists}), path, row_group_size=262_144)
    return paths


# VmHWM (peak RSS of THIS process image): ru_maxrss would carry over the forking parent's peak.
HWM = "def hwm():\n    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])\n"

STREAMING = (
    HWM
    + """
import sys, numpy as np
sys.path.insert(0, {root!r})
from tasks.curate import balancing as bal
paths, n = {paths!r}, {n}
counts = np.zeros(n, dtype=np.int64)
for p in paths:
    counts += bal.count_file(p, n)
tmins = []
for i, p in enumerate(paths):
    out = p.replace('.parquet', '.tmin')
    bal.tmin_file(p, out, counts, seed=0)
import pyarrow.parquet as pq
tmin = np.concatenate([pq.read_table(p.replace('.parquet', '.tmin'), columns=['tmin']).column(0).to_numpy() for p in paths])
t = bal.find_t(tmin, len(tmin) // 4)
print(int(counts.sum()), len(tmin), t, hwm())
"""
)

IN_MEMORY = (
    HWM
    + """
import sys, numpy as np
sys.path.insert(0, {root!r})
import pyarrow as pa, pyarrow.parquet as pq
from tasks.curate import balancing as bal
paths, n = {paths!r}, {n}
table = pa.concat_tables([pq.read_table(p) for p in paths])
ids = table.column('entry_ids').to_pylist()
counts = np.zeros(n, dtype=np.int64)
for row in ids:
    counts[row] += 1
tmin = bal.pair_tmin(table.column('uid'), table.column('entry_ids'), counts, seed=0)
print(int(counts.sum()), len(tmin), bal.find_t(tmin, len(tmin) // 4), hwm())
"""
)


def bench_balancing(n_matches: int, n_entries: int) -> dict:
    paths = [str(p) for p in write_matches(n_matches, n_entries, parts=10)]
    results = {}
    for name, code in (("streaming", STREAMING), ("in_memory", IN_MEMORY)):
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", code.format(root=str(ROOT), paths=paths, n=n_entries)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        matches, texts, t, rss_kb = (int(x) for x in out)
        results[name] = {
            "gb": rss_kb / 1024**2,
            "s": time.perf_counter() - t0,
            "matches": matches,
            "texts": texts,
            "t": t,
        }
        print(
            f"balancing {name}: {matches:,} matches, {texts:,} texts, peak RSS {rss_kb / 1024**2:.2f} GB, "
            f"{results[name]['s']:.1f}s, t for 25% = {t}",
            flush=True,
        )
    ours, base = results["streaming"]["gb"], results["in_memory"]["gb"]
    return {
        "balancing_10m_peak_rss_gb": {
            "ours": ours,
            "baseline": base,
            "ratio": ours / base,
            "unit": "GB peak RSS",
            "target": 2.0,
        },
        "_balancing_detail": results,
    }


def clustered_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((64, dim)).astype(np.float32)
    x = centres[rng.integers(0, 64, n)] + 0.9 * rng.standard_normal((n, dim)).astype(np.float32)
    twins = rng.choice(n, n // 50, replace=False)
    x[twins[: len(twins) // 2]] = x[twins[len(twins) // 2 :]] + 0.01 * rng.standard_normal(
        (len(twins) // 2, dim)
    ).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def bench_semdedup(n: int, dim: int, clusters: int, queries: int) -> dict:
    import faiss

    from tasks.curate.steps.image_based import nearest, spherical_kmeans
    from tasks.curate.steps.semdedup import ann_neighbours

    rng = np.random.default_rng(0)
    x = clustered_vectors(n, dim, rng)
    k = 10
    t0 = time.perf_counter()
    centroids = spherical_kmeans(x, clusters, seed=0)
    cluster = nearest(x, centroids)
    neigh = np.full((n, k), -1, dtype=np.int64)
    for c in np.unique(cluster):
        members = np.flatnonzero(cluster == c)
        ids, _ = ann_neighbours(x[members], k, WORK / "ann", seed=0)
        neigh[members] = np.where(ids >= 0, members[np.clip(ids, 0, None)], -1)
    ours_s = time.perf_counter() - t0

    sample = rng.choice(n, queries, replace=False)
    index = faiss.IndexFlatIP(dim)
    index.add(x)
    t0 = time.perf_counter()
    _, exact = index.search(x[sample], k)
    exact_s = (time.perf_counter() - t0) / queries * n
    recall = float(np.mean([len(set(neigh[q]) & set(exact[j])) / k for j, q in enumerate(sample)]))
    # split the loss: ANN quality = recall against exact top-10 INSIDE the query's cluster
    in_cluster = []
    for q in sample:
        members = np.flatnonzero(cluster == cluster[q])
        top = members[np.argsort(-(x[members] @ x[q]))[:k]]
        in_cluster.append(len(set(neigh[q]) & set(top)) / k)
    ann_recall = float(np.mean(in_cluster))
    print(
        f"semdedup: ours {ours_s:.1f}s for {n:,} vectors (recall@10 {recall:.3f}); exact all-pairs "
        f"top-10 ~{exact_s:.1f}s (from {queries:,} queries); within-cluster recall@10 {ann_recall:.3f}",
        flush=True,
    )
    return {
        "semdedup_200k": {
            "ours": recall,
            "baseline": 1.0,
            "ratio": exact_s / ours_s,
            "unit": "recall@10 (ratio = speed-up over exact search)",
            "target": 0.9,
        },
        "_semdedup_detail": {
            "vectors": n,
            "dim": dim,
            "clusters": clusters,
            "ours_s": ours_s,
            "exact_s_extrapolated": exact_s,
            "exact_queries_timed": queries,
            "recall_at_10_within_cluster": ann_recall,
        },
    }


def semdedup_reference_max_sim(x: np.ndarray, block: int = 2048) -> np.ndarray:
    """SemDeDup's own per-cluster search (facebookresearch/SemDeDup, semdedup()): M[j] = the
    largest cosine of member j to any EARLIER member, from the full similarity matrix with its
    diagonal zeroed and only the upper triangle kept (torch.triu(sim, 1).max(dim=0)). Computed
    here in column blocks so a 50k-row cluster needs n x block floats, not n x n; same products."""
    import torch

    reps = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    n = len(reps)
    out = torch.empty(n)
    rows = torch.arange(n)[:, None]
    for start in range(0, n, block):
        cols = torch.arange(start, min(start + block, n))
        sim = reps @ reps[cols].T  # n x b: column j = member start + j
        sim[rows >= cols[None, :]] = 0.0  # triu(diagonal=1): only rows i < j, zero elsewhere
        out[cols] = sim.max(dim=0).values
    return out.numpy()


REFERENCE_MAX_ROWS = 20_000  # above: SemDeDup's exact search is not timed (the stage's is faster)


def bench_semdedup_cluster(
    sizes: list[int], dim: int, queries: int, previous: list[dict] | None = None
) -> dict:
    """ANN path vs SemDeDup's per-cluster exact search, one cluster per size (module docstring).
    Each size has its own seeded data, so rows of an earlier sweep (`previous`, merged by size)
    stand beside re-measured ones. Above REFERENCE_MAX_ROWS only the stage's exact path (same
    arithmetic, asserted equal below it, and faster) is timed against the ANN path."""
    import tasks.curate.steps.semdedup as sd
    from tasks.curate.params import SemanticDedupParams

    p = SemanticDedupParams()
    eps, k = p.eps, p.ann_k
    rng = np.random.default_rng(0)
    recorded: dict[str, np.ndarray] = {}
    original = sd.ann_neighbours

    def recording(
        x: np.ndarray, kk: int, workdir: Path, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        ids, cos = original(x, kk, workdir, seed)
        recorded["ids"] = ids
        return ids, cos

    warm = clustered_vectors(500, dim, rng)  # imports and first calls (torch, LanceDB) untimed
    semdedup_reference_max_sim(warm)
    sd.ann_cluster_dups(warm, eps, k, WORK / "ann_cluster", seed=0)
    sweep = []
    sd.ann_neighbours = recording  # the stage's function, its neighbours kept for recall
    try:
        for n in sizes:
            rng = np.random.default_rng(n)
            x = clustered_vectors(n, dim, rng)
            t0 = time.perf_counter()
            m_ref = semdedup_reference_max_sim(x) if n <= REFERENCE_MAX_ROWS else None
            ref_s = time.perf_counter() - t0 if m_ref is not None else None
            t0 = time.perf_counter()
            exact_dup, _, _ = sd.exact_cluster_dups(x, eps)
            exact_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            ann_dup, _, _ = sd.ann_cluster_dups(x, eps, k, WORK / "ann_cluster", seed=0)
            ann_s = time.perf_counter() - t0
            ids = recorded["ids"]
            sample = rng.choice(n, min(queries, n), replace=False)
            hits = 0
            for start in range(0, len(sample), 512):
                q = sample[start : start + 512]
                top = np.argpartition(-(x[q] @ x.T), 10, axis=1)[:, :10]
                hits += sum(len(set(t) & set(a[:10])) for t, a in zip(top, ids[q], strict=True))
            recall = hits / (10 * len(sample))
            ref_dup = exact_dup if m_ref is None else m_ref > 1 - eps
            assert np.array_equal(ref_dup, exact_dup), (
                "the stage's exact path differs from SemDeDup's"
            )
            dup_recall = float((ann_dup & ref_dup).sum() / max(1, ref_dup.sum()))
            row = {
                "rows": n,
                "semdedup_exact_s": ref_s,
                "stage_exact_s": exact_s,
                "ann_s": ann_s,
                "speedup": ref_s / ann_s if ref_s is not None else None,
                "recall_at_10": recall,
                "duplicates_exact": int(ref_dup.sum()),
                "duplicates_found_by_ann": dup_recall,
                "false_duplicates_ann": int((ann_dup & ~ref_dup).sum()),
            }
            print(f"semdedup cluster: {json.dumps(row)}", flush=True)
            sweep.append(row)
    finally:
        sd.ann_neighbours = original
    measured = {r["rows"] for r in sweep}
    sweep = sorted(
        [r for r in previous or [] if r["rows"] not in measured] + sweep, key=lambda r: r["rows"]
    )
    return summarize_semdedup_sweep(sweep, dim, eps, k, queries)


def summarize_semdedup_sweep(sweep: list[dict], dim: int, eps: float, k: int, queries: int) -> dict:
    """The headline entry (largest size) and the size from which the ANN path wins: faster than
    the exact path the stage would otherwise run (the faster of SemDeDup's and the stage's own,
    same arithmetic) with recall@10 >= 0.95, at that size and every larger one measured."""
    for r in sweep:
        r["speedup_vs_stage_exact"] = r["stage_exact_s"] / r["ann_s"]
    wins = [
        min(r["speedup"] or np.inf, r["speedup_vs_stage_exact"]) > 1.0 and r["recall_at_10"] >= 0.95
        for r in sweep
    ]
    first = next((i for i in range(len(sweep)) if all(wins[i:])), None)
    chosen = sweep[first]["rows"] if first is not None else None
    head = [r for r in sweep if r["speedup"] is not None][-1]
    return {
        "semdedup_vs_cluster_exact": {
            "ours": head["ann_s"],
            "baseline": head["semdedup_exact_s"],
            "ratio": head["speedup"],
            "unit": f"seconds for one {head['rows']:,}-row cluster (ratio = ANN speed-up over "
            "SemDeDup's per-cluster exact search)",
            "target": 1.0,
            "recall_at_10": head["recall_at_10"],
            "recall_target": 0.95,
        },
        "_semdedup_cluster_detail": {
            "dim": dim,
            "eps": eps,
            "ann_k": k,
            "recall_queries": queries,
            "sweep": sweep,
            "ann_wins_from_rows": chosen,
            "note": "ann_min_rows in params/curate.yaml is set from ann_wins_from_rows "
            "(above every measured size when the ANN path never wins)",
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, to check the script runs"
    )
    parser.add_argument(
        "--only",
        choices=["matching", "balancing", "semdedup", "semdedup_cluster"],
        default=None,
    )
    parser.add_argument(
        "--semdedup-sizes",
        type=int,
        nargs="+",
        default=None,
        help="cluster sizes to (re-)measure; other sizes of the last sweep are kept",
    )
    args = parser.parse_args()
    q = args.quick
    old = json.loads(RESULT.read_text()) if RESULT.exists() and args.only else {}
    results: dict = {**old.get("results", {})}
    results.update({f"_{k}": v for k, v in old.get("details", {}).items()})
    if args.only in (None, "matching"):
        results.update(bench_matching(20_000 if q else 1_000_000, 50_000 if q else 500_000))
    if args.only in (None, "balancing"):
        results.update(bench_balancing(200_000 if q else 10_000_000, 500_000))
    if args.only in (None, "semdedup"):
        results.update(bench_semdedup(20_000 if q else 200_000, 256, 16, 2_000 if q else 10_000))
    if args.only in (None, "semdedup_cluster"):
        sizes = args.semdedup_sizes or (
            [1_000, 4_000] if q else [2_000, 5_000, 10_000, 20_000, 40_000]
        )
        previous = old.get("details", {}).get("semdedup_cluster_detail", {}).get("sweep")
        results.update(bench_semdedup_cluster(sizes, 256, 500 if q else 2_000, previous))
    doc = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1024**3:.0f} GB",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": q,
        "results": {k: v for k, v in results.items() if not k.startswith("_")},
        "details": {k[1:]: v for k, v in results.items() if k.startswith("_")},  # sizes, timings
    }
    if not q:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
