"""Typed parameters of the `decontaminate` stage: paths, the hash thresholds, the quality report,
compute. Crawl's resize settings are not repeated: the stage reads the `resize` section of
params/crawl.yaml (eval images are hashed as the crawl stored the pool's images).

The hash thresholds are declared once, in the library (tasks/decontam/params.py); curate's
decontaminate step reads this file's `match` section for its own hash matching. Here no embedding
gate follows, so a hash match alone flags (curate adds its gate later).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tasks.base import ParamsSection, StageParams
from tasks.decontam.params import HashMatchParams


class PathsParams(ParamsSection):
    """Where things are; relative paths resolve against the settings' root (tasks/io/paths.py)."""

    # fmt: off
    shards: str = "data/crawl/shards"  # webdataset *.tar shards checked (the crawl's; sample keys are uids)
    eval_dir: str = "data/sample/eval"  # CLIP_benchmark-layout eval sets; every set's test split is matched
    planted: str | None = "data/sample/eval/planted_near_duplicates.parquet"  # the sample's planted copies, for recall; None = no recall
    out_dir: str = "data/decontaminate"  # flagged_uids.parquet, planted_uids.parquet, summary.json
    # fmt: on


class QAParams(ParamsSection):
    """Report only: how the flags compare with the planted copies (never decides)."""

    # fmt: off
    lookalike_mad: float = Field(default=8.0, ge=0.0, le=255.0)  # a flagged non-planted image within this mean absolute 32x32 RGB difference of its eval image is a look-alike, not a false positive
    # fmt: on


class ComputeParams(ParamsSection):
    """How the work is cut and where it runs: Ray Data tasks, or a pool of local processes."""

    # fmt: off
    rows_per_block: int = Field(default=1000, ge=1)  # samples per task (read + hash), on Ray or in a local process
    ray: Literal["auto", "always", "never"] = "auto"  # Ray Data tasks: auto = only when joining a Ray cluster (RAY_ADDRESS); else local processes
    processes: int = Field(default=0, ge=0)  # local worker processes without Ray; 0 = one per CPU of this machine
    # fmt: on


class DecontaminateParams(StageParams):
    """Hash-only decontamination of the crawl against every eval set; see params/decontaminate.yaml."""

    # fmt: off
    paths: PathsParams = PathsParams()  # shards checked, eval sets, planted copies, outputs
    match: HashMatchParams = HashMatchParams()  # eval view and hash thresholds (the library's, read by curate too)
    qa: QAParams = QAParams()  # planted-copy report
    compute: ComputeParams = ComputeParams()  # tasks and where they run
    # fmt: on

    def needs_ray(self) -> bool:
        """Ray only when `compute.ray` is `always`, or `auto` joining a cluster (RAY_ADDRESS),
        whose workers add CPUs. On one machine the same tasks run on local processes
        (tasks/decontam/reading.py `hash_items`), so the runner starts no Ray: its daemons and
        workers cost CPU seconds on the same cores (boot, imports, the streaming executor's
        polling) and the outputs are the same (tests/decontaminate/test_stage.py)."""
        if self.compute.ray == "always":
            return True
        if self.compute.ray == "never":
            return False
        from tasks.settings import get_settings

        return get_settings().ray_address is not None

    def local_processes(self) -> int | None:
        """Worker processes of the local pool, or None for Ray tasks: Ray when this process has
        one up (the runner started it because `needs_ray`, or the caller did), unless
        `compute.ray` is `never`."""
        import sys

        ray = sys.modules.get("ray")  # never imported here only to ask (half a second)
        if self.compute.ray != "never" and ray is not None and ray.is_initialized():
            return None
        import os

        return self.compute.processes or os.cpu_count() or 1
