"""crawl and curate on a real two-node Ray cluster, with their data on the S3-compatible server.

The cluster is two `ray start` calls on this machine, each its own node (its own raylet, object
store, workers and `--temp-dir`): `ray start --head --num-cpus=1 --resources={"node_a": 1}`, then
`ray start --address=HEAD --num-cpus=1 --resources={"node_b": 1}`. With one CPU per node and two
shard tasks in flight, the crawl cannot finish on one node alone; the test still reads where
each task ran rather than assuming it: Ray's state API (`ray.util.state.list_tasks`, served by
the head's dashboard) lists every task of the run with its node id.

What Ray 2.60 needs for that on one machine, found here:
- token authentication: a head started by `ray start` turns it on by itself when
  `~/.ray/auth_token` exists, and a joining `ray start` then fails with "InvalidAuthToken"; so
  every process of the test (both nodes, the stage drivers) gets `RAY_AUTH_MODE=token` and a
  fresh `RAY_AUTH_TOKEN` of its own (as a real cluster would), and nothing under `~/.ray`;
- `--node-ip-address=127.0.0.1` is rewritten by Ray to the machine's own address
  (`services.resolve_ip_for_localhost`), so the nodes talk over this machine's interface; every
  port is chosen free (GCS, dashboard, dashboard agent, client server) so runs do not collide;
- `ray stop` is not used: it stops every Ray process on the machine, other users' included.
  Each `ray start` runs in its own process group; the finalizer signals those groups and the
  workers their raylets started (tests/operate/servers.py's way for the other servers);
- `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (tests/conftest.py's setting for a local Ray on
  loopback) makes a joining `ray start` refuse ("Multi-node Ray clusters are not supported"):
  the nodes and drivers get 1. tasks/raysession.py sets 0 only when it starts a local Ray;
- Ray waits a fixed 30 s for a starting raylet to register; on a loaded machine that runs out,
  so a start that timed out so is tried again (up to 3 times).

Measured here (2 cores shared, load average ~31): one-node crawl + curate 127 s, two nodes up
in 61 s, two-node crawl + curate 122 s; the module 5 min 53 s. The manifest test takes 2 s.

The stages run through the runner (`tasks.runner.run_stage`, what `clipmill run` calls) in one
driver process per run, which joins the cluster through `CLIPMILL_RAY_ADDRESS` (tasks/settings.py,
tasks/raysession.py). Both run with `CLIPMILL_DATA_ROOT=s3://clipmill/<run>`: the crawl's input
(the sample site and archives, uploaded to `<run>/sample`) comes through the runner's cache
(tasks/io/dataroot.py), its shards and the LanceDB pool go straight into the bucket from the
shard tasks on both nodes; curate's data dep is the crawl (this run's dvc.yaml lists only that:
no teacher, recaption or eval sets are made here), downloaded into the driver's cache. The
second node does not share that cache: where the machine allows a mount namespace (root, or
unprivileged user namespaces) it runs with an empty tmpfs over the driver's cache folder, as a
second machine's own disk, so its curate tasks must fetch the shards they read from the bucket
(tasks/io/nodefetch.py) and get balancing's parts through Ray's object store. The same input
runs first on one node (a local Ray): the uids the crawl wrote and every curate decision must be
equal.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks import PROJECT_ROOT
from tests.crawl.sitegen import build_sample
from tests.operate import servers
from tests.operate.conftest import BUCKET, project_env

RAY = str(Path(sys.executable).with_name("ray"))
NODE_START_TIMEOUT_S = 180


@dataclass
class RayCluster:
    """A cluster started by `ray start` calls: its address, dashboard and process groups."""

    address: str
    dashboard: str
    env: dict[str, str]  # what a driver of this cluster needs (the token among it)
    groups: list[int] = field(default_factory=list)  # process group of each `ray start`
    logs: list[Path] = field(default_factory=list)
    # the driver's cache folder, which the second node sees as its own empty disk (a tmpfs in
    # its own mount namespace), as a second machine would; None where no namespace can be made
    hidden: Path | None = None

    def stop(self) -> None:
        _stop_groups(self.groups)


def _stop_groups(groups: list[int]) -> None:
    """SIGTERM every process of these `ray start` groups and every descendant (the workers a
    raylet starts get groups of their own), SIGKILL what is left after 15 s."""
    import psutil

    found: dict[int, Any] = {}
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if os.getpgid(proc.pid) in groups:
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
    procs = list(found.values())
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def _ray_start(
    args: list[str], env: dict[str, str], log: Path, groups: list[int], prefix: list[str]
) -> None:
    """Run one `ray start` in a new process group, added to `groups` at once (the daemons it
    starts stay in it, so a start that fails or hangs is stopped with the rest). Ray waits a
    fixed 30 s for a node's raylet to register: on a loaded machine that can run out, and the
    start is tried again (after stopping what the failed one left)."""
    for attempt in range(3):
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [*prefix, RAY, "start", *args, "--disable-usage-stats"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        groups.append(proc.pid)
        try:
            code = proc.wait(timeout=NODE_START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
        if code == 0:
            return
        tail = log.read_text(errors="replace")[-4000:]
        if "timed out during startup" not in tail or attempt == 2:
            raise RuntimeError(f"ray start {args} ended with {code}:\n{tail}")
        _stop_groups([groups.pop()])


_MOUNT = 'mount -t tmpfs clipmill-node-disk "$0" && exec "$@"'


def own_disk_prefix(folder: Path) -> list[str] | None:
    """The command prefix that runs a process in its own mount namespace with an empty tmpfs
    over `folder` (what it starts inherits both): root's `unshare -m`, else an unprivileged user
    namespace (`unshare -rm`); None where this machine allows neither."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    for flags in (["-m"], ["-r", "-m"]):
        prefix = [unshare, *flags, "--propagation", "private", "sh", "-c", _MOUNT, str(folder)]
        probe = subprocess.run([*prefix, "true"], capture_output=True)
        if probe.returncode == 0:
            return prefix
    return None


def node_view(cluster: RayCluster, node: int, path: Path) -> Path:
    """`path` as the processes of node `node` see it (/proc/PID/root: their mount namespace)."""
    import psutil

    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == cluster.groups[node]:
                return Path(f"/proc/{proc.pid}/root") / path.relative_to("/")
    raise AssertionError(f"no process of node {node} is alive")


def start_cluster(
    temp: Path, log_dir: Path, node_env: dict[str, str], nodes: int = 2, hidden: Path | None = None
) -> RayCluster:
    """A head and `nodes - 1` workers, one CPU each, on free ports, with their own token.
    `node_env`: what the nodes' workers need besides (the object store's credentials).
    `hidden`: a folder (the driver's data cache) that the non-head nodes each see as their own
    empty disk, where the machine allows a mount namespace (`RayCluster.hidden` says)."""
    env = {
        **os.environ,
        **node_env,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        # tests/conftest.py sets 0 (a local Ray on loopback only), which refuses to join nodes
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
    }
    env.pop("RAY_ADDRESS", None)
    env.pop("CLIPMILL_RAY_ADDRESS", None)
    port, dash = servers.free_port(), servers.free_port()
    cluster = RayCluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", env)
    own_disk = own_disk_prefix(hidden) if hidden is not None else None
    cluster.hidden = hidden if own_disk is not None else None
    common = ["--num-cpus=1", "--object-store-memory=200000000", "--node-ip-address=127.0.0.1"]
    try:
        for i in range(nodes):
            name = "node_" + "abcdefgh"[i]
            folder = temp / name  # a node's sockets live here: keep the path short
            args = [
                *common,
                f"--temp-dir={folder}",
                f"--resources={json.dumps({name: 1})}",
                f"--dashboard-agent-listen-port={servers.free_port()}",
            ]
            if i == 0:
                args += [
                    "--head",
                    f"--port={port}",
                    "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dash}",
                    f"--ray-client-server-port={servers.free_port()}",
                ]
            else:
                args += [f"--address={cluster.address}"]
            log = log_dir / f"ray-{name}.log"
            cluster.logs.append(log)
            _ray_start(args, env, log, cluster.groups, own_disk if i and own_disk else [])
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="module")
def cluster(log_dir: Path, s3: servers.Server) -> Iterator[RayCluster]:
    temp = Path(f"/tmp/clipmill-ray-{secrets.token_hex(3)}")  # AF_UNIX paths: at most 107 bytes
    started = time.monotonic()
    c: RayCluster | None = None
    try:
        # every node reads and writes the bucket: its credentials and endpoint are in the nodes'
        # environment (on Kubernetes: infra/kuberay's envFrom secret), never shipped by a driver
        c = start_cluster(
            temp,
            log_dir,
            # the nodes' workers import the code the drivers run (this checkout's)
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


# MetaCLIP entries of the generated site's captions ("a red fox number 3", "ein Fuchs ...")
METADATA = ["fox", "red fox", "Fuchs", "Wald", "logo", "late fox", "number"]


def _stage_env(root: Path, s3: servers.Server, extra: dict[str, str]) -> dict[str, str]:
    env = project_env(root, **servers.s3_env(s3.url), **extra)
    env["PYTHONPATH"] = str(PROJECT_ROOT)  # the checkout's code; root holds params and outputs
    env["AWS_ALLOW_HTTP"] = "true"  # LanceDB's object store talks plain HTTP to the test server
    return env


# One driver process per pipeline run: each `run_stage` goes through the runner, which joins
# the cluster named by CLIPMILL_RAY_ADDRESS (tasks/raysession.py) as its own Ray job; for the
# one-node run a local Ray is started first and both stages join it (one start, not two: on a
# loaded 2-core machine a Ray start is the slowest part). Steps: ["stage", name, overrides],
# ["tasks", dashboard URL, output JSON: the tasks and the
# alive nodes the state API lists], ["env", {name: value or None}] (for the next stages).
DRIVER = """
import json, sys
spec = json.load(open(sys.argv[1]))
if spec["local_cpus"]:
    import ray
    for attempt in range(3):  # Ray waits 30 s (fixed) for its raylet: too short on a loaded CI box
        try:
            ray.init(num_cpus=spec["local_cpus"], object_store_memory=256 * 2**20,
                     include_dashboard=False)
            break
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == 2:
                raise
            ray.shutdown()
from tasks.runner import run_stage
for step in spec["steps"]:
    if step[0] == "env":  # the settings of the next stages
        import os
        from tasks.settings import get_settings
        for key, value in step[1].items():
            os.environ.pop(key, None) if value is None else os.environ.update({key: value})
        get_settings.cache_clear()
    elif step[0] == "stage":
        run_stage(step[1], overrides=step[2], door="python")
    elif step[0] == "tasks":
        from ray.util.state import list_tasks
        found = list_tasks(address=step[1], limit=10000, detail=True, raise_on_missing_output=False)
        keys = ("name", "node_id", "job_id", "state", "type")
        rows = [{k: getattr(t, k) for k in keys} for t in found]
        from ray.util.state import list_nodes
        nodes = [n.node_id for n in list_nodes(address=step[1]) if n.state == "ALIVE"]
        open(step[2], "w").write(json.dumps({"tasks": rows, "nodes": nodes}))
"""


def _pipeline(
    tmp: Path, s3: servers.Server, ray_env: dict[str, str], cluster: RayCluster | None
) -> dict[str, Any]:
    """crawl (shards + pool in the bucket) then curate (pool in the bucket), one driver process;
    on a cluster, the tasks the state API lists after each stage."""
    import s3fs

    prefix = tmp.name
    data_root = f"s3://{BUCKET}/{prefix}"
    root = tmp / "root"
    (root / "params").mkdir(parents=True)
    for path in (PROJECT_ROOT / "params").glob("*.yaml"):
        shutil.copy(path, root / "params" / path.name)
    # the data root layer reads the stages' data deps from dvc.yaml: this two-stage run's
    # curate reads the crawl only (no teacher, recaption or eval sets: see its params below)
    dvc = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    deps = dvc["stages"]["curate"]["deps"]
    dvc["stages"]["curate"]["deps"] = [d for d in deps if not d.startswith("data/")] + [
        "data/crawl"
    ]
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    fs = s3fs.S3FileSystem(
        key=servers.S3_KEY, secret=servers.S3_SECRET, client_kwargs={"endpoint_url": s3.url}
    )
    site = tmp / "sample"  # the sample stage's layout: site/, archives/
    build_sample(site)
    fs.put(str(site) + "/", f"{BUCKET}/{prefix}/sample", recursive=True)
    crawl_uri, lance_uri = f"{data_root}/crawl", f"{data_root}/lancedb"
    metadata = tmp / "metadata.txt"
    metadata.write_text("\n".join(METADATA) + "\n")
    # crawl's default paths under CLIPMILL_DATA_ROOT: data/sample comes from the bucket through
    # the runner's cache, data/crawl and the pool are written straight into the bucket
    crawl = {
        "inputs.shard_size": 3,
        "output.progress": False,
        "http.retries": 0,
        "download.shards_in_flight": 2,
        "download.cpus_per_shard": 1.0,
    }
    curate = {
        "steps": ["basic", "exact_dedup", "perceptual_dedup", "balance"],
        "paths.clip_model": None,
        "paths.decontaminate_dir": None,
        "metadata.wordnet": None,
        "metadata.extra": [str(metadata)],
        "planted_qa.path": None,
        "balance.t": 2,
        "holdout.fraction": 0.25,
        "outputs.shard_size": 4,
        "outputs.report_examples": 0,
    }
    # on the cluster the driver's cache is the folder the second node cannot see
    cache = cluster.hidden if cluster is not None and cluster.hidden else tmp / "cache"
    shared = {"CLIPMILL_DATA_ROOT": data_root, "CLIPMILL_DATA_CACHE": str(cache)}
    steps: list[list[Any]] = [["env", shared], ["stage", "crawl", crawl]]
    if cluster is not None:
        steps.append(["tasks", cluster.dashboard, str(tmp / "tasks-crawl.json")])
    steps += [["stage", "curate", curate]]
    if cluster is not None:
        steps.append(["tasks", cluster.dashboard, str(tmp / "tasks-all.json")])
    spec = {"local_cpus": 0 if cluster else 2, "steps": steps}
    (tmp / "driver.json").write_text(json.dumps(spec))
    env = _stage_env(root, s3, ray_env)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp / "driver.json")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(f"crawl + curate on {'two nodes' if cluster else 'one node'}: ", end="")
    print(f"{time.monotonic() - started:.0f} s")
    assert proc.returncode == 0, f"driver failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    out: dict[str, Any] = {"tmp": tmp, "crawl_uri": crawl_uri, "lance_uri": lance_uri, "fs": fs}
    out["cache"], out["data_root"] = cache, data_root
    if cluster is not None:
        crawl_tasks = json.loads((tmp / "tasks-crawl.json").read_text())["tasks"]
        after = json.loads((tmp / "tasks-all.json").read_text())
        crawl_jobs = {t["job_id"] for t in crawl_tasks}
        out["crawl_tasks"] = crawl_tasks
        out["curate_tasks"] = [t for t in after["tasks"] if t["job_id"] not in crawl_jobs]
        out["nodes"] = after["nodes"]
        for stage in ("crawl", "curate"):
            per_node: dict[str, int] = {}
            for t in out[f"{stage}_tasks"]:
                node = (t["node_id"] or "none")[:8]
                per_node[node] = per_node.get(node, 0) + 1
            print(f"{stage}: Ray tasks per node {per_node}")
    return out


@pytest.fixture(scope="module")
def one_node(s3: servers.Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The input on one node: a local Ray, as a plain `clipmill run` starts (only the slow
    comparison below needs it: the default suite runs the two-node pipeline alone)."""
    ray_env = {"RAY_AUTH_MODE": "disabled"}
    return _pipeline(tmp_path_factory.mktemp("one-node"), s3, ray_env, None)


@pytest.fixture(scope="module")
def two_node(
    cluster: RayCluster,
    s3: servers.Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """The same input on the two-node cluster, and the tasks each stage ran there."""
    ray_env = {
        "CLIPMILL_RAY_ADDRESS": cluster.address,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": cluster.env["RAY_AUTH_TOKEN"],
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
    }
    return _pipeline(tmp_path_factory.mktemp("two-node"), s3, ray_env, cluster)


def _crawled(run: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    """uid -> (status, sha256 of the downloaded bytes), from the shards' parquet in the bucket."""
    import pyarrow.parquet as pq

    fs, out = run["fs"], {}
    paths = sorted(fs.glob(run["crawl_uri"].removeprefix("s3://") + "/shards/*.parquet"))
    for path in paths:
        with fs.open(path, "rb") as fh:
            for row in pq.read_table(fh, columns=["uid", "status", "sha256"]).to_pylist():
                out[row["uid"]] = (row["status"], row["sha256"])
    return out


def _decisions(run: dict[str, Any], s3: servers.Server) -> dict[str, tuple[Any, ...]]:
    """uid -> (curate_keep, curate_reason, curate_holdout), read from the pool in the bucket."""
    import lancedb

    db = lancedb.connect(
        run["lance_uri"],
        storage_options={
            "aws_access_key_id": servers.S3_KEY,
            "aws_secret_access_key": servers.S3_SECRET,
            "aws_endpoint": s3.url,
            "aws_region": "us-east-1",
            "allow_http": "true",
        },
    )
    rows = db.open_table("pool").to_arrow().to_pylist()
    return {r["uid"]: (r["curate_keep"], r["curate_reason"], r["curate_holdout"]) for r in rows}


def test_crawl_and_curate_tasks_ran_on_both_nodes(two_node: dict[str, Any]) -> None:
    nodes = set(two_node["nodes"])
    assert len(nodes) == 2, two_node["nodes"]
    shards = [t for t in two_node["crawl_tasks"] if t["name"].endswith("stream_shard")]
    assert len(shards) >= 4, two_node["crawl_tasks"]
    assert {t["node_id"] for t in shards} == nodes, shards
    curate = [t for t in two_node["curate_tasks"] if t["node_id"]]
    assert curate, "the state API listed no curate task"
    assert {t["node_id"] for t in curate} == nodes, curate


@pytest.mark.slow  # a second pipeline run (~45 s); the two-node run's own checks run by default
def test_same_uids_and_decisions_as_one_node(
    two_node: dict[str, Any], one_node: dict[str, Any], s3: servers.Server
) -> None:
    crawled = _crawled(two_node)
    assert sum(status == "success" for status, _ in crawled.values()) >= 10, crawled
    assert crawled == _crawled(one_node)
    decisions = _decisions(two_node, s3)
    assert set(decisions) == set(crawled)
    kept = {u for u, d in decisions.items() if d[0]}
    assert kept and len(kept) < len(decisions), decisions  # curate kept some and dropped some
    assert decisions == _decisions(one_node, s3)
    import pyarrow.parquet as pq

    fs = two_node["fs"]
    subsets = []
    for run in (two_node, one_node):  # curate's output, pushed to the bucket by the runner
        with fs.open(run["data_root"].removeprefix("s3://") + "/curate/subset_uids.parquet") as fh:
            subsets.append(pq.read_table(fh).column("uid").to_pylist())
    assert subsets[0] == subsets[1] and subsets[0]


def test_the_second_node_read_the_shards_from_the_bucket_into_its_own_cache(
    two_node: dict[str, Any], cluster: RayCluster
) -> None:
    """The second node's view of the driver's cache folder is its own (empty) disk: its tasks
    found nothing there and fetched what they read from the bucket (tasks/io/nodefetch.py) —
    curate's tasks the crawl shards, the crawl's extraction tasks (one per input file) the
    archives they extract — nothing else; the driver's side holds every shard and its own
    intermediate files (balancing's matches), which the tasks got through Ray's object store."""
    if cluster.hidden is None:
        pytest.skip("this machine allows no mount namespace: the nodes share the cache folder")
    cache: Path = two_node["cache"]
    driver = {p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()}
    view = node_view(cluster, 1, cache)
    seen = {p.relative_to(view).as_posix() for p in view.rglob("*") if p.is_file()}
    shards = {k for k in driver if k.startswith("crawl/shards/") and k.endswith(".tar")}
    fetched = {k for k in seen if k.endswith(".tar")}
    assert shards and any(k.startswith("curate/matches/") for k in driver), sorted(driver)
    assert fetched and fetched <= shards, (sorted(seen), sorted(shards))
    inputs = ("crawl/shards/", "sample/archives/")
    assert all(k.startswith(inputs) for k in seen), sorted(seen)
    assert not any(k.startswith("sample/") and not k.startswith("sample/archives/") for k in seen)


INFRA = PROJECT_ROOT / "infra"


def _dockerfile() -> dict[str, Any]:
    """The image's ENTRYPOINT, WORKDIR and ENV names, from infra/Dockerfile."""
    import re
    import shlex

    text = (INFRA / "Dockerfile").read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    workdir = re.search(r"^WORKDIR (\S+)$", text, re.M).group(1)  # type: ignore[union-attr]
    env = {
        k: v
        for line in re.findall(r"^ENV (.+)$", text, re.M)
        for k, _, v in (item.partition("=") for item in shlex.split(line))
    }
    return {"entrypoint": entry, "workdir": workdir, "env": env}


def _env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_infra_manifests_name_the_image_entrypoint_and_env_consistently() -> None:
    """infra/ray-cluster.yaml (Ray's launcher, checked against Ray's own schema) and the KubeRay
    RayCluster / RayJob: one image (the tag infra/README.md builds from infra/Dockerfile), a
    `clipmill run <stage>` entrypoint, and the same CLIPMILL_RAY_ADDRESS / CLIPMILL_DATA_ROOT on
    every container, none contradicting the image's own ENV."""
    import re

    import ray
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    from tasks.registry import STAGES

    docker = _dockerfile()
    assert docker["entrypoint"] == ["clipmill"]
    # the ENTRYPOINT is the project's console script
    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "clipmill" in scripts
    build = re.search(
        r"docker build -f infra/Dockerfile -t (\S+) \.", (INFRA / "README.md").read_text()
    )
    assert build, "infra/README.md must show the docker build of infra/Dockerfile with its tag"
    image = build.group(1)
    expected: dict[str, str] = {}

    def check_env(env: dict[str, str | None], where: str) -> None:
        for name in ("CLIPMILL_RAY_ADDRESS", "CLIPMILL_DATA_ROOT"):
            assert env.get(name), f"{where}: {name} not set"
            assert expected.setdefault(name, str(env[name])) == env[name], (where, name, env[name])
            assert name not in docker["env"] or docker["env"][name] == env[name], (where, name)

    cluster = yaml.safe_load((INFRA / "kuberay/raycluster.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert cluster["spec"]["rayVersion"] == ray.__version__
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    containers = [c for g in groups for c in g["template"]["spec"]["containers"]]
    assert len(containers) == 3
    for c in containers:
        assert c["image"] == image, c["name"]
        assert c["workingDir"] == docker["workdir"], c["name"]
        # KubeRay runs `ray start` in the container's command: a shell, not the clipmill ENTRYPOINT
        assert c["command"][0] in ("/bin/bash", "/bin/sh"), c["command"]
        check_env(_env_of(c), f"RayCluster {c['name']}")
    assert expected["CLIPMILL_DATA_ROOT"].startswith("s3://")

    job = yaml.safe_load((INFRA / "kuberay/rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    words = job["spec"]["entrypoint"].split()
    assert words[:2] == ["clipmill", "run"] and words[2] in STAGES, words
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    (submitter,) = job["spec"]["submitterPodTemplate"]["spec"]["containers"]
    assert submitter["image"] == image
    assert "command" not in submitter, "KubeRay writes the `ray job submit` command only if unset"
    check_env(_env_of(submitter), "RayJob submitter")

    launcher = yaml.safe_load((INFRA / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(launcher))  # raises on a field Ray's schema does not know
    assert launcher["docker"]["image"] == image
    opts = [o.removeprefix("--env ") for o in launcher["docker"]["run_options"]]
    check_env(
        {k: v for k, _, v in (o.partition("=") for o in opts if o.startswith("CLIPMILL_"))},
        "ray-cluster.yaml docker.run_options",
    )
    assert any("ray start --head" in c for c in launcher["head_start_ray_commands"])
    assert any("ray start --address=" in c for c in launcher["worker_start_ray_commands"])
