"""`reinforce` and `coca` in the registry: placed after curate and before train, opt-in (not in a
pipeline run that names no stages), `reinforce` without Ray."""

from __future__ import annotations

from tasks.registry import STAGES


def test_new_stages_sit_between_curate_and_train_and_are_opt_in() -> None:
    order = list(STAGES)
    for name in ("coca", "reinforce"):
        assert order.index("curate") < order.index(name) < order.index("train")
        assert not STAGES[name].in_default_run
    assert STAGES["train"].in_default_run and STAGES["curate"].in_default_run
    assert not STAGES["reinforce"].uses_ray
    assert STAGES["coca"].run_function == STAGES["train"].run_function


def test_committed_params_files_validate() -> None:
    for name in ("coca", "reinforce"):
        spec = STAGES[name]
        p = spec.model().from_yaml(spec.params_file)
        assert p.output_dir in ("data/models/coca", "data/reinforce")  # type: ignore[attr-defined]
    coca = STAGES["coca"].model().from_yaml(STAGES["coca"].params_file)
    assert coca.loss == "coca" and coca.model == "clipmill-tiny-coca"  # type: ignore[attr-defined]
