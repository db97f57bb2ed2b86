"""The recaption stage end to end on a tiny pool (random teacher: a code-path test of the
captions, exact on the plumbing): pool columns, row-level reasons, resume, params preflight."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks import PROJECT_ROOT
from tasks.base import ParamsError
from tests.recaption.chatserver import ChatServer

PARAMS = PROJECT_ROOT / "params/recaption.yaml"
COLUMNS = [
    "uid",
    "recaption_long_positive",
    "recaption_long_negative",
    "recaption_short_positive",
    "recaption_short_negative",
    "recaption_sources",
    "recaption_error",
    "recaption_score_alt",
    "recaption_score_long_positive",
]


def _pool_columns(uri: str) -> dict[str, dict]:
    import lancedb

    t = lancedb.connect(uri).open_table("pool").search().select(COLUMNS).limit(None).to_arrow()
    return {r["uid"]: r for r in t.to_pylist()}


def _run(overrides: dict) -> dict:
    from tasks.runner import run_stage

    return run_stage("recaption", PARAMS, overrides=overrides)


def test_stage_end_to_end(recap_pool, mlflow_store, ray_session):
    metrics = _run(recap_pool.overrides())
    rows = _pool_columns(recap_pool.lance_uri)
    for uid in recap_pool.good:
        r = rows[uid]
        assert r["recaption_error"] is None, r
        assert r["recaption_long_positive"].startswith("A red dog number")
        assert r["recaption_long_negative"] and len(r["recaption_short_positive"]) == 2
        assert r["recaption_short_negative"]
        sources = json.loads(r["recaption_sources"])
        assert sources["long_positive"] == "composer:templates-v1"
        assert sources["short_positive"].startswith("tagger:")
        assert (
            -1.0 <= r["recaption_score_alt"] <= 1.0
            and r["recaption_score_long_positive"] is not None
        )
    assert rows["xbroken"]["recaption_error"].startswith("undecodable_image")
    assert rows["xmissing"]["recaption_error"].startswith("missing_image")
    # cheap checks, failed download, decontaminate's flagged list: not selected
    for skipped in ("ysmall", "yword", "yfail", "zflagged"):
        assert (
            rows[skipped]["recaption_long_positive"] is None
            and rows[skipped]["recaption_error"] is None
        )
    assert metrics["rows_selected"] == len(recap_pool.good) + 2
    assert metrics["rows_with_error"] == 2 and metrics["rows_with_all_four"] == len(recap_pool.good)
    assert metrics["failures"] == {"undecodable_image": 1, "missing_image": 1}
    out = recap_pool.root / "recaption"
    assert (out / "report/scores.png").is_file() and (out / "report/grid_improved.png").is_file()
    assert (
        json.loads((out / "summary.json").read_text())["rows_selected"] == metrics["rows_selected"]
    )
    import mlflow

    run = mlflow.get_run(metrics["_mlflow_run_id"])
    assert run.data.metrics["failures.undecodable_image"] == 1.0
    assert run.data.metrics["captions_per_s"] > 0 and "score_alt_p50" in run.data.metrics
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "report")}
    assert {"report/scores.png", "report/grid_improved.png", "report/examples.json"} <= logged


def test_resume_recaptions_only_unfinished_blocks(recap_pool, mlflow_store, ray_session):
    """A block whose marker is missing (killed mid-block) is redone; finished blocks are not
    requested again, and the pool ends as after one uninterrupted run."""
    with ChatServer() as server:
        recap_pool_overrides = recap_pool.overrides(
            backends=["openai", "composer"], **{"openai.base_url": server.base_url}
        )
        first = _run(recap_pool_overrides)
        before = _pool_columns(recap_pool.lance_uri)
        parts = sorted((recap_pool.root / "recaption/parts").glob("*/*.parquet"))
        assert len(parts) == first["blocks"] == 3
        victim = pq.read_table(parts[1]).column("uid").to_pylist()
        parts[1].unlink()
        Path(f"{parts[1]}.done").unlink()
        asked = dict(server.requests)
        second = _run(recap_pool_overrides)
        again = {
            alt: n - asked.get(alt, 0)
            for alt, n in server.requests.items()
            if n - asked.get(alt, 0)
        }
    assert second["blocks_resumed"] == 2 and second["rows_annotated"] == len(victim)
    alts = {r["uid"]: r for r in _pool_columns(recap_pool.lance_uri).values()}
    redone = {u for u in victim if not u.startswith("x")}
    assert len(again) == len(redone) and all(n == 1 for n in again.values())
    assert alts == before


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"backends": ["tagger", "nope"]}, "backends"),
        ({"paths.teacher": "data/no/such/teacher"}, "paths.teacher"),
        ({"backends": ["hf"], "hf.model": "/no/such/folder"}, "hf.model"),
        ({"backends": ["openai"]}, "openai.base_url"),
        ({"paths.wordnet": "/no/wordnet.parquet"}, "paths.wordnet"),
        ({"compute.min_actors": 3, "compute.max_actors": 2}, "compute.min_actors"),
        ({"select.exclude_uids": "/no/flagged_uids.parquet"}, "select.exclude_uids"),
    ],
)
def test_params_mistakes_stop_before_any_work(recap_pool, mlflow_store, overrides, field):
    with pytest.raises(ParamsError) as info:
        _run(recap_pool.overrides(**overrides))
    message = str(info.value)
    assert f"'{field}'" in message and "\n" not in message
    assert not (recap_pool.root / "recaption").exists()
