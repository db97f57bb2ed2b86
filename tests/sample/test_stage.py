"""The stage as a whole: determinism (also through Ray), atomic output, params file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks import PROJECT_ROOT
from tasks.base import ParamsError
from tasks.sample import stage
from tasks.sample.params import SampleParams

from .conftest import small_params


def test_same_params_give_identical_bytes_also_through_ray(small_sample, tmp_path, ray_session):
    """Built again, now with the sources read as Ray tasks: every file byte-identical."""
    out, params, _ = small_sample
    again = small_params(tmp_path / "again")
    assert again.model_dump(exclude={"out_dir"}) == params.model_dump(exclude={"out_dir"})
    stage.run(again)
    first = (out / "manifest.json").read_bytes()
    second = (tmp_path / "again" / "manifest.json").read_bytes()
    assert first == second  # sha256 of every file, the counts and the params (out_dir aside)


def test_failure_leaves_previous_output_untouched(small_sample, tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("previous build")

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(stage, "build_site", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        tiny = {"openclipart_max_items": 20, "emoji_max_items": 20, "tuxpaint_max_items": 10}
        stage.run(small_params(target, fashion_mnist_max_items=10, **tiny))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folder left behind
    assert [p.name for p in target.iterdir()] == ["old.txt"]


def test_params_file_holds_every_field_and_validates():
    path = PROJECT_ROOT / "params" / "sample.yaml"
    import yaml

    data = yaml.safe_load(path.read_text())
    assert set(data) == set(SampleParams.model_fields)
    assert SampleParams.from_yaml(path) == SampleParams()


@pytest.mark.parametrize(
    "override",
    [
        {"emoji_eval_fraction": 2},
        {"seed": -1},
        {"planted_transforms": ["blur"]},
        {"base_url": "ftp://x"},
        {"nope": 1},
    ],
)
def test_bad_params_are_refused(override):
    with pytest.raises(ParamsError):
        SampleParams.from_yaml(PROJECT_ROOT / "params" / "sample.yaml", override)


def test_out_dir_resolves_under_the_project():
    from tasks.io.paths import resolve_path
    from tasks.settings import get_settings

    assert resolve_path("data/sample") == get_settings().root / "data" / "sample"
    assert resolve_path("/abs/x") == Path("/abs/x")
