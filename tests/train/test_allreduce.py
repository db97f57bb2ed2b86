"""average_gradients: two real gloo ranks (loopback, a file store) get exactly the mean gradient,
though the token table goes by the rows some rank touched, and the mean of the step's loss that
rides in the same collective (tasks/train/loop.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]

RANK_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from tasks.train.loop import SPARSE_ROWS_MIN, average_gradients

    OUT = sys.argv[1]
    # rank 0 uses tokens 1, 2, 7; rank 1 uses 2, 3, 4000: row 7 only on rank 0, row 4000 only on
    # rank 1 (a rank that looked only at its own rows would miss one), row 2 on both
    TOKENS = {0: [1, 2, 7], 1: [2, 3, 4000]}


    def rank_main(rank: int) -> None:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{OUT}/store", rank=rank, world_size=2)
        torch.manual_seed(0)  # same init on both ranks, as after the weight broadcast
        model = torch.nn.Sequential(
            torch.nn.Embedding(SPARSE_ROWS_MIN + 100, 8), torch.nn.Linear(8, 3)
        )
        torch.manual_seed(100 + rank)  # different data per rank
        ids = torch.tensor(TOKENS[rank])
        target = torch.randn(len(ids), 3)
        loss = ((model(ids) - target) ** 2).sum()
        loss.backward()
        before = [q.grad.clone() for q in model.parameters()]
        mean_loss = average_gradients(model, 2, loss.detach())
        after = [q.grad.clone() for q in model.parameters()]
        torch.save(
            {"before": before, "after": after, "loss": float(loss), "mean_loss": mean_loss},
            f"{OUT}/rank{rank}.pt",
        )
        dist.destroy_process_group()


    if __name__ == "__main__":
        mp.start_processes(rank_main, nprocs=2, start_method="fork")
    """
)


def test_two_ranks_get_the_exact_mean_gradient(tmp_path: Path) -> None:
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    table_before = [r["before"][0] for r in ranks]
    # the table really is sparse per rank, and the ranks touched different rows
    assert table_before[0][7].abs().sum() > 0 and table_before[1][7].abs().sum() == 0
    assert table_before[1][4000].abs().sum() > 0 and table_before[0][4000].abs().sum() == 0
    for i in range(len(ranks[0]["before"])):
        # what the dense all-reduce of every gradient gives
        expected = (ranks[0]["before"][i] + ranks[1]["before"][i]) / 2
        for r in ranks:
            assert torch.equal(r["after"][i], expected), f"parameter {i}"
    # the losses differ per rank; each rank gets their mean back from the same all-reduce
    losses = [r["loss"] for r in ranks]
    assert losses[0] != losses[1]
    for r in ranks:
        assert abs(r["mean_loss"] - sum(losses) / 2) < 1e-5 * max(1.0, abs(sum(losses)))


def test_one_worker_returns_its_own_loss_and_leaves_gradients_alone() -> None:
    from tasks.train.loop import average_gradients

    model = torch.nn.Linear(3, 2)
    model(torch.ones(1, 3)).sum().backward()
    before = [q.grad.clone() for q in model.parameters()]
    assert average_gradients(model, 1, torch.tensor(2.5)) == 2.5
    assert average_gradients(model, 1) is None
    assert all(torch.equal(a, q.grad) for a, q in zip(before, model.parameters(), strict=True))
