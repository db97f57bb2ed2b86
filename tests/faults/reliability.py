"""One JSON line per fault-injection case, for the generator of docs/RELIABILITY.md.

Why a file of lines: the fault suites run in separate pytest processes (and some cases only under
`-m slow`); each case appends what it survived to the file named by `CLIPMILL_RELIABILITY_LOG`, and
the report generator reads every line afterwards. Unset, `record` does nothing, so an ordinary test
run writes nothing anywhere.

A line: {"stage", "door", "case", "outcome", "uids_lost", "uids_duplicated", "kills", "time"}
- stage: the pipeline stage ("crawl", "curate", "recaption", "train", "merge")
- door: how it was run ("cli", "dvc", "prefect", "ray-worker")
- case: a short name of the case ("sigkill seed 1", "sigterm", "kill a ray worker")
- outcome: "passed" or "failed: <why>"
- uids_lost / uids_duplicated: counts against an uninterrupted run (must be 0)
- kills: how many signals the stage survived in this case
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

ENV = "CLIPMILL_RELIABILITY_LOG"


def record(
    stage: str,
    door: str,
    case: str,
    outcome: str,
    uids_lost: int,
    uids_duplicated: int,
    kills: int,
) -> None:
    """Append one case's outcome to `$CLIPMILL_RELIABILITY_LOG` (nothing when it is unset).

    The line is written with one `write` under an exclusive lock, so suites running side by side
    never interleave their lines."""
    target = os.environ.get(ENV, "")
    if not target:
        return
    line = json.dumps(
        {
            "stage": stage,
            "door": door,
            "case": case,
            "outcome": outcome,
            "uids_lost": int(uids_lost),
            "uids_duplicated": int(uids_duplicated),
            "kills": int(kills),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        sort_keys=True,
    )
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.write(line + "\n")
            handle.flush()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read(path: str | Path) -> list[dict[str, object]]:
    """Every recorded line of `path` (the generator's reader; blank lines skipped)."""
    return [
        json.loads(line)
        for line in Path(path).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


def lost_and_duplicated(expected: list[str], got: list[str]) -> tuple[int, int]:
    """How many of `expected` uids are missing from `got`, and how many extra copies `got` holds
    (a uid present n > 1 times counts n - 1; uids not expected at all count as duplicated too,
    since they are rows the uninterrupted run does not have)."""
    from collections import Counter

    want = Counter(expected)
    have = Counter(got)
    lost = sum(max(0, n - have[u]) for u, n in want.items())
    extra = sum(max(0, n - want[u]) for u, n in have.items())
    return lost, extra
