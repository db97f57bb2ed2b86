"""Tiny projects for the fault suites, one per stage, and what each stage's result is: the files
that must be identical to an uninterrupted run's, and the uids the result holds (to count lost
and duplicated ones).

Inputs come from the stages' own test fixtures (tests/curate, tests/recaption, tests/train,
tests/merge) so the fault suites exercise the data the stage tests already trust.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.faults.harness import StageProject, digest_tree


@dataclass
class Result:
    """What a finished stage left: comparable file digests, pool columns, and its uids."""

    files: dict[str, str]
    pool: list[dict[str, Any]]
    uids: list[str]


@dataclass
class Spec:
    """How to build a project for one stage and read its result."""

    stage: str
    out: str  # the DVC output (relative)
    build: Callable[[Path], StageProject]
    result: Callable[[StageProject], Result]
    # a path (relative to the root) that exists once the stage is doing its real work: kills
    # are timed from there, so a loaded machine's slow start does not push them past the end
    started: str
    # what a kill inside a write leaves, planted after the kill (it may land elsewhere): the
    # rerun must sweep it (relative paths; a temporary folder is planted with a file inside)
    planted: tuple[str, ...] = ()


def tar_keys(paths: list[Path]) -> list[str]:
    """Every sample key of the tars, duplicates kept (a duplicated uid shows as two keys)."""
    keys: list[str] = []
    for path in sorted(paths):
        with tarfile.open(fileobj=io.BytesIO(path.read_bytes())) as tar:
            names = {m.name.split(".", 1)[0] for m in tar.getmembers()}
            keys.extend(sorted(names))
    return keys


def pool_columns(root: Path, prefix: str) -> list[dict[str, Any]]:
    """uid + the pool's columns of `prefix`, sorted by uid (a stage's decisions in the pool)."""
    import lancedb

    table = lancedb.connect(str(root / "lancedb")).open_table("pool").to_arrow()
    cols = ["uid", *sorted(c for c in table.column_names if c.startswith(prefix))]
    return sorted(table.select(cols).to_pylist(), key=lambda r: r["uid"])


# --- curate -----------------------------------------------------------------------------------


def build_curate(root: Path) -> StageProject:
    """The curate tests' hand pool; the steps that need no CLIP model (one Ray Data actor pool
    for caption matching, Ray tasks for balancing), so a run costs little beyond Ray's start."""
    from tests.curate.conftest import build_pool

    hp = build_pool(root)
    project = StageProject(root, "curate", "data/curate", deps=["crawl", "eval"])
    project.write_params(
        {
            "paths.crawl_dir": "crawl",
            "paths.out_dir": "data/curate",
            "paths.clip_model": None,
            "paths.eval_dir": "eval",
            "steps": ["basic", "exact_dedup", "perceptual_dedup", "balance"],
            "metadata.wordnet": None,
            "metadata.extra": [str(hp.metadata)],
            "planted_qa.path": str(hp.planted),
            "balance.t": 8,
            "outputs.shard_size": 8,
            "outputs.report_examples": 2,
            "decontaminate.embed_threshold": None,
            "holdout.fraction": 0.25,
            "holdout.seed": 3,
        }
    )
    return project


def curate_result(project: StageProject) -> Result:
    out = project.root / project.out
    tars = [*out.glob("shards/*.tar"), *out.glob("holdout/*.tar")]
    return Result(
        files=digest_tree(out),
        pool=pool_columns(project.root, "curate_"),
        uids=tar_keys(tars),
    )


CURATE = Spec(
    "curate",
    "data/curate",
    build_curate,
    curate_result,
    started="data/curate",
    planted=("data/curate/shards/.bucket-00000.tar", "data/curate/.subset_uids.parquet.k1.tmp"),
)


# --- recaption --------------------------------------------------------------------------------


def build_recaption(root: Path) -> StageProject:
    """The recaption tests' pool (a dozen rows, blocks of 2) with the offline backends (tagger
    and composer) and a tiny random teacher."""
    from tests.recaption.conftest import build_pool

    alts = [f"a red dog number {i}" for i in range(12)]
    pool = build_pool(root, alts)
    project = StageProject(root, "recaption", "data/recaption", deps=["crawl"])
    over = pool.overrides(**{"compute.rows_per_block": 2, "report.examples": 0})
    # relative paths: the parts folder is named by a fingerprint of the params (wordnet's path
    # included), and the runs compared live in different roots
    over.update(
        {
            "paths.crawl_dir": "crawl",
            "paths.out_dir": "data/recaption",
            "paths.wordnet": pool.wordnet.relative_to(root).as_posix(),
        }
    )
    project.write_params(over)
    return project


def recaption_result(project: StageProject) -> Result:
    import pyarrow.parquet as pq

    out = project.root / project.out
    parts = sorted(out.glob("parts/*/*.parquet"))
    uids = [u for p in parts for u in pq.read_table(p).column("uid").to_pylist()]
    return Result(
        files=digest_tree(out, skip=lambda p: "report" in p.parts),
        pool=pool_columns(project.root, "recaption_"),
        uids=uids,
    )


RECAPTION = Spec(
    "recaption",
    "data/recaption",
    build_recaption,
    recaption_result,
    started="data/recaption",
    planted=("data/recaption/parts/.block-000000-k1.parquet.k1.tmp",),
)


# --- train ------------------------------------------------------------------------------------


def build_train(root: Path) -> StageProject:
    """The train tests' tiny shards and ViT: 12 steps, a checkpoint every 3, in local mode."""
    from tests.train.shards import write_shards

    write_shards(root / "shards")
    project = StageProject(root, "train", "data/models/train", deps=["shards"])
    project.write_params(
        {
            "model": "clipmill-tiny-vit",
            "shards": "shards",
            "exclude_uids": None,
            "feature_cache": False,
            "steps": 12,
            "batch_size": 16,
            "lr": 1e-3,
            "warmup_steps": 2,
            "checkpoint_every": 3,
            "run_root": "data/train_runs",
            "output_dir": "data/models/train",
            "registered_model_name": "",
            "shuffle_buffer": 16,
            "log_every": 1,
            "num_workers": 0,
            "distill.mode": "off",
        }
    )
    return project


def train_result(project: StageProject) -> Result:
    """The train stage promises bitwise-identical weights after a resume (tasks/train/
    checkpoints.py, tests/train/test_resume.py): the weights' bytes are compared exactly."""
    from safetensors.torch import load_file

    out = project.root / project.out
    weights = load_file(str(out / "model.safetensors"))
    files = {
        "model.safetensors": _tensor_digest(weights),
        "loss_history.json": digest_tree(out).get("loss_history.json", "missing"),
    }
    return Result(files=files, pool=[], uids=[])


def _tensor_digest(weights: dict[str, Any]) -> str:
    import hashlib

    h = hashlib.sha256()
    for key in sorted(weights):
        h.update(key.encode())
        h.update(weights[key].contiguous().numpy().tobytes())
    return h.hexdigest()


TRAIN = Spec(
    "train",
    "data/models/train",
    build_train,
    train_result,
    started="data/train_runs",
    planted=("data/models/.train.tmp_k1/model.safetensors",),
)


def build_train_ray(root: Path) -> StageProject:
    """The same tiny run on two Ray Train workers (gloo on CPU), restarted by Ray Train after a
    worker failure (`max_failures`), 24 steps so a worker kill can land after a checkpoint."""
    project = build_train(root)
    path = root / "params" / "train.yaml"
    import yaml

    from tests.faults.harness import set_dotted

    data = yaml.safe_load(path.read_text())
    over = {"num_workers": 2, "cpus_per_worker": 1.0, "max_failures": 2, "steps": 24}
    path.write_text(yaml.safe_dump(set_dotted(data, over), sort_keys=False))
    return project


def train_checkpointed(root: Path) -> bool:
    """A whole Ray Train checkpoint of the run is on disk (its files match its manifest): a
    worker killed now must resume from it, not from the start."""
    from tasks.train.checkpoints import CheckpointError, verify

    for folder in (root / "data/train_runs").glob("*/checkpoint_*"):
        try:
            verify(folder)
        except (CheckpointError, OSError, ValueError):
            continue
        return True
    return False


# The multi-worker mode: Ray Train workers (`ray::RayTrainWorker`), killed in the ray-worker case.
TRAIN_RAY = Spec(
    "train",
    "data/models/train",
    build_train_ray,
    train_result,
    started="data/train_runs",
)


# --- merge ------------------------------------------------------------------------------------


def build_merge(root: Path) -> StageProject:
    """A tiny open_clip base and three perturbed experts; the methods that need no held-out
    scoring."""
    from tests.merge.helpers import tiny_suite

    tiny_suite(root / "models", 3)
    project = StageProject(root, "merge", "data/merge", deps=["models"])
    project.write_params(
        {
            "inputs.base": "models/base",
            "inputs.models": ["models/expert0", "models/expert1", "models/expert2"],
            "methods": ["uniform_soup", "task_arithmetic", "ties", "opcm"],
            "opcm.orders": 2,
            "heldout.expert_sets": [],
            "outputs.out_dir": "data/merge",
            "outputs.registered_model_prefix": "",
            "heldout.report": False,
        }
    )
    return project


def merge_result(project: StageProject) -> Result:
    out = project.root / project.out
    return Result(files=digest_tree(out), pool=[], uids=[])


MERGE = Spec(
    "merge",
    "data/merge",
    build_merge,
    merge_result,
    started="data/merge",
    planted=("data/merge/.ties.tmp_k1/model.safetensors",),
)

SPECS = {s.stage: s for s in (CURATE, RECAPTION, TRAIN, MERGE)}
