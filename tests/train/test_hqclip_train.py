"""HQ-CLIP losses in short real training runs: on/off, each part, exact resume with the tag head."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import tiny_params
from .distill_support import interrupted_then_resumed, same_weights, write_hq_shards


@pytest.fixture(scope="module")
def hq_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hq_shards(tmp_path_factory.mktemp("hq") / "shards")


def test_vocabulary_comes_from_the_shards(hq_shards: Path) -> None:
    import torch

    from tasks.train.objectives.hqclip import HQClipObjective
    from tasks.train.params import TrainParams

    model = torch.nn.Linear(1, 1)  # only its device and projection width are read
    model.text_projection = torch.nn.Parameter(torch.zeros(4, 8))  # type: ignore[assignment]
    obj = HQClipObjective(TrainParams(shards=str(hq_shards), hqclip={"enabled": True}), model, 0, 1)
    # every colour and shape of the fixture is named by >= 2 samples
    assert obj.vocab == sorted(obj.vocab, key=lambda t: obj.vocab.index(t))
    assert set(obj.vocab) == {"red", "green", "blue", "yellow", "circle", "square", "triangle"}
    assert obj.head.out_features == 7 and obj.head.in_features == 8


def test_hqclip_on_off_and_parts(tmp_path: Path, hq_shards: Path) -> None:
    from tasks.train.stage import run

    def train(name: str, **hq: object) -> str:
        p = tiny_params(tmp_path / name, hq_shards, steps=4, checkpoint_every=4, hqclip=hq)
        run(p)
        return p.output_dir

    off = train("off")
    plain = train("plain", enabled=True, negative_weight=0.0, tag_weight=0.0)
    negatives = train("neg", enabled=True, negative_weight=1.0, tag_weight=0.0)
    tags = train("tags", enabled=True, negative_weight=0.0, tag_weight=1.0)
    # both parts off is the contrastive objective (to float rounding: open_clip's ClipLoss
    # computes text->image logits with its own matmul, ours transposes the image->text ones)
    assert same_weights(off, plain, atol=1e-5)
    assert not same_weights(off, negatives, atol=1e-4)
    assert not same_weights(off, tags, atol=1e-4)


def test_hqclip_resumes_exactly(
    tmp_path: Path, hq_shards: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.train.stage import run

    hq = {"enabled": True, "negative_weight": 1.0, "tag_weight": 1.0}
    straight = tiny_params(tmp_path / "a", hq_shards, steps=6, checkpoint_every=3, hqclip=hq)
    run(straight)
    resumed = straight.model_copy(
        update={"run_root": str(tmp_path / "b" / "runs"), "output_dir": str(tmp_path / "b" / "m")}
    )
    assert interrupted_then_resumed(resumed, monkeypatch, stop_after=4)["resumed_from_step"] == 3
    assert same_weights(straight.output_dir, resumed.output_dir)


@pytest.mark.slow  # half a minute; two Ray Train workers run by default in test_distributed.py
def test_two_workers_equal_one_worker(tmp_path: Path, hq_shards: Path, ray_session) -> None:
    """Hard negatives and tag targets gathered across workers, the vocabulary broadcast from rank
    0: two Ray Train workers train what one worker does on the same global batch (a loss over
    each worker's local negatives or tags only would give different weights)."""
    from safetensors.torch import load_file

    from tasks.train.stage import run

    hq = {"enabled": True, "negative_weight": 1.0, "tag_weight": 1.0}
    one = tiny_params(tmp_path / "one", hq_shards, steps=3, checkpoint_every=3, hqclip=hq)
    two = one.model_copy(
        update={
            "num_workers": 2,
            "run_root": str(tmp_path / "two" / "runs"),
            "output_dir": str(tmp_path / "two" / "m"),
        }
    )
    m1, m2 = run(one), run(two)
    assert m1["world_size"] == 1 and m2["world_size"] == 2
    assert abs(m1["loss_last"] - m2["loss_last"]) < 1e-4
    a = load_file(str(Path(one.output_dir) / "model.safetensors"))
    b = load_file(str(Path(two.output_dir) / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    # the tag head (train state only, rank 0's) matches one worker's too
    heads = [
        load_file(str(next(Path(p.run_root).glob("*/checkpoint_00000003/objective.safetensors"))))
        for p in (one, two)
    ]
    assert heads[0].keys() == heads[1].keys() == {"head.weight", "head.bias"}
    assert max(float((heads[0][k] - heads[1][k]).abs().max()) for k in heads[0]) < 1e-4
