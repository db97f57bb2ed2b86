"""Exact resume: a run killed with SIGKILL and restarted ends with bitwise the same weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from .conftest import tiny_params

# The child trains in local mode and parks after step 6 (checkpoint at 4 is on disk), so the
# parent's SIGKILL lands mid-run at a known point: steps 5-6 are lost and must be redone.
CHILD = """
import sys, time
from pathlib import Path
import tasks.train.loop as loop
from tasks.train.params import TrainParams
from tasks.train.stage import run

real = loop.train_steps
def parked(*args, on_step, **kwargs):
    def hook(r):
        on_step(r)
        if r.step == 5:
            Path(sys.argv[2]).write_text("parked")
            time.sleep(600)
    return real(*args, on_step=hook, **kwargs)
loop.train_steps = parked
run(TrainParams.model_validate_json(Path(sys.argv[1]).read_text()))
"""


def test_sigkill_then_resume_gives_identical_weights(tmp_path: Path, shards_dir: Path) -> None:
    from tasks.train.stage import run

    killed = tiny_params(
        tmp_path / "killed",
        shards_dir,
        steps=8,
        checkpoint_every=4,
        train_augment=True,
        caption_fields={"txt": 0.5, "recaption": 0.5},
    )
    (tmp_path / "params.json").write_text(killed.model_dump_json())
    marker = tmp_path / "parked"
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "OMP_NUM_THREADS": "1",
    }
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "params.json"), str(marker)], env=env
    )
    deadline = time.time() + 120
    while not marker.exists():
        assert child.poll() is None, "child training process died before reaching step 6"
        assert time.time() < deadline, "child did not reach step 6 in time"
        time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL

    resumed = run(killed)
    assert resumed["resumed_from_step"] == 4

    straight = run(
        killed.model_copy(
            update={
                "run_root": str(tmp_path / "straight" / "runs"),
                "output_dir": str(tmp_path / "straight" / "model"),
            }
        )
    )
    assert straight["resumed_from_step"] == 0
    a = load_file(str(Path(killed.output_dir) / "model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a), "resumed weights differ from the uninterrupted run"
