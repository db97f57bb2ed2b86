"""SigLIP (already selectable by `loss: siglip`): its loss by hand through the objective hook, and
short training runs with the plain and the A-CLIP objective (distillation off: the defaults)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .conftest import tiny_params


def test_siglip_objective_loss_by_hand() -> None:
    """-(1/n) sum_ij log sigmoid(z_ij (t x_i.y_j + b)), z = +1 on the diagonal, -1 elsewhere."""
    from tasks.clip import build_model
    from tasks.train.loop import model_kwargs_for_loss
    from tasks.train.objectives.base import Batch
    from tasks.train.objectives.registry import build_objective
    from tasks.train.params import TrainParams

    torch.manual_seed(0)
    built = build_model("clipmill-tiny-vit", model_kwargs=model_kwargs_for_loss("siglip"))
    model = built.model.eval()
    model.output_dict = True
    p = TrainParams(loss="siglip")
    objective = build_objective(p, model, 0, 1)
    batch = Batch(torch.rand(3, 3, 64, 64), built.tokenizer(["a red circle", "a dog", "tux"]))
    with torch.no_grad():
        loss = objective.loss(model, batch, 0).item()
        img = model.encode_image(batch.images, normalize=True).double()
        txt = model.encode_text(batch.texts, normalize=True).double()
    t, b = math.exp(model.logit_scale.item()), model.logit_bias.item()
    assert t == pytest.approx(10.0) and b == pytest.approx(-10.0)  # SigLIP's init
    total = 0.0
    for i in range(3):
        for j in range(3):
            z = 1.0 if i == j else -1.0
            logit = t * float(img[i] @ txt[j]) + b
            total += -math.log(1 / (1 + math.exp(-z * logit)))
    assert loss == pytest.approx(total / 3, rel=1e-5)


@pytest.mark.parametrize("aclip", [False, True])
def test_siglip_trains(tmp_path: Path, shards_dir: Path, aclip: bool) -> None:
    from tasks.train.stage import run

    p = tiny_params(tmp_path, shards_dir, steps=4, loss="siglip", lr=5e-3, aclip={"enabled": aclip})
    run(p)
    weights = load_file(str(Path(p.output_dir) / "model.safetensors"))
    assert "logit_bias" in weights and weights["logit_bias"].item() != pytest.approx(-10.0)
    summary = next((tmp_path / "runs").iterdir()) / "summary.json"
    history = json.loads(summary.read_text())["history"]
    assert len(history) == 4 and all(math.isfinite(h[1]) for h in history), history
