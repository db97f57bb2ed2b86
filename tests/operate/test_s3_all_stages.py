"""Every stage of the pipeline under `CLIPMILL_DATA_ROOT=s3://...` (moto's server mode, real HTTP
on loopback), each stage on a FRESH cache folder: as if every stage ran on another machine,
everything a stage reads must come down from the bucket and everything it writes must go up.

The chain is the default pipeline (sample, crawl, decontaminate, teacher, recaption, curate,
train, evaluate, the four experts, merge, evaluate_merge) at the smallest size that still runs
every code path: the operate fixtures' small sample (tests/operate/conftest.py), a few optimizer
steps per model, small evaluation caps (`TINY` below). Checked per stage: each dvc.yaml output is
in the bucket with the bytes the stage wrote (ETag = md5 of a single PUT), every non-native data
dep was downloaded from the bucket (its object count), the MLflow run's metrics artifact is in the
bucket, and the project's own `data/` never appears.

Measured here (2 cores shared by eight sessions, load ~10): sample 68 s, crawl 63 s,
decontaminate 91 s, teacher 160 s, recaption 305 s, curate 467 s, train 249 s, evaluate 241 s
(each including its process, Ray and MLflow start); the whole chain is tens of minutes, so the
module is `slow` (the fixture prints `CHAIN_SECONDS`). All 14 stages and all 4 tests passing in
one run, 2026-12-07, load ~28 on 2 cores: module 1267 s, chain 1240 s (sample 178, crawl 103,
decontaminate 54, teacher 57, recaption 77, curate 137, train 123, evaluate 102, the four experts
83 / 66 / 38 / 42, merge 112, evaluate_merge 63). The default suite runs the same runner
path on the short chain of tests/operate/test_s3_dataroot.py.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks import PROJECT_ROOT
from tests.operate import servers
from tests.operate.conftest import BUCKET, project_env
from tests.operate.test_s3_dataroot import _objects, _project, _run

# The whole chain takes minutes (see the docstring): slow. The default suite keeps the short
# chain of tests/operate/test_s3_dataroot.py (sample -> crawl -> sample) on the same path.
pytestmark = pytest.mark.slow

PREFIX = "chain"
DATA_ROOT = f"s3://{BUCKET}/{PREFIX}"

_TRAIN_TINY = {"steps": 3, "batch_size": 16, "warmup_steps": 1, "checkpoint_every": 3}
# Per stage: `-s key=value` overrides that keep it small (what each stage does is unchanged).
TINY: dict[str, dict[str, Any]] = {
    "teacher": dict(_TRAIN_TINY),
    "recaption": {},
    "curate": {},
    "train": dict(_TRAIN_TINY),
    "evaluate": {
        "probe.enabled": False,
        "robustness.enabled": False,
        "membership.enabled": False,
        "perception.enabled": False,
    },
    **{
        # the small sample's suite splits hold a few images each (emoji: 3)
        f"expert_{task}": {"steps": 2, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 2}
        for task in ("fashion", "emoji", "tuxpaint", "openclipart")
    },
    "merge": {},
    "evaluate_merge": {
        "probe.enabled": False,
        "robustness.enabled": False,
        "membership.enabled": False,
        "perception.enabled": False,
    },
}
STAGES = (
    "sample",
    "crawl",
    "decontaminate",
    "teacher",
    "recaption",
    "curate",
    "train",
    "evaluate",
    "expert_fashion",
    "expert_emoji",
    "expert_tuxpaint",
    "expert_openclipart",
    "merge",
    "evaluate_merge",
)


@pytest.fixture(autouse=True)
def fresh_s3fs() -> Iterator[None]:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


def _under(endpoint: str, rel: str) -> dict[str, dict[str, Any]]:
    """The objects of the data root path `rel` (a file, or a folder's files): a key prefix
    alone would also take its siblings whose names start alike (`evaluate_merge/...` for
    `evaluate`)."""
    key = f"{PREFIX}/{rel}"
    return {k: o for k, o in _objects(endpoint, key).items() if k == key or k.startswith(key + "/")}


def _md5s(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()  # noqa: S324
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".dataroot")
    }


def _dvc_stage(stage: str) -> dict[str, Any]:
    stages: dict[str, Any] = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    return dict(stages[stage])


def _data(entries: list[Any]) -> list[str]:
    names = [n for e in entries for n in ([e] if isinstance(e, str) else list(e))]
    return [n.removeprefix("data/") for n in names if n.startswith("data/")]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, s3: servers.Server) -> dict[str, Any]:
    """Every stage in pipeline order, each with its own empty cache folder; what the bucket
    held under each data dep just before the stage ran, and each stage's seconds."""
    project = _project(tmp_path_factory.mktemp("project"), STAGES)
    out: dict[str, Any] = {"project": project, "metrics": {}, "deps": {}, "seconds": {}}
    started = time.monotonic()
    for stage in STAGES:
        cache = tmp_path_factory.mktemp(f"cache-{stage}")
        env = project_env(
            project,
            **servers.s3_env(s3.url),
            AWS_ALLOW_HTTP="true",  # LanceDB's object store talks plain HTTP to the test server
            CLIPMILL_DATA_ROOT=DATA_ROOT,
            CLIPMILL_DATA_CACHE=str(cache),
        )
        out["deps"][stage] = {d: _under(s3.url, d) for d in _deps(stage)}
        began = time.monotonic()
        out["metrics"][stage] = _run(stage, project, env, overrides=TINY.get(stage, {}))
        out["seconds"][stage] = round(time.monotonic() - began, 1)
        out.setdefault("caches", {})[stage] = cache
        print(f"{stage}: {out['seconds'][stage]} s", flush=True)
    out["total"] = round(time.monotonic() - started, 1)
    print(f"CHAIN_SECONDS {out['total']} {out['seconds']}", flush=True)
    return out


def _deps(stage: str) -> list[str]:
    return _data(_dvc_stage(stage).get("deps", []))


def test_every_stage_ran_and_the_project_data_folder_got_nothing(chain: dict[str, Any]) -> None:
    assert list(chain["metrics"]) == list(STAGES)
    assert not (chain["project"] / "data").exists(), sorted((chain["project"] / "data").rglob("*"))


def test_every_output_is_in_the_bucket_with_the_bytes_written(
    chain: dict[str, Any], s3: servers.Server
) -> None:
    """Each stage's dvc.yaml outs: in the bucket, equal to the files its cache folder holds
    (outputs the registry writes natively, crawl's shards, never touch the cache)."""
    for stage in STAGES:
        cache: Path = chain["caches"][stage]
        for rel in _data(_dvc_stage(stage).get("outs", [])):
            objects = _under(s3.url, rel)
            assert objects, f"{stage}: nothing in the bucket under {rel}"
            local = cache / rel
            if not local.exists():
                assert stage == "crawl", f"{stage}: {rel} neither in its cache nor native"
                continue
            files = (
                {rel: hashlib.md5(local.read_bytes()).hexdigest()}  # noqa: S324
                if local.is_file()
                else {f"{rel}/{k}": v for k, v in _md5s(local).items()}
            )
            got = {k.removeprefix(f"{PREFIX}/"): o for k, o in objects.items()}
            assert set(got) == set(files), stage
            for key, md5 in files.items():
                # a multipart upload's ETag is no md5 ("<md5 of the parts' md5s>-<parts>"): size
                if "-" in got[key]["etag"]:
                    assert got[key]["size"] == (cache / key).stat().st_size, (stage, key)
                else:
                    assert got[key]["etag"] == md5, (stage, key)


def test_every_stage_read_its_inputs_from_the_bucket(chain: dict[str, Any]) -> None:
    """A fresh cache per stage: each non-native data dep was downloaded, object by object."""
    for stage in STAGES[1:]:
        expected = len({k for objs in chain["deps"][stage].values() for k in objs})
        metrics = chain["metrics"][stage]
        assert metrics["dataroot_download_skipped"] == 0, stage
        assert metrics["dataroot_downloaded"] == expected > 0, (stage, chain["deps"][stage])


def test_mlflow_artifacts_of_every_stage_are_in_the_bucket(
    chain: dict[str, Any], s3: servers.Server
) -> None:
    keys = _objects(s3.url, f"{PREFIX}/mlartifacts/")
    for stage in STAGES:
        assert any(k.endswith(f"metrics/{stage}.json") for k in keys), stage
