"""`CLIPMILL_DATA_ROOT=s3://...` end to end: real stages on an S3-compatible server (moto's
server mode, real HTTP on loopback) read and write only the bucket.

The default chain (sample -> crawl -> sample again) covers both kinds of output: sample's files
need local paths, so the runner's layer (tasks/io/dataroot.py) uploads them from its cache
folder; crawl reads them back through that layer but writes its shards (Ray workers) and the
LanceDB pool straight into the bucket. The rerun proves the manifest: only files whose bytes
changed are sent again. The checkout-like project's own `data/` must stay absent throughout.
The slow test continues the chain through decontaminate on a fresh cache (another machine's
view: everything it needs comes from the bucket). Bad URIs, missing credentials and a missing
bucket stop a run before any work, naming the URI.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks import PROJECT_ROOT
from tests.operate import servers
from tests.operate.conftest import BUCKET, bin_path, make_project, project_env

PREFIX = "shared"  # the data root is s3://clipmill/shared
DATA_ROOT = f"s3://{BUCKET}/{PREFIX}"


@pytest.fixture(autouse=True)
def fresh_s3fs() -> Iterator[None]:
    """s3fs caches a filesystem per set of arguments, with the credentials the environment had
    when it was made: each test starts and ends without one (the no-credentials case's)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


def _client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=servers.S3_KEY,
        aws_secret_access_key=servers.S3_SECRET,
        region_name="us-east-1",
    )


def _objects(endpoint: str, prefix: str) -> dict[str, dict[str, Any]]:
    """Every object under `prefix` in the bucket, by key: ETag (md5 for a single PUT), time."""
    pages = (
        _client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    )
    return {
        o["Key"]: {"etag": o["ETag"].strip('"'), "modified": o["LastModified"], "size": o["Size"]}
        for page in pages
        for o in page.get("Contents", [])
    }


def _files(folder: Path, digest: str = "md5") -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.new(digest, p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _run(
    stage: str,
    project: Path,
    env: dict[str, str],
    timeout: int = 600,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`clipmill run STAGE [-s key=value ...]` in the project; its metrics. Up to two retries
    when a local Ray could not boot within Ray's fixed 30 s (an overloaded shared CI machine)."""
    sets = [a for k, v in (overrides or {}).items() for a in ("-s", f"{k}={json.dumps(v)}")]
    for attempt in range(3):
        proc = subprocess.run(
            [bin_path("clipmill"), "run", stage, *sets],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if attempt == 2 or "Ray failed to start: The current node timed out" not in proc.stderr:
            break
        print(f"{stage}: Ray did not boot in time on a loaded machine; retrying")
    assert proc.returncode == 0, f"{stage} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    metrics: dict[str, Any] = json.loads((project / "metrics" / f"{stage}.json").read_text())
    return metrics


def _project(root: Path, stages: tuple[str, ...]) -> Path:
    """The operate tests' project copy (small sample params) plus the other stages' params."""
    project = make_project(root, dvc_stages=stages)
    for stage in stages:
        target = project / "params" / f"{stage}.yaml"
        if not target.exists():
            shutil.copy(PROJECT_ROOT / "params" / f"{stage}.yaml", target)
    return project


# The chain below runs sample -> crawl -> decontaminate on the bucket (a minute and a half):
# slow. S3 runs by default in tests/operate/test_prefect_stack.py (DVC remote, MLflow artifacts)
# and test_ray_cluster.py (shards read from the bucket); the refusals below need no chain.
CHAIN = pytest.mark.slow


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, s3: servers.Server) -> dict[str, Any]:
    """sample, crawl, then sample again, all with the data root in the bucket."""
    project = _project(tmp_path_factory.mktemp("project"), ("sample", "crawl", "decontaminate"))
    cache = tmp_path_factory.mktemp("cache")
    env = project_env(
        project,
        **servers.s3_env(s3.url),
        CLIPMILL_DATA_ROOT=DATA_ROOT,
        CLIPMILL_DATA_CACHE=str(cache),
    )
    out: dict[str, Any] = {"project": project, "cache": cache, "env": env}
    out["sample"] = _run("sample", project, env)
    out["sample_objects"] = _objects(s3.url, f"{PREFIX}/sample/")
    out["sample_files"] = _files(cache / "sample", "sha256")
    out["crawl"] = _run("crawl", project, env)
    out["sample_again"] = _run("sample", project, env)
    out["sample_objects_again"] = _objects(s3.url, f"{PREFIX}/sample/")
    out["sample_files_again"] = _files(cache / "sample", "sha256")
    return out


@CHAIN
def test_sample_outputs_are_uploaded_to_the_bucket(chain: dict[str, Any]) -> None:
    """Every file the sample stage wrote is in the bucket with the same bytes (ETag = md5)."""
    cache, objects = chain["cache"], chain["sample_objects"]
    local = {f"{PREFIX}/sample/{k}": v for k, v in _files(cache / "sample").items()}
    assert local, "the sample stage left nothing in the cache folder"
    assert {k: o["etag"] for k, o in objects.items()} == local
    assert chain["sample"]["dataroot_uploaded"] == len(local)
    assert chain["sample"]["dataroot_skipped"] == 0


@CHAIN
def test_crawl_writes_shards_and_pool_straight_to_the_bucket(
    chain: dict[str, Any], s3: servers.Server
) -> None:
    """Crawl's shards come from its Ray tasks straight into the bucket (no local copy in the
    cache), its LanceDB pool lives in the bucket, and its inputs came from the bucket."""
    import pyarrow.parquet as pq
    import s3fs

    cache = chain["cache"]
    metrics = chain["crawl"]
    keys = _objects(s3.url, f"{PREFIX}/crawl/")
    tars = [k for k in keys if k.startswith(f"{PREFIX}/crawl/shards/") and k.endswith(".tar")]
    assert len(tars) == metrics["shards"] >= 1, sorted(keys)
    assert not (cache / "crawl").exists(), "crawl's output went through the local cache"
    assert metrics["dataroot_uploaded"] == 0  # nothing left to upload: it is already there
    pool_keys = _objects(s3.url, f"{PREFIX}/lancedb/pool.lance/")
    assert pool_keys, "no LanceDB pool in the bucket"

    fs = s3fs.S3FileSystem(
        key=servers.S3_KEY, secret=servers.S3_SECRET, endpoint_url=s3.url, skip_instance_cache=True
    )
    shard_uids: set[str] = set()
    for key in keys:
        if key.startswith(f"{PREFIX}/crawl/shards/") and key.endswith(".parquet"):
            with fs.open(f"{BUCKET}/{key}", "rb") as fh:
                table = pq.read_table(fh)
            shard_uids |= {
                u
                for u, s in zip(table["uid"].to_pylist(), table["status"].to_pylist(), strict=True)
                if s == "success"
            }
    assert len(shard_uids) == metrics["successes"] > 0
    pool = _open_pool(s3.url)
    assert shard_uids <= set(pool["uid"]), "shard uids missing from the pool in the bucket"


def _open_pool(endpoint: str) -> dict[str, list[Any]]:
    import os

    from tasks.pool import connect

    saved = {k: os.environ.get(k) for k in servers.s3_env(endpoint)}
    os.environ.update(servers.s3_env(endpoint))
    try:
        table = connect(f"{DATA_ROOT}/lancedb").open_table("pool").to_arrow()
        return {"uid": table["uid"].to_pylist()}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@CHAIN
def test_the_project_data_folder_gets_nothing(chain: dict[str, Any]) -> None:
    project = chain["project"]
    assert not (project / "data").exists(), sorted((project / "data").rglob("*"))[:20]


@CHAIN
def test_crawl_read_its_inputs_from_the_cache_the_bucket_filled(chain: dict[str, Any]) -> None:
    """Crawl's deps (data/sample) were already in the cache with the manifest's ETags: every
    file skipped, none fetched again (another machine would have fetched them all)."""
    crawl = chain["crawl"]
    assert crawl["dataroot_downloaded"] == 0
    assert crawl["dataroot_download_skipped"] == len(chain["sample_objects"])


@CHAIN
def test_rerun_sends_only_the_files_whose_bytes_changed(chain: dict[str, Any]) -> None:
    before, after = chain["sample_files"], chain["sample_files_again"]
    assert set(before) == set(after)
    changed = {k for k in after if after[k] != before[k]}
    metrics = chain["sample_again"]
    assert metrics["dataroot_skipped"] == len(after) - len(changed) > 0
    assert metrics["dataroot_uploaded"] == len(changed)
    old, new = chain["sample_objects"], chain["sample_objects_again"]
    for key in after:
        name = f"{PREFIX}/sample/{key}"
        if key in changed:
            assert new[name]["etag"] != old[name]["etag"], key
        else:  # not sent again: the very same object
            assert new[name]["modified"] == old[name]["modified"], key


@CHAIN
def test_mlflow_artifacts_go_to_the_bucket(chain: dict[str, Any], s3: servers.Server) -> None:
    """A SQLite tracking store with the data root in a bucket keeps its artifacts beside it."""
    keys = _objects(s3.url, f"{PREFIX}/mlartifacts/")
    for stage in ("sample", "crawl"):
        assert any(k.endswith(f"metrics/{stage}.json") for k in keys), sorted(keys)[:20]


@pytest.mark.slow
def test_decontaminate_on_a_fresh_cache_reads_everything_from_the_bucket(
    chain: dict[str, Any], s3: servers.Server, tmp_path: Path
) -> None:
    """Another machine (an empty cache folder) runs the next stage: its deps come down from the
    bucket (crawl's shards included), its outputs go up; the project's data/ stays empty."""
    env = {**chain["env"], "CLIPMILL_DATA_CACHE": str(tmp_path / "cache")}
    metrics = _run("decontaminate", chain["project"], env)
    dvc = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]["decontaminate"]
    deps = [d.removeprefix("data/") for d in dvc["deps"] if d.startswith("data/")]
    expected = sum(len(_objects(s3.url, f"{PREFIX}/{d}")) for d in deps)
    assert metrics["dataroot_downloaded"] == expected > 0
    outs = _objects(s3.url, f"{PREFIX}/decontaminate/")
    local = _files(tmp_path / "cache" / "decontaminate")
    assert {k: o["etag"] for k, o in outs.items()} == {
        f"{PREFIX}/decontaminate/{k}": v for k, v in local.items()
    }
    assert not (chain["project"] / "data").exists()


@pytest.mark.parametrize(
    ("uri", "env", "says"),
    [
        ("nosuchscheme://bucket/x", {}, "is not a usable fsspec URI"),
        ("s3://", {}, "names no bucket"),
        (
            f"s3://no-such-bucket-{PREFIX}/x",
            {},
            "the bucket 'no-such-bucket-shared' does not exist",
        ),
        (
            f"{DATA_ROOT}/x",
            {
                "AWS_ACCESS_KEY_ID": "",
                "AWS_SECRET_ACCESS_KEY": "",
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                "AWS_CONFIG_FILE": "/nonexistent",
                "AWS_EC2_METADATA_DISABLED": "true",
            },
            "check the credentials",
        ),
    ],
    ids=["bad-uri", "no-bucket-name", "missing-bucket", "no-credentials"],
)
def test_an_unusable_data_root_stops_the_run_before_any_work(
    uri: str,
    env: dict[str, str],
    says: str,
    s3: servers.Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The error names the URI; no stage work ran (no metrics, no cache folder, no MLflow run)."""
    from tasks.io.dataroot import DataRootError
    from tasks.runner import run_stage
    from tasks.settings import get_settings

    for key, value in {**servers.s3_env(s3.url), **env}.items():
        if value:
            monkeypatch.setenv(key, value)
        else:
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CLIPMILL_ROOT", str(tmp_path))
    monkeypatch.setenv("CLIPMILL_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("CLIPMILL_DATA_ROOT", uri)
    monkeypatch.setenv("CLIPMILL_DATA_CACHE", str(tmp_path / "cache"))
    get_settings.cache_clear()
    with pytest.raises(DataRootError) as caught:
        run_stage("sample", params_file=PROJECT_ROOT / "params" / "sample.yaml")
    assert uri in str(caught.value) and says in str(caught.value), str(caught.value)
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "cache").exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_only_the_runner_uses_the_data_root_layer() -> None:
    """Stages never know where their data lives: tasks/io/dataroot.py is the runner's alone."""
    import ast

    users = set()
    for path in sorted((PROJECT_ROOT / "tasks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [f"{node.module}.{a.name}" for a in node.names]
                if isinstance(node, ast.ImportFrom) and node.module
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            if any(n.startswith("tasks.io.dataroot") for n in names):
                users.add(path.relative_to(PROJECT_ROOT).as_posix())
    assert users == {"tasks/runner.py"}


def test_a_missing_input_in_the_bucket_is_refused_before_the_run(
    s3: servers.Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """decontaminate on an empty prefix: its first data dep is named, as a bucket URI, before
    any MLflow run or Ray start."""
    from tasks.io.dataroot import DataRootError
    from tasks.runner import run_stage
    from tasks.settings import get_settings

    for key, value in servers.s3_env(s3.url).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CLIPMILL_ROOT", str(tmp_path))
    monkeypatch.setenv("CLIPMILL_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("CLIPMILL_DATA_ROOT", f"s3://{BUCKET}/empty")
    monkeypatch.setenv("CLIPMILL_DATA_CACHE", str(tmp_path / "cache"))
    get_settings.cache_clear()
    with pytest.raises(DataRootError, match=rf"s3://{BUCKET}/empty/crawl/shards: the stage needs"):
        run_stage("decontaminate", params_file=PROJECT_ROOT / "params" / "decontaminate.yaml")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "metrics").exists()


def test_data_paths_artifacts_and_dvc_remote_follow_the_data_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative `data/...` params paths resolve under the cache folder of a bucket data root
    (under a local data root itself; under `<root>/data` by default); MLflow artifacts and the
    DVC remote default to the bucket; other relative paths stay under the root."""
    from tasks.io.paths import resolve_path, resolve_uri
    from tasks.settings import get_settings

    monkeypatch.setenv("CLIPMILL_ROOT", str(tmp_path))
    monkeypatch.delenv("CLIPMILL_MLFLOW_ARTIFACT_ROOT", raising=False)
    monkeypatch.delenv("CLIPMILL_DVC_REMOTE_URL", raising=False)
    get_settings.cache_clear()
    assert resolve_path("data/crawl/shards") == tmp_path / "data" / "crawl" / "shards"
    assert get_settings().dvc_remote is None

    monkeypatch.setenv("CLIPMILL_DATA_ROOT", str(tmp_path / "elsewhere"))
    get_settings.cache_clear()
    assert resolve_uri("data/crawl") == str(tmp_path / "elsewhere" / "crawl")

    monkeypatch.setenv("CLIPMILL_DATA_ROOT", DATA_ROOT)
    monkeypatch.setenv("CLIPMILL_DATA_CACHE", str(tmp_path / "cache"))
    get_settings.cache_clear()
    settings = get_settings()
    assert resolve_path("data/models/teacher") == tmp_path / "cache" / "models" / "teacher"
    assert resolve_path("data") == tmp_path / "cache"
    assert resolve_path("params/x.yaml") == tmp_path / "params" / "x.yaml"
    assert settings.lance_uri == f"{DATA_ROOT}/lancedb"
    assert settings.artifact_root == f"{DATA_ROOT}/mlartifacts"
    assert settings.dvc_remote == f"{DATA_ROOT}/dvc"
    monkeypatch.delenv("CLIPMILL_DATA_CACHE")
    get_settings.cache_clear()
    assert get_settings().local_data == get_settings().cache_dir / "dataroot" / BUCKET / PREFIX
