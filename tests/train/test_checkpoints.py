"""Train's model folders and checkpoints: the exported folder loads through open_clip and
tasks.clip.load_clip alike; a corrupt train checkpoint is refused (no unpickling)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tasks.clip import build_model, load_clip
from tasks.train.checkpoints import (
    CheckpointError,
    export_model_folder,
    load_train_state,
    save_local_checkpoint,
)


def test_model_folder_round_trips_through_open_clip_and_load_clip(tmp_path: Path) -> None:
    import open_clip

    torch.manual_seed(0)
    built = build_model("clipmill-tiny-vit")
    folder = export_model_folder(tmp_path / "student", built, "model: clipmill-tiny-vit\n", step=3)
    assert {"model.safetensors", "open_clip_config.json", "params.yaml", "checkpoint.pt"} <= {
        p.name for p in folder.iterdir()
    }
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["name"] == "clipmill-tiny-vit"
    oc_model, _, oc_pre = open_clip.create_model_and_transforms(
        "clipmill-tiny-vit", pretrained=str(folder / "checkpoint.pt")
    )
    model, pre, tok = load_clip(str(folder))
    built.model.eval()
    oc_model.eval()
    x = torch.randn(2, 3, 64, 64)
    text = tok(["a red circle", "a blue square"])
    with torch.no_grad():
        ref = built.model.encode_image(x)
        assert torch.equal(model.encode_image(x), ref)
        assert torch.equal(oc_model.encode_image(x), ref)
        assert torch.equal(model.encode_text(text), built.model.encode_text(text))


def test_corrupt_train_checkpoint_is_refused(tmp_path: Path) -> None:
    built = build_model("clipmill-tiny-vit")
    opt = torch.optim.AdamW(built.model.parameters())
    path = save_local_checkpoint(tmp_path, 4, built.model, opt, {"step": 4}, keep=2)
    assert load_train_state(path, built.model, opt)["step"] == 4
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-10:] = b"\x00" * 10
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(
        CheckpointError, match=r"checkpoint_00000004: file model.safetensors is corrupt"
    ):
        load_train_state(path, built.model, opt)


def test_restore_skips_a_checkpoint_cut_short_and_takes_the_newest_whole_one(
    tmp_path: Path,
) -> None:
    """A Ray Train worker killed while Ray copied checkpoint 6 into storage leaves its folder
    with a manifest and a file cut short: the restart resumes from checkpoint 3 (exact too)
    instead of failing on every restart."""
    from tasks.train.params import TrainParams
    from tasks.train.worker import Checkpointer

    torch.manual_seed(0)
    built = build_model("clipmill-tiny-vit")
    opt = torch.optim.AdamW(built.model.parameters())
    want = {k: v.clone() for k, v in built.model.state_dict().items()}
    save_local_checkpoint(tmp_path, 3, built.model, opt, {"step": 3, "history": []}, keep=2)
    with torch.no_grad():
        for param in built.model.parameters():
            param.add_(1.0)
    newest = save_local_checkpoint(tmp_path, 6, built.model, opt, {"step": 6}, keep=2)
    data = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(data[: len(data) // 2])  # the copy cut short

    p = TrainParams(shards=str(tmp_path), run_root=str(tmp_path), registered_model_name="")
    ckpt = Checkpointer(p, tmp_path, rank=0, world=1, local_mode=True)
    fresh = build_model("clipmill-tiny-vit").model
    state = ckpt.restore(fresh, torch.optim.AdamW(fresh.parameters()))
    assert state["step"] == 3 and ckpt.last_path.endswith("checkpoint_00000003")
    got = fresh.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
