"""Crawl-wide numbers from the per-shard _stats.json files, and the error-class histogram plot."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from tasks.crawl.errors import SUCCESS
from tasks.settings import join_uri


def read_all_stats(output_dir: str) -> list[dict[str, Any]]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(join_uri(output_dir, "shards"))
    if not fs.exists(path):
        return []
    return [json.loads(fs.cat_file(p)) for p in sorted(fs.glob(f"{path}/*_stats.json"))]


def summarize(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over shards: counts, success rate, bytes, and one `status_<class>` per status."""
    status: Counter[str] = Counter()
    for s in stats:
        status.update(s.get("status_dict", {}))
    count = sum(status.values())
    ok = status.get(SUCCESS, 0)
    out: dict[str, Any] = {
        "shards": len(stats),
        "count": count,
        "successes": ok,
        "success_rate": round(ok / count, 4) if count else 0.0,
        "failed_to_download": sum(s.get("failed_to_download", 0) for s in stats),
        "failed_to_resize": sum(s.get("failed_to_resize", 0) for s in stats),
        "bytes_downloaded": sum(s.get("bytes_downloaded", 0) for s in stats),
        "bytes_written": sum(s.get("bytes_written", 0) for s in stats),
    }
    out.update({f"status_{k}": v for k, v in sorted(status.items())})
    return out


def error_histogram(summary: dict[str, Any]) -> Any:
    """A horizontal bar chart of URLs per status (success included, for scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(
        ((k.removeprefix("status_"), v) for k, v in summary.items() if k.startswith("status_")),
        key=lambda kv: kv[1],
    )
    fig, ax = plt.subplots(figsize=(7, 0.4 * max(len(items), 3) + 1.2))
    if items:
        names, counts = zip(*items, strict=True)
        colors = ["tab:green" if n == SUCCESS else "tab:red" for n in names]
        ax.barh(names, counts, color=colors)
        for y, c in enumerate(counts):
            ax.text(c, y, f" {c}", va="center", fontsize=8)
    ax.set_xlabel("URLs")
    ax.set_title(
        f"crawl: {summary.get('successes', 0)}/{summary.get('count', 0)} images "
        f"({summary.get('success_rate', 0):.1%}) by status"
    )
    fig.tight_layout()
    return fig
