"""The curate step type: declared inputs drive what the stage prepares, setup runs once, results
(metrics, artifacts) reach the metrics and the report, report steps never decide."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.curate.params import STEP_NAMES, CurateParams, ImageBasedParams
from tasks.curate.steps.balance import EntryCounts
from tasks.curate.steps.base import Input, Step, StepContext, StepResult
from tasks.curate.steps.registry import (
    REPORTS,
    STEPS,
    build_reports,
    build_steps,
    needed_inputs,
)


def test_registry_covers_every_step_name_with_its_own_section():
    assert list(STEPS) == list(STEP_NAMES)
    fields = CurateParams.model_fields
    for name, cls in STEPS.items():
        assert cls.name == name
        if cls.params_model is not None:
            assert fields[name].annotation is cls.params_model, name
        assert cls.requires <= set(typing.get_args(Input)), name
    for cls in REPORTS.values():
        assert cls.follows in STEPS


def test_inputs_are_the_union_of_what_the_steps_declare():
    text_only = CurateParams(steps=["basic", "text_based"])
    assert needed_inputs([*build_steps(text_only), *build_reports(text_only)]) == frozenset()
    hashes_only = CurateParams(
        steps=["exact_dedup", "decontaminate"],
        decontaminate={"embed_threshold": None, "hash_embed_min": None, "crop_embed_min": None},
    )
    got = needed_inputs([*build_steps(hashes_only), *build_reports(hashes_only)])
    assert got == {"hashes", "eval_features"}, "no cosine gate: decontamination embeds nothing"
    default = CurateParams()
    assert [r.name for r in build_reports(default)] == ["planted_qa"]
    assert needed_inputs(build_steps(default)) == {
        "matches",
        "hashes",
        "embeddings",
        "eval_features",
        "pool_rows",  # clip_score's top fraction is taken over the whole pool
    }


def _never(what: str):
    def fail(*args, **kwargs):
        raise AssertionError(f"{what} was prepared but no step declared it")

    return fail


def _base(hand_pool, out: Path, **kw) -> CurateParams:
    """The hand pool without a model, shards or grids; `kw` replaces whole fields."""
    base = {
        "paths": {
            "pool_uri": hand_pool.lance_uri,
            "crawl_dir": str(hand_pool.crawl_dir),
            "out_dir": str(out),
            "clip_model": None,
            "eval_dir": str(hand_pool.eval_dir),
        },
        "metadata": {"wordnet": None, "extra": [str(hand_pool.metadata)]},
        "outputs": {"materialise": False, "report_examples": 0},
    }
    return CurateParams(**{**base, **kw})


def test_text_only_pipeline_computes_no_image_features(
    hand_pool, tmp_path, ray_session, monkeypatch
):
    import tasks.curate.inputs as inputs
    import tasks.curate.prepare as prepare
    from tasks.curate.stage import run

    monkeypatch.setattr(prepare, "compute_features", _never("image features"))
    monkeypatch.setattr(prepare, "ensure_features", _never("image features"))
    for name in inputs.SIDE_INPUTS:
        monkeypatch.setitem(inputs.SIDE_INPUTS, name, _never(name))
    wordnet = tmp_path / "wn.parquet"
    pq.write_table(
        pa.table(
            {
                "synset_id": ["n1"],
                "pos": ["n"],
                "lemmas": [["dog"]],
                "in_imagenet21k": [True],
            }
        ),
        wordnet,
    )
    params = _base(
        hand_pool,
        tmp_path / "out",
        steps=["basic", "text_based"],
        metadata={"wordnet": str(wordnet)},
    )
    metrics = run(params)
    assert "rows_featurised" not in metrics and "metadata_entries" not in metrics
    assert 0 < metrics["funnel_text_based"] < metrics["funnel_basic"]


class Probe(Step[ImageBasedParams]):
    """A step standing in for a new one: it declares one side input and hands back artifacts."""

    name = "image_based"
    params_model = ImageBasedParams
    requires = frozenset({"target_embeddings"})
    setups: typing.ClassVar[list[int]] = []
    calls: typing.ClassVar[list[int]] = []

    def setup(self, ctx: StepContext) -> None:
        assert ctx.target_embeddings is not None, "inputs are prepared before setup"
        self.setups.append(1)

    def __call__(self, rows: pa.Table, ctx: StepContext) -> StepResult:
        self.calls.append(rows.num_rows)
        counts = np.array([3, 1, 0])
        return StepResult.from_reasons(
            [None] * rows.num_rows,
            metrics={"probe_rows": rows.num_rows},
            artifacts={"entry_counts": EntryCounts(counts, counts, 2), "probe_note": "hello"},
        )


def test_a_new_step_gets_its_input_one_setup_and_its_artifacts_reported(
    hand_pool, tmp_path, ray_session, monkeypatch
):
    import tasks.curate.inputs as inputs
    import tasks.curate.prepare as prepare
    from tasks.curate.stage import run

    prepared: list[str] = []

    def fake_targets(ctx: StepContext, rows: pa.Table) -> None:
        assert rows.num_rows == 43, "a side input sees every pool row"
        prepared.append("target_embeddings")
        ctx.target_embeddings = np.ones((1, 2), np.float32)

    monkeypatch.setitem(STEPS, "image_based", Probe)
    monkeypatch.setitem(inputs.SIDE_INPUTS, "target_embeddings", fake_targets)
    monkeypatch.setitem(inputs.SIDE_INPUTS, "eval_features", _never("eval_features"))
    monkeypatch.setattr(prepare, "ensure_features", _never("image features"))
    Probe.setups.clear()
    Probe.calls.clear()
    out = tmp_path / "out"
    params = _base(hand_pool, out, steps=["basic", "image_based"], image_based={"target_dir": "x"})
    metrics = run(params)
    assert prepared == ["target_embeddings"], "prepared exactly what the step declared, once"
    assert Probe.setups == [1] and len(Probe.calls) == 1
    assert metrics["probe_rows"] == Probe.calls[0] == metrics["funnel_basic"]
    assert (out / "report" / "entry_counts.png").exists()
    listed = json.loads((out / "report" / "artifacts.json").read_text())
    assert listed == {"image_based": ["entry_counts", "probe_note"]}


def test_params_sections_and_checks_live_with_their_step():
    from tasks.decontam.params import HashMatchParams

    with pytest.raises(ValueError, match="kept fractions"):
        HashMatchParams(crops=[1.5])  # params/decontaminate.yaml's match, read by curate too
    with pytest.raises(ValueError, match="unknown field|Extra inputs"):
        CurateParams.model_validate({"decontaminate": {"crops": [0.9]}})  # not re-declared
    with pytest.raises(ValueError, match="unknown field|Extra inputs"):
        CurateParams.model_validate({"decontaminate": {"eval_view": "raw"}})  # nor the view
    with pytest.raises(ValueError, match="clip_score.fraction or clip_score.threshold"):
        CurateParams(steps=["clip_score"], clip_score={"fraction": None})
    # a section of a step not in `steps` may stay unusable
    CurateParams(steps=["basic"], clip_score={"fraction": None})
    with pytest.raises(ValueError, match="image_based.target_dir"):
        CurateParams(steps=["image_based"])
    with pytest.raises(ValueError, match="unknown field|Extra inputs"):
        CurateParams.model_validate({"balance_t": 200})
    p = CurateParams.model_validate({"balance": {"t": 200}})
    assert p.balance.t == 200 and p.balance.target_size is None


def test_report_records_the_inputs_read_from_other_stages(tmp_path, mlflow_store):
    import mlflow

    from tasks.curate.report import write_report
    from tasks.tracking import tracked_run

    recorded = {"crawl": {"file": "params/crawl.yaml", "resize": {"image_size": 256}}}
    funnel = [{"step": "input", "left": 1, "dropped": {}}]
    with tracked_run("curate", {}, {}) as run:
        write_report(tmp_path, funnel, {}, {}, recorded)
    assert json.loads((tmp_path / "inputs.json").read_text()) == recorded
    params = mlflow.get_run(run.info.run_id).data.params
    assert params["curate.inputs.crawl.resize.image_size"] == "256"


def test_decontaminate_reads_the_match_section_of_the_decontaminate_stage(tmp_path, monkeypatch):
    """The eval view, hash thresholds and eval crops come from <root>/params/decontaminate.yaml's
    `match`; without crops the crop gate asks for no embeddings."""
    from tasks.curate.inputs import decontaminate_match
    from tasks.curate.stage import _recorded_inputs
    from tasks.curate.steps.base import StepContext

    from .conftest import use_decontaminate_match

    gate_only_crops = CurateParams(
        steps=["decontaminate"],
        decontaminate={"embed_threshold": None, "hash_embed_min": None, "crop_embed_min": 0.78},
    )
    assert needed_inputs(build_steps(gate_only_crops)) == {"hashes", "eval_features", "embeddings"}
    path = use_decontaminate_match(
        tmp_path, monkeypatch, crops=[], hash_max_distance=2, eval_view="raw"
    )
    match = decontaminate_match()
    assert match.crops == [] and match.hash_max_distance == 2 and match.dhash_max_distance == 8
    assert match.eval_view == "raw"
    assert needed_inputs(build_steps(gate_only_crops)) == {"hashes", "eval_features"}
    ctx = StepContext(params=gate_only_crops, out_dir=tmp_path, hash_match=match)
    assert _recorded_inputs(ctx) == {
        "decontaminate": {"file": str(path), "match": match.model_dump(mode="json")}
    }
