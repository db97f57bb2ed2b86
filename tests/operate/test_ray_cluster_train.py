"""Ray Train and recaption on a real two-node Ray cluster, data in the S3-compatible bucket, no
shared disk.

The cluster is tests/operate/test_ray_cluster.py's (`start_cluster`: two `ray start` nodes on
loopback, one CPU each, the second node with an empty tmpfs over the driver's cache folder, as a
second machine's own disk, where the machine allows a mount namespace). Each stage runs through
the runner (`tasks.runner.run_stage`) in its own driver process, which joins the cluster with
`CLIPMILL_RAY_ADDRESS` and `CLIPMILL_DATA_ROOT=s3://clipmill/<run>`.

- train: 2 Ray Train workers of one CPU each on nodes of one CPU each, so one per node. Its
  inputs (the shards) come from the bucket on each node (tasks/io/nodefetch.py), Ray Train's
  storage (checkpoints, run state) is the bucket (`<data root>/train_runs`: Ray Train refuses a
  local storage path other nodes cannot see), and when rank 0 runs on the second node its
  exported model folder and run summary go up to the bucket (`publish`) for the driver. Checked:
  the Ray Train workers' node ids (Ray's state API) are both nodes, the model folder and the
  checkpoints are in the bucket, world size 2.
- recaption: an actor pool of 2 one-CPU actors (one per node); an actor on the second node
  fetches its crawl shard and WordNet file from the bucket and uploads each block's part and
  marker. Checked: actors on both nodes, parts written on the second node's own disk, and the
  same uids and annotations as the same input on one node (a local Ray).

Slow (two Ray starts, a cluster start and three stage runs: minutes on a loaded 2-core box).
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks import PROJECT_ROOT
from tests.operate import servers
from tests.operate.conftest import BUCKET, project_env
from tests.operate.test_ray_cluster import RayCluster, node_view, start_cluster
from tests.operate.test_s3_dataroot import _objects

pytestmark = pytest.mark.slow

# One driver process per stage run. spec: stage, overrides, local_cpus (0: join the cluster
# named by CLIPMILL_RAY_ADDRESS), dashboard (the state API: actors and alive nodes before and
# after the run), out (JSON written).
DRIVER = """
import json, sys
spec = json.load(open(sys.argv[1]))

def state():
    from ray.util.state import list_actors, list_nodes
    actors = list_actors(address=spec["dashboard"], limit=10000, detail=True,
                         raise_on_missing_output=False)
    nodes = [n.node_id for n in list_nodes(address=spec["dashboard"]) if n.state == "ALIVE"]
    return {"actors": {a.actor_id: {"class_name": a.class_name, "node_id": a.node_id}
                       for a in actors}, "nodes": nodes}

if spec["local_cpus"]:
    import ray
    for attempt in range(3):  # Ray waits 30 s (fixed) for its raylet: too short on a loaded box
        try:
            ray.init(num_cpus=spec["local_cpus"], object_store_memory=256 * 2**20,
                     include_dashboard=False)
            break
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == 2:
                raise
            ray.shutdown()
before = state() if spec["dashboard"] else None
from tasks.runner import run_stage
metrics = run_stage(spec["stage"], overrides=spec["overrides"], door="python")
out = {"metrics": metrics}
if before is not None:
    after = state()
    out["actors"] = [a for k, a in after["actors"].items() if k not in before["actors"]]
    out["nodes"] = after["nodes"]
open(spec["out"], "w").write(json.dumps(out, default=str))
"""


@pytest.fixture(scope="module")
def cluster(log_dir: Path, s3: servers.Server) -> Iterator[RayCluster]:
    temp = Path(f"/tmp/clipmill-ray-{secrets.token_hex(3)}")  # AF_UNIX paths: at most 107 bytes
    started = time.monotonic()
    c: RayCluster | None = None
    try:
        c = start_cluster(
            temp,
            log_dir,
            {**servers.s3_env(s3.url), "AWS_ALLOW_HTTP": "true", "PYTHONPATH": str(PROJECT_ROOT)},
            hidden=temp / "driver-cache",
        )
        print(f"second node's own disk over the driver's cache: {c.hidden is not None}")
        print(f"two-node Ray cluster up in {time.monotonic() - started:.0f} s at {c.address}")
        yield c
    finally:
        if c is not None:
            c.stop()
        shutil.rmtree(temp, ignore_errors=True)


def _root(tmp: Path, stage: str, deps: list[str], outs: list[Any]) -> Path:
    """A project folder for one stage: every params file, a dvc.yaml whose `stage` lists only
    the data deps this test puts in the bucket (the data root layer pulls exactly those)."""
    root = tmp / "root"
    (root / "params").mkdir(parents=True)
    for path in (PROJECT_ROOT / "params").glob("*.yaml"):
        shutil.copy(path, root / "params" / path.name)
    dvc = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    entry = dvc["stages"][stage]
    entry["deps"] = [d for d in entry["deps"] if not d.startswith("data/")] + deps
    entry["outs"] = outs
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {stage: entry}}, sort_keys=False))
    return root


def _fs(s3: servers.Server) -> Any:
    import s3fs

    return s3fs.S3FileSystem(
        key=servers.S3_KEY,
        secret=servers.S3_SECRET,
        client_kwargs={"endpoint_url": s3.url},
        skip_instance_cache=True,
    )


def _drive(
    tmp: Path,
    root: Path,
    s3: servers.Server,
    stage: str,
    overrides: dict[str, Any],
    cluster: RayCluster | None,
) -> dict[str, Any]:
    """Run `stage` in one driver process, on the cluster or (None) a local Ray of 2 CPUs."""
    data_root = f"s3://{BUCKET}/{tmp.name}"
    cache = cluster.hidden if cluster is not None and cluster.hidden else tmp / "cache"
    if cluster is not None:  # each run has its own data root: no file of one meets the other
        ray_env = {
            "CLIPMILL_RAY_ADDRESS": cluster.address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": cluster.env["RAY_AUTH_TOKEN"],
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
        }
    else:
        ray_env = {"RAY_AUTH_MODE": "disabled"}
    env = project_env(
        root,
        **servers.s3_env(s3.url),
        **ray_env,
        CLIPMILL_DATA_ROOT=data_root,
        CLIPMILL_DATA_CACHE=str(cache),
        AWS_ALLOW_HTTP="true",  # LanceDB's object store talks plain HTTP to the test server
        # Ray Data hands blocks to the first actor that is up: without waiting for the pool's
        # minimum, the tiny input is done before the second node's actor has loaded its model
        RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S="600",
    )
    env["PYTHONPATH"] = str(PROJECT_ROOT)  # the checkout's code; root holds params and outputs
    spec = {
        "stage": stage,
        "overrides": overrides,
        "local_cpus": 0 if cluster else 2,
        "dashboard": cluster.dashboard if cluster else None,
        "out": str(tmp / "driver-out.json"),
    }
    (tmp / "driver.json").write_text(json.dumps(spec))
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp / "driver.json")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    where = "two nodes" if cluster else "one node"
    print(f"{stage} on {where}: {time.monotonic() - started:.0f} s")
    assert proc.returncode == 0, f"driver failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    out: dict[str, Any] = json.loads((tmp / "driver-out.json").read_text())
    out.update(prefix=tmp.name, data_root=data_root, cache=cache)
    return out


# -- train -----------------------------------------------------------------------------------

TRAIN = {
    "model": "clipmill-tiny-vit",
    "exclude_uids": None,
    "steps": 3,
    "batch_size": 8,
    "warmup_steps": 1,
    "checkpoint_every": 2,
    "shuffle_buffer": 16,
    "num_workers": 2,
    "cpus_per_worker": 1.0,
}


@pytest.fixture(scope="module")
def trained(
    cluster: RayCluster, s3: servers.Server, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    from tests.train.shards import write_shards

    tmp = tmp_path_factory.mktemp("train-two-node")
    shards = write_shards(tmp / "shards", n_shards=2, per_shard=16, size=32)
    _fs(s3).put(str(shards) + "/", f"{BUCKET}/{tmp.name}/curate/shards", recursive=True)
    root = _root(tmp, "train", ["data/curate/shards"], ["data/models/train"])
    out = _drive(tmp, root, s3, "train", TRAIN, cluster)
    if cluster.hidden is not None:  # rank 0 there: it exported onto its own disk, then uploaded
        view = node_view(cluster, 1, cluster.hidden)
        out["node_b_files"] = sorted(
            p.relative_to(view).as_posix() for p in view.rglob("*") if p.is_file()
        )
        print("train files on the second node's own disk:", out["node_b_files"])
    return out


def test_train_ran_one_ray_train_worker_on_each_node(trained: dict[str, Any]) -> None:
    nodes = set(trained["nodes"])
    assert len(nodes) == 2, trained["nodes"]
    workers = [a for a in trained["actors"] if "RayTrainWorker" in a["class_name"]]
    assert len(workers) == 2, trained["actors"]
    assert {w["node_id"] for w in workers} == nodes, workers
    assert trained["metrics"]["world_size"] == 2
    if "node_b_files" in trained:  # the second node read the shards from the bucket
        fetched = {f for f in trained["node_b_files"] if f.startswith("curate/shards/")}
        assert fetched == {"curate/shards/00000.tar", "curate/shards/00001.tar"}, fetched


def test_train_model_and_checkpoints_are_in_the_bucket(
    trained: dict[str, Any], s3: servers.Server
) -> None:
    prefix = trained["prefix"]
    model = {k.removeprefix(f"{prefix}/models/train/") for k in _objects(s3.url, prefix + "/")}
    for name in ("model.safetensors", "open_clip_config.json", "checkpoint.pt"):
        assert name in model, sorted(model)
    runs = _objects(s3.url, f"{prefix}/train_runs/")
    # <prefix>/train_runs/<run>/checkpoint_<step>/<file>: the checkpoint folders Ray Train kept
    ckpts = {k.split("/")[3] for k in runs if k.count("/") == 4 and "/checkpoint_0" in k}
    assert ckpts == {"checkpoint_00000002", "checkpoint_00000003"}, sorted(runs)


# -- recaption -------------------------------------------------------------------------------

ALTS = [f"a red fox number {i}" for i in range(12)]
RECAPTION = {
    "paths.teacher": "random:clipmill-tiny",
    "tagger.vocabulary": "all",
    "tagger.pool_only": False,  # the tiny pool names too few nouns
    "tagger.negative_min_rank": 3,
    "tagger.top_k": 2,
    "tagger.negatives": 2,
    "compute.rows_per_block": 2,
    "compute.batch_size": 2,
    "compute.torch_threads": 1,
    "compute.min_actors": 2,
    "compute.max_actors": 2,
    "compute.cpus_per_actor": 1.0,
    "report.examples": 2,
}


def _recaption(tmp: Path, s3: servers.Server, cluster: RayCluster | None) -> dict[str, Any]:
    """tests/recaption's tiny pool (crawl shard, LanceDB pool, WordNet file) in the bucket at
    the sample and crawl stages' places, then the recaption stage."""
    from tests.recaption.conftest import build_pool

    pool = build_pool(tmp / "pool", alts=ALTS)
    fs, base = _fs(s3), f"{BUCKET}/{tmp.name}"
    fs.put(str(pool.crawl_dir) + "/", f"{base}/crawl", recursive=True)
    fs.put(pool.lance_uri + "/", f"{base}/lancedb", recursive=True)
    fs.put_file(str(pool.wordnet), f"{base}/sample/metadata/wordnet.parquet")
    # select.exclude_uids (params default): decontaminate's list, read from the bucket
    fs.put_file(
        str(pool.root / "flagged_uids.parquet"), f"{base}/decontaminate/flagged_uids.parquet"
    )
    root = _root(
        tmp,
        "recaption",
        ["data/crawl", "data/decontaminate/flagged_uids.parquet", "data/sample/metadata"],
        [{"data/recaption": {"persist": True}}],
    )
    out = _drive(tmp, root, s3, "recaption", RECAPTION, cluster)
    out["good"] = pool.good
    return out


@pytest.fixture(scope="module")
def recaption_one(s3: servers.Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The input on one node (first, before the cluster's processes load the machine)."""
    return _recaption(tmp_path_factory.mktemp("recaption-one-node"), s3, None)


@pytest.fixture(scope="module")
def recaption_two(
    recaption_one: dict[str, Any],
    cluster: RayCluster,
    s3: servers.Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    out = _recaption(tmp_path_factory.mktemp("recaption-two-node"), s3, cluster)
    if cluster.hidden is not None:  # what the second node's actor left on its own disk
        view = node_view(cluster, 1, cluster.hidden)
        out["node_b_files"] = sorted(
            p.relative_to(view).as_posix() for p in view.rglob("*") if p.is_file()
        )
    return out


def _annotations(run: dict[str, Any], s3: servers.Server) -> dict[str, tuple[Any, ...]]:
    """uid -> the recaption columns (texts, tags, error) of the pool in the bucket."""
    import lancedb

    db = lancedb.connect(
        f"{run['data_root']}/lancedb",
        storage_options={
            "aws_access_key_id": servers.S3_KEY,
            "aws_secret_access_key": servers.S3_SECRET,
            "aws_endpoint": s3.url,
            "aws_region": "us-east-1",
            "allow_http": "true",
        },
    )
    cols = ("long_positive", "long_negative", "short_positive", "short_negative", "error")
    rows = db.open_table("pool").to_arrow().to_pylist()
    return {
        r["uid"]: tuple(r[f"recaption_{c}"] for c in cols)
        for r in rows
        if r["recaption_long_positive"] is not None or r["recaption_error"] is not None
    }


def test_recaption_actors_ran_on_both_nodes(recaption_two: dict[str, Any]) -> None:
    nodes = set(recaption_two["nodes"])
    assert len(nodes) == 2, recaption_two["nodes"]
    actors = [a for a in recaption_two["actors"] if "MapWorker" in a["class_name"]]
    assert {a["node_id"] for a in actors} == nodes, recaption_two["actors"]
    if "node_b_files" in recaption_two:  # its blocks: written on its own disk, then uploaded
        parts = [f for f in recaption_two["node_b_files"] if f.startswith("recaption/parts/")]
        assert any(f.endswith(".parquet") for f in parts), recaption_two["node_b_files"]


def test_recaption_same_uids_and_annotations_as_one_node(
    recaption_two: dict[str, Any], recaption_one: dict[str, Any], s3: servers.Server
) -> None:
    two, one = _annotations(recaption_two, s3), _annotations(recaption_one, s3)
    annotated = {u for u, a in two.items() if a[0]}
    assert annotated == set(recaption_two["good"]), sorted(two)
    assert two == one
    for key in ("rows_selected", "rows_annotated", "rows_with_error"):
        assert recaption_two["metrics"][key] == recaption_one["metrics"][key], key
    assert recaption_two["metrics"]["rows_annotated"] > 0
