"""A registered model traces back to its data: DVC's md5 of the shards' output and the uid list."""

from __future__ import annotations

import hashlib

import yaml


def test_data_lineage_reads_dvc_lock_and_uid_list(tmp_path, monkeypatch):
    from tasks.settings import get_settings
    from tasks.train.tracking import data_lineage

    shards = tmp_path / "data" / "curate" / "shards"
    shards.mkdir(parents=True)
    uid_list = tmp_path / "data" / "curate" / "subset_uids.parquet"
    uid_list.write_bytes(b"uids")
    lock = {"stages": {"curate": {"outs": [{"path": "data/curate", "md5": "abc.dir"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    monkeypatch.setenv("CLIPMILL_ROOT", str(tmp_path))
    get_settings.cache_clear()
    try:
        tags = data_lineage("data/curate/shards")
    finally:
        get_settings.cache_clear()
    assert tags == {
        "clipmill.data_dvc_stage": "curate",
        "clipmill.data_dvc_md5": "abc.dir",
        "clipmill.data_uid_list_sha256": hashlib.sha256(b"uids").hexdigest(),
    }
