"""StepClock: each step's phases, wall against CPU, so a waiting phase shows (tasks/train/loop.py);
the train stage writes every rank's split into its run summary."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .conftest import tiny_params


def _busy(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_a_waiting_phase_shows_wall_above_cpu_and_the_first_step_is_left_out() -> None:
    from tasks.train.loop import STEP_PHASES, StepClock

    clock = StepClock()
    for step in range(3):
        clock.start()
        time.sleep(0.5 if step == 0 else 0.03)  # step 0 (buffer fill) is slow: left out
        clock.mark("data")
        _busy(0.03)
        clock.mark("forward_backward")
    out = clock.summary()
    assert set(out["wall_ms"]) == set(STEP_PHASES)
    assert 25 <= out["wall_ms"]["data"] < 200  # the 500 ms first step would lift the mean
    assert out["cpu_ms"]["data"] < 10  # sleeping: wall without CPU is a wait
    assert out["cpu_ms"]["forward_backward"] >= 25  # working: CPU close to its wall
    assert out["wall_ms"]["allreduce"] == 0.0  # a phase never marked


def test_the_run_summary_holds_the_step_split(tmp_path: Path, shards_dir: Path) -> None:
    from tasks.train.loop import STEP_PHASES
    from tasks.train.stage import run

    p = tiny_params(tmp_path, shards_dir, steps=3, checkpoint_every=3)
    run(p)
    (summary,) = Path(p.run_root).glob("*/summary.json")
    phases = json.loads(summary.read_text())["step_phases"]
    assert len(phases) == 1  # one rank in local mode
    assert set(phases[0]["wall_ms"]) == set(STEP_PHASES)
    assert phases[0]["cpu_ms"]["forward_backward"] > 0
    assert phases[0]["wall_ms"]["data"] > 0
