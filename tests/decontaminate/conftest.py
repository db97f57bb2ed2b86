"""A tiny crawl (webdataset shards keyed by uid, `.json` with the url) holding one planted copy
of an eval image, tiny eval sets in CLIP_benchmark layout, and the planted-copies file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.io.wds import write_tar
from tests.curate.conftest import image_bytes, reencode

SITE = "http://sample.clipmill.test/"
PLANTED_UID = "planted0"  # the crawled copy of eval image toyset/e0 (= otherset/e0)
PLANTED_PATH = "gallery/community/uploads/planted0.jpg"


@dataclass
class TinyCrawl:
    shards: Path
    eval_dir: Path
    planted: Path
    clean: list[str]  # uids of the crawl rows that copy no eval image


def _crawled(data: bytes) -> bytes:
    """What the crawl stores for a downloaded image (its own resize + encode, default params)."""
    from tasks.imaging.resize import ResizeParams, process_image

    return process_image(data, ResizeParams()).data


def build_crawl(root: Path) -> TinyCrawl:
    evals = {f"e{i}": image_bytes(1000 + i, (320, 160), fmt="PNG") for i in range(4)}
    eval_dir = root / "eval"
    write_tar(
        eval_dir / "toyset" / "test" / "0.tar",
        [(k, {"png": v, "cls": b"0"}) for k, v in evals.items()],
    )
    # the same picture in a second set (as emoji groups and subgroups share theirs)
    write_tar(eval_dir / "otherset" / "test" / "0.tar", [("e0", {"png": evals["e0"], "cls": b"0"})])
    samples, clean = [], []
    for i in range(12):
        uid = f"clean{i:03d}"
        clean.append(uid)
        samples.append(_sample(uid, f"{SITE}gallery/x/{uid}.jpg", _crawled(image_bytes(i))))
    copy = _crawled(reencode(evals["e0"], (288, 144), quality=80))
    samples.append(_sample(PLANTED_UID, SITE + PLANTED_PATH, copy))
    shards = root / "crawl" / "shards"
    write_tar(shards / "00000.tar", samples[:7])
    write_tar(shards / "00001.tar", samples[7:])
    planted = eval_dir / "planted_near_duplicates.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table(
            {
                "site_path": [PLANTED_PATH],
                "eval_set": ["toyset"],
                "eval_key": ["e0"],
                "transformation": ["resize"],
                "other_eval_keys": [["otherset/e0"]],
            }
        ),
        planted,
    )
    return TinyCrawl(shards, eval_dir, planted, clean)


def _sample(uid: str, url: str, data: bytes) -> tuple[str, dict]:
    meta = {"uid": uid, "url": url}
    return uid, {"jpg": data, "txt": f"a picture {uid}", "json": json.dumps(meta).encode()}


@pytest.fixture(scope="session")
def tiny_crawl(tmp_path_factory: pytest.TempPathFactory) -> TinyCrawl:
    return build_crawl(tmp_path_factory.mktemp("decontaminate"))


@pytest.fixture(scope="session")
def outputs(
    tiny_crawl: TinyCrawl, tmp_path_factory: pytest.TempPathFactory, ray_session: object
) -> tuple[Path, dict]:
    """The stage run once through the runner (params file -> Ray, MLflow -> run(params))."""
    import yaml

    from tasks.runner import run_stage

    tmp = tmp_path_factory.mktemp("decontaminate_out")
    params = {
        "paths": {
            "shards": str(tiny_crawl.shards),
            "eval_dir": str(tiny_crawl.eval_dir),
            "planted": str(tiny_crawl.planted),
            "out_dir": str(tmp / "out"),
        },
        "compute": {"rows_per_block": 4},  # several Ray tasks per shard
    }
    path = tmp / "decontaminate.yaml"
    path.write_text(yaml.safe_dump(params))

    from tasks.settings import get_settings

    with pytest.MonkeyPatch.context() as mp:  # a private MLflow store for this module's run
        mp.setenv("CLIPMILL_MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.setenv("CLIPMILL_MLFLOW_ARTIFACT_ROOT", (tmp / "mlartifacts").as_uri())
        get_settings.cache_clear()
        try:
            metrics = run_stage("decontaminate", path)
        finally:
            get_settings.cache_clear()
    return tmp / "out", metrics
