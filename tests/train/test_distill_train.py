"""Online distillation in short real training runs: on/off, both losses, an ensemble, exact resume.

The teacher is a tiny randomly initialised CLIP folder (a code-path test: no trained teacher
weights are needed to check that the targets reach the student and that resume is exact)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tinymodel import TINY_CFG, save_tiny_model

from .conftest import tiny_params
from .distill_support import interrupted_then_resumed, same_weights, write_hq_shards


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distill")
    return {
        "shards": write_hq_shards(root / "shards"),
        "teacher": save_tiny_model(root / "teacher", seed=1),
        "teacher2": save_tiny_model(root / "teacher2", seed=2),
        # the student's width (clipmill-tiny-vit, 64): feature distillation compares directly
        "teacher64": save_tiny_model(root / "teacher64", seed=3, cfg={**TINY_CFG, "embed_dim": 64}),
    }


def _params(tmp: Path, data: dict[str, Path], **distill: object) -> object:
    cfg = {"mode": "online", "teachers": [str(data["teacher"])], **distill}
    return tiny_params(tmp, data["shards"], steps=6, checkpoint_every=3, distill=cfg)


def test_online_distillation_changes_training(tmp_path: Path, data: dict[str, Path]) -> None:
    from tasks.train.stage import run

    off = tiny_params(tmp_path / "off", data["shards"], steps=6, checkpoint_every=3)
    run(off)
    on = _params(tmp_path / "on", data, w0=0.5, w1=1.0)
    metrics = run(on)
    assert metrics["steps"] == 6
    assert not same_weights(off.output_dir, on.output_dir, atol=1e-4)  # type: ignore[attr-defined]


def test_kd_weight_zero_is_plain_clip(tmp_path: Path, data: dict[str, Path]) -> None:
    """w0 = 1, w1 = 0 trains exactly what the contrastive objective does (to float rounding):
    the same batches, crops and captions reach the student, and CLIP-CE is open_clip's loss."""
    from tasks.train.stage import run

    off = tiny_params(tmp_path / "off", data["shards"], steps=4, train_augment=True)
    run(off)
    on = tiny_params(
        tmp_path / "on",
        data["shards"],
        steps=4,
        train_augment=True,
        distill={"mode": "online", "teachers": [str(data["teacher"])], "w0": 1.0, "w1": 0.0},
    )
    run(on)
    assert same_weights(off.output_dir, on.output_dir, atol=1e-5)


def test_affinity_ensemble_and_caption_types_run(tmp_path: Path, data: dict[str, Path]) -> None:
    from tasks.train.stage import run

    p = _params(
        tmp_path,
        data,
        loss="affinity",
        teachers=[str(data["teacher"]), str(data["teacher2"])],
        caption_types=["txt", "recaption"],
    )
    run(p)
    assert (Path(p.output_dir) / "model.safetensors").is_file()  # type: ignore[attr-defined]


def test_online_distillation_resumes_exactly(
    tmp_path: Path, data: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.train.stage import run

    straight = tiny_params(
        tmp_path / "straight",
        data["shards"],
        steps=6,
        checkpoint_every=3,
        train_augment=True,
        distill={"mode": "online", "teachers": [str(data["teacher"])]},
    )
    run(straight)
    resumed = straight.model_copy(  # type: ignore[attr-defined]
        update={
            "run_root": str(tmp_path / "resumed" / "runs"),
            "output_dir": str(tmp_path / "resumed" / "model"),
        }
    )
    metrics = interrupted_then_resumed(resumed, monkeypatch, stop_after=4)
    assert metrics["resumed_from_step"] == 3
    assert same_weights(straight.output_dir, resumed.output_dir)  # type: ignore[attr-defined]


def test_siglip_with_distillation_is_refused(tmp_path: Path, data: dict[str, Path]) -> None:
    from tasks.train.stage import run

    p = tiny_params(
        tmp_path,
        data["shards"],
        loss="siglip",
        distill={"mode": "online", "teachers": [str(data["teacher"])]},
    )
    with pytest.raises(Exception, match="distill.mode"):
        run(p)


def test_feature_distillation_trains_and_fd_zero_icl_zero_kd_zero_is_plain_clip(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    """CLIP-KD's terms in a real run: on, they change what the student learns; with w_fd, w_icl
    and w1 at 0 and w0 at 1 they reduce to the contrastive objective exactly (same batches)."""
    from tasks.train.stage import run

    off = tiny_params(tmp_path / "off", data["shards"], steps=4, train_augment=True)
    run(off)
    terms = {"w0": 1.0, "w1": 0.0, "w_fd": 0.0, "w_icl": 0.0}
    plain = tiny_params(
        tmp_path / "plain",
        data["shards"],
        steps=4,
        train_augment=True,
        distill={
            "mode": "online",
            "teachers": [str(data["teacher64"])],
            "loss": "feature",
            **terms,
        },
    )
    run(plain)
    assert same_weights(off.output_dir, plain.output_dir, atol=1e-5)  # type: ignore[attr-defined]
    terms = {"w0": 0.0, "w1": 0.0, "w_fd": 1.0, "w_icl": 1.0}
    on = plain.model_copy(  # type: ignore[attr-defined]
        update={
            "distill": plain.distill.model_copy(update=terms),  # type: ignore[attr-defined]
            "run_root": str(tmp_path / "on" / "runs"),
            "output_dir": str(tmp_path / "on" / "model"),
        }
    )
    assert run(on)["steps"] == 4
    assert not same_weights(off.output_dir, on.output_dir, atol=1e-4)  # type: ignore[attr-defined]
    narrow = _params(tmp_path / "narrow", data, loss="feature")  # 32-wide teacher, 64-wide student
    with pytest.raises(ValueError, match="embed_dim"):
        run(narrow)
