"""Model files carrying pickled code: every loader of the project refuses them and runs nothing.

The payload, when unpickled, creates a file; the test first proves it does (a plain
`torch.load(weights_only=False)` in a child process), then that no loader of ours creates it.
Code-path test on a tiny randomly initialised module: no real weights are needed.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

RELIABILITY_STAGE = (
    "train"  # model loaders of train / teacher / evaluate (tests/hostile/recording.py)
)
RELIABILITY_DOOR = "library"


class _Payload:
    """Unpickling this calls open(marker, "w"): a file appears if any code runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.fixture()
def evil(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2, 2), "x": _Payload(marker)}, path)
    return path, marker


def test_the_payload_really_runs_when_unpickled(evil: tuple[Path, Path]) -> None:
    """Positive control (in a child process): without weights_only the file appears."""
    path, marker = evil
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, timeout=120)
    assert marker.exists()


def test_tower_weights_loader_refuses_pickled_code(evil: tuple[Path, Path]) -> None:
    from tasks.clip.towers import TowerWeightsError, load_state_dict_source

    path, marker = evil
    with pytest.raises(TowerWeightsError, match=str(path)):
        load_state_dict_source(str(path))
    renamed = path.with_suffix(".safetensors")  # a pickle under a safetensors name
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(TowerWeightsError, match=str(renamed)):
        load_state_dict_source(str(renamed))
    assert not marker.exists()


def test_open_clip_checkpoint_loader_refuses_pickled_code(evil: tuple[Path, Path]) -> None:
    import open_clip

    path, marker = evil
    for name in (path, path.with_name("open_clip_model.safetensors")):
        if name != path:
            name.write_bytes(path.read_bytes())
        with pytest.raises(Exception):  # noqa: B017,PT011 - any refusal, as long as nothing runs
            open_clip.load_checkpoint(torch.nn.Linear(2, 2), str(name), strict=False)
    assert not marker.exists()


def test_train_checkpoint_with_pickled_optimizer_state_is_refused(
    tmp_path: Path, evil: tuple[Path, Path]
) -> None:
    from safetensors.torch import save_file

    from tasks.train.checkpoints import MANIFEST, CheckpointError, load_train_state

    path, marker = evil
    ckpt = tmp_path / "checkpoint_000001"
    ckpt.mkdir()
    model = torch.nn.Linear(2, 2)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, ckpt / "model.safetensors"
    )
    (ckpt / "optimizer.pt").write_bytes(path.read_bytes())
    (ckpt / "state.json").write_text(json.dumps({"step": 1}))
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in ckpt.iterdir()}
    (ckpt / MANIFEST).write_text(json.dumps(digests))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        load_train_state(ckpt, model, optimizer)
    assert not marker.exists()
