"""The `coca` registry stage: the train stage with loss `coca` trains a tiny CoCa, writes a model
folder that `load_clip` rebuilds as a CoCa, and the recaption backend captions with it.

A code-path test for generation quality: a few steps on hand-made shards teach the decoder
little, so it checks that training runs and lowers the loss, the folder round trip, and that both
generation modes produce non-empty captions from the trained weights with provenance naming them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.recaption.backends.base import CaptionRequest, build_captioner
from tasks.recaption.params import CocaParams, RecaptionParams
from tests.train.shards import write_shards


@pytest.fixture(scope="module")
def coca_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from tasks.train.params import TrainParams
    from tasks.train.stage import run

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("coca")
    shards = write_shards(tmp / "shards", n_shards=1, per_shard=16, size=40)
    p = TrainParams(
        model="clipmill-tiny-coca",
        loss="coca",
        shards=str(shards),
        steps=4,
        batch_size=8,
        lr=2e-3,
        warmup_steps=1,
        checkpoint_every=4,
        run_root=str(tmp / "runs"),
        output_dir=str(tmp / "models" / "coca"),
        registered_model_name="",
        shuffle_buffer=8,
    )
    return Path(p.output_dir), run(p)


def test_train_stage_trains_a_coca_folder(coca_folder: tuple[Path, dict]) -> None:
    from open_clip.coca_model import CoCa

    from tasks.clip import load_clip

    folder, metrics = coca_folder
    assert metrics["loss_last"] < metrics["loss_first"]
    model, _, tokenizer = load_clip(str(folder))
    assert isinstance(model, CoCa)
    out = model(torch.zeros(1, 3, 64, 64), tokenizer(["a red circle"]))
    assert {"logits", "labels"} <= set(out)


@pytest.mark.parametrize("generation", ["top_p", "beam_search"])
def test_backend_captions_with_the_trained_model(
    coca_folder: tuple[Path, dict], generation: str
) -> None:
    folder, _ = coca_folder
    params = RecaptionParams(
        backends=["coca"],
        coca=CocaParams(model=str(folder), generation=generation, max_tokens=6, num_beams=2),
    )
    captioner = build_captioner("coca", params)
    rng = np.random.default_rng(0)
    reqs = [
        CaptionRequest(f"u{i}", Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)), "a")
        for i in range(2)
    ]
    anns = captioner.annotate(reqs)
    assert all(a.error is None and a.long_positive for a in anns)
    version = anns[0].sources["long_positive"]
    assert version.startswith("coca:sha256:") and len(version) == len("coca:sha256:") + 16


def test_coca_loss_needs_a_coca_model_and_no_accumulation() -> None:
    from tasks.train.loop import LOSSES, _loss_of
    from tasks.train.params import TrainParams

    with pytest.raises(ValueError, match="loss coca with accum_steps 2"):
        TrainParams(loss="coca", accum_steps=2)
    loss_fn = LOSSES["coca"](TrainParams(loss="coca"), 0, 1)
    plain = {"image_features": torch.zeros(2, 4), "text_features": torch.zeros(2, 4)}
    with pytest.raises(ValueError, match="needs a CoCa model"):
        _loss_of(loss_fn, {**plain, "logit_scale": torch.tensor(1.0)})


def test_recaption_preflight_names_a_missing_coca_folder(tmp_path: Path) -> None:
    from tasks.base import ParamsError
    from tasks.recaption.preflight import preflight

    p = RecaptionParams(
        backends=["coca"],
        coca=CocaParams(model=str(tmp_path / "nope")),
        paths={"teacher": None},  # type: ignore[arg-type]
    )
    with pytest.raises(ParamsError, match="field 'coca.model'"):
        preflight(p)
