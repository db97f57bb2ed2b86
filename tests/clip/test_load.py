"""load_clip: a folder or an MLflow URI gives back the saved model exactly; bad input names itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tasks.clip import CONFIG_FILE, WEIGHTS_FILE, ModelLoadError, architecture_of, load_clip
from tests.support.tinymodel import TINY_CFG


def _reference_model(seed: int = 0):
    """The model save_tiny_model wrote, rebuilt directly with open_clip's class and seed."""
    import open_clip

    torch.manual_seed(seed)
    return open_clip.model.CLIP(**TINY_CFG).eval()


def _same_model(model, expected, tokenizer) -> bool:
    x = torch.randn(2, 3, 32, 32)
    text = tokenizer(["a red circle", "a blue square"])
    with torch.no_grad():
        return torch.equal(model.encode_image(x), expected.encode_image(x)) and torch.equal(
            model.encode_text(text), expected.encode_text(text)
        )


def _copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def test_folder_round_trip(tiny_folder: Path) -> None:
    model, preprocess, tokenizer = load_clip(tiny_folder)
    assert not model.training
    assert _same_model(model, _reference_model(), tokenizer)
    from PIL import Image

    assert tuple(preprocess(Image.new("RGB", (50, 40))).shape) == (3, 32, 32)
    assert tokenizer(["x"]).shape == (1, TINY_CFG["text_cfg"]["context_length"])
    assert architecture_of(str(tiny_folder)) == "clipmill-tiny-eval"


def test_relative_folder_resolves_under_the_project_root(
    tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.settings import get_settings

    _copy(tiny_folder, tmp_path / "models" / "tiny")
    monkeypatch.setenv("CLIPMILL_ROOT", str(tmp_path))
    monkeypatch.chdir(tiny_folder.parent)  # the working directory plays no part
    get_settings.cache_clear()
    try:
        model, _, tokenizer = load_clip("models/tiny")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert _same_model(model, _reference_model(), tokenizer)


def test_mlflow_uris_load_the_logged_folder(
    tiny_folder: Path, mlflow_store: str, tmp_path: Path
) -> None:
    import mlflow

    mlflow.set_tracking_uri(mlflow_store)
    # An explicit location: without one MLflow puts artifacts in ./mlruns of the working folder.
    exp = mlflow.create_experiment(
        "clip-lib-test", artifact_location=(tmp_path / "mlartifacts").as_uri()
    )
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_artifacts(str(tiny_folder), artifact_path="model")
    client = mlflow.MlflowClient(mlflow_store)
    client.create_registered_model("clip-lib-test")
    client.create_model_version(
        "clip-lib-test", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    expected = _reference_model()
    for uri in ("models:/clip-lib-test/1", f"runs:/{run.info.run_id}/model"):
        model, _, tokenizer = load_clip(uri)
        assert _same_model(model, expected, tokenizer), uri
        assert architecture_of(uri) == uri
    with pytest.raises(ModelLoadError, match="models:/clip-lib-test/7"):
        load_clip("models:/clip-lib-test/7")


def _bad_folders(tiny_folder: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (folder, what the error must say besides the path)."""
    no_config = _copy(tiny_folder, tmp / "no_config")
    (no_config / CONFIG_FILE).unlink()
    bad_json = _copy(tiny_folder, tmp / "bad_json")
    (bad_json / CONFIG_FILE).write_text("{not json")
    no_cfg_key = _copy(tiny_folder, tmp / "no_model_cfg")
    (no_cfg_key / CONFIG_FILE).write_text(json.dumps({"model_name": "x"}))
    bad_arch = _copy(tiny_folder, tmp / "bad_arch")
    (bad_arch / CONFIG_FILE).write_text(
        json.dumps({"model_cfg": {"embed_dim": 8, "vision_cfg": {"layers": "two"}}})
    )
    no_weights = _copy(tiny_folder, tmp / "no_weights")
    (no_weights / WEIGHTS_FILE).unlink()
    corrupt = _copy(tiny_folder, tmp / "corrupt_weights")
    (corrupt / WEIGHTS_FILE).write_bytes(b"garbage")
    mismatch = _copy(tiny_folder, tmp / "mismatch")
    cfg = json.loads((mismatch / CONFIG_FILE).read_text())
    cfg["model_cfg"]["embed_dim"] = 48
    (mismatch / CONFIG_FILE).write_text(json.dumps(cfg))
    return {
        "missing": (tmp / "missing", "does not exist"),
        "no_config": (no_config, f"no {CONFIG_FILE}"),
        "bad_json": (bad_json, "not a valid open_clip config"),
        "no_model_cfg": (no_cfg_key, "not a valid open_clip config"),
        "bad_arch": (bad_arch, "does not build"),
        "no_weights": (no_weights, f"{WEIGHTS_FILE} is missing"),
        "corrupt_weights": (corrupt, "corrupt"),
        "mismatch": (mismatch, "does not fit"),
    }


def test_every_bad_folder_raises_model_load_error_naming_it(
    tiny_folder: Path, tmp_path: Path
) -> None:
    for name, (folder, says) in _bad_folders(tiny_folder, tmp_path).items():
        with pytest.raises(ModelLoadError) as err:
            load_clip(str(folder))
        assert str(folder) in str(err.value), (name, str(err.value))
        assert says in str(err.value), (name, str(err.value))


def test_no_reference_says_a_model_is_needed() -> None:
    for ref in (None, "", "  "):
        with pytest.raises(ModelLoadError, match="needs a CLIP model"):
            load_clip(ref)
