"""The train stage's export prefetch (tasks/train/tracking.py ExportPrefetch): the shard hash
computed in the background is the one the stage used to compute after training, errors reach the
caller, and the warm-up fills MLflow's installed-package map that log_model would build."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_background_hash_equals_the_direct_one(shards_dir: Path) -> None:
    from tasks.train.data import list_shards
    from tasks.train.tracking import ExportPrefetch, data_version

    prefetch = ExportPrefetch(str(shards_dir))
    got = prefetch.data_version()
    assert got == data_version(list_shards(str(shards_dir)))
    assert len(got) == 32


def test_background_hash_changes_with_the_data(tmp_path: Path, shards_dir: Path) -> None:
    import shutil

    from tasks.train.tracking import ExportPrefetch

    other = tmp_path / "shards"
    shutil.copytree(shards_dir, other)
    first = sorted(other.glob("*.tar"))[0]
    first.write_bytes(first.read_bytes()[:-1] + b"\x01")  # one byte of the end padding
    assert (
        ExportPrefetch(str(other)).data_version() != ExportPrefetch(str(shards_dir)).data_version()
    )


def test_missing_shards_reach_the_caller(tmp_path: Path) -> None:
    from tasks.train.data import DataError
    from tasks.train.tracking import ExportPrefetch

    prefetch = ExportPrefetch(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="nowhere"):
        prefetch.data_version()
    prefetch.join()  # nothing left running


def test_warm_export_fills_mlflows_package_map() -> None:
    from mlflow.utils import requirements_utils

    from tasks.train.tracking import warm_export

    requirements_utils._MODULES_TO_PACKAGES = None  # as in a fresh process
    warm_export()
    mapping = requirements_utils._MODULES_TO_PACKAGES
    assert mapping is not None and "torch" in mapping and "mlflow" in mapping
