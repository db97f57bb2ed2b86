"""Task arithmetic, TIES, DARE, WiSE-FT, soups and the continual baselines on hand-made tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tasks.merge import arithmetic, continual, soup
from tasks.merge.keys import merged_keys
from tests.merge.helpers import tensor_folder


def _folders(tmp_path: Path, base: list[float], taus: list[list[float]]):  # noqa: ANN202
    b = torch.tensor(base)
    theta0 = tensor_folder(tmp_path / "base", {"w": b})
    models = [
        tensor_folder(tmp_path / f"m{i}", {"w": b + torch.tensor(t)}) for i, t in enumerate(taus)
    ]
    return theta0, models


TAUS = [[3.0, -1.0, 0.5, -4.0], [-2.0, 2.0, 1.0, -1.0], [1.0, -3.0, 0.2, 0.5]]


def test_task_arithmetic_lambda_zero_is_the_base_and_lambda_sums(tmp_path: Path) -> None:
    base, models = _folders(tmp_path, [1.0, 2.0, 3.0, 4.0], TAUS)
    keys = merged_keys(base, [])
    zero = arithmetic.task_arithmetic(base, models, keys, lam=0.0)
    assert torch.equal(zero["w"], base.get("w"))
    half = arithmetic.task_arithmetic(base, models, keys, lam=0.5)
    assert torch.allclose(
        half["w"], torch.tensor([1.0, 2.0, 3.0, 4.0]) + 0.5 * torch.tensor([2.0, -2.0, 1.7, -4.5])
    )


def test_ties_matches_the_hand_worked_result(tmp_path: Path) -> None:
    # top 50% of |tau| per task: t1 -> [3, 0, 0, -4], t2 -> [-2, 2, 0, 0], t3 -> [1, -3, 0, 0]
    # sum [2, -1, 0, -4]: signs + - 0 -; agreeing values: {3, 1}, {-3}, {}, {-4}
    base, models = _folders(tmp_path, [0.0, 0.0, 0.0, 0.0], TAUS)
    keys = merged_keys(base, [])
    mean = arithmetic.ties(base, models, keys, top_k=0.5, merge="mean", lam=0.5)
    assert torch.allclose(mean["w"], 0.5 * torch.tensor([2.0, -3.0, 0.0, -4.0]))
    total = arithmetic.ties(base, models, keys, top_k=0.5, merge="sum", lam=1.0)
    assert torch.allclose(total["w"], torch.tensor([4.0, -3.0, 0.0, -4.0]))


def test_ties_trims_globally_over_the_whole_task_vector(tmp_path: Path) -> None:
    """One task over two keys: the top 25% of its 8 entries are the two largest, wherever they lie."""
    theta0 = tensor_folder(tmp_path / "base", {"a": torch.zeros(4), "b": torch.zeros(4)})
    m = tensor_folder(
        tmp_path / "m",
        {"a": torch.tensor([9.0, 1.0, 1.0, 1.0]), "b": torch.tensor([8.0, 2.0, 3.0, 1.0])},
    )
    out = arithmetic.ties(theta0, [m], ["a", "b"], top_k=0.25, merge="mean", lam=1.0)
    assert torch.equal(out["a"], torch.tensor([9.0, 0.0, 0.0, 0.0]))
    assert torch.equal(out["b"], torch.tensor([8.0, 0.0, 0.0, 0.0]))


def test_dare_keeps_with_probability_one_minus_p_and_rescales() -> None:
    tau = torch.arange(1.0, 20001.0)
    out = arithmetic.dare(tau, p=0.75, seed=3, model_index=1, key="w")
    kept = out != 0
    assert torch.allclose(out[kept], tau[kept] * 4.0)  # 1 / (1 - p)
    assert abs(float(kept.float().mean()) - 0.25) < 0.02
    again = arithmetic.dare(tau, p=0.75, seed=3, model_index=1, key="w")
    assert torch.equal(out, again)  # seeded by (seed, model, key), not by visiting order
    other = arithmetic.dare(tau, p=0.75, seed=3, model_index=2, key="w")
    assert not torch.equal(out, other)
    assert torch.equal(arithmetic.dare(tau, p=0.0, seed=3, model_index=1, key="w"), tau)


def test_dare_before_task_arithmetic(tmp_path: Path) -> None:
    base, models = _folders(tmp_path, [0.0] * 4, [[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    out = arithmetic.task_arithmetic(base, models, ["w"], lam=1.0, dare_p=0.5, seed=1)
    expected = sum(arithmetic.dare(m.get("w"), 0.5, 1, i, "w") for i, m in enumerate(models))
    assert torch.equal(out["w"], expected)
    kept = [arithmetic.dare(m.get("w"), 0.5, 1, i, "w") for i, m in enumerate(models)]
    for k, m in zip(kept, models, strict=True):
        assert set((k / m.get("w")).tolist()) <= {0.0, 2.0}


def test_dare_before_ties_drops_and_rescales_before_the_trim(tmp_path: Path) -> None:
    """DARE comes first: TIES with dare_p equals TIES (no DARE) of the already-dropped experts.
    Hand-worked on a mask fixed by the seed: whatever it keeps is doubled (p = 0.5)."""
    taus = [[4.0, -1.0, 2.0, -3.0], [-2.0, 3.0, 1.0, -1.0]]
    base, models = _folders(tmp_path, [0.0] * 4, taus)
    dropped = [arithmetic.dare(m.get("w"), 0.5, 7, i, "w") for i, m in enumerate(models)]
    for d, t in zip(dropped, taus, strict=True):
        assert set((d / torch.tensor(t)).tolist()) <= {0.0, 2.0}
    _, pre = _folders(tmp_path / "pre", [0.0] * 4, [d.tolist() for d in dropped])
    expected = arithmetic.ties(base, pre, ["w"], top_k=0.5, merge="mean", lam=1.0)
    out = arithmetic.ties(base, models, ["w"], top_k=0.5, merge="mean", lam=1.0, dare_p=0.5, seed=7)
    assert torch.equal(out["w"], expected["w"])
    plain = arithmetic.ties(base, models, ["w"], top_k=0.5, merge="mean", lam=1.0)
    assert not torch.equal(out["w"], plain["w"])  # the drop did take part


def test_wise_ft_interpolates(tmp_path: Path) -> None:
    base, models = _folders(tmp_path, [1.0, 1.0, 1.0, 1.0], TAUS)
    out = arithmetic.wise_ft(base, models[0], ["w"], alpha=0.25)
    assert torch.allclose(out["w"], torch.tensor([1.0] * 4) + 0.25 * torch.tensor(TAUS[0]))


def test_uniform_soup_and_running_average_are_the_mean(tmp_path: Path) -> None:
    base, models = _folders(tmp_path, [1.0, 2.0, 3.0, 4.0], TAUS)
    mean = torch.tensor([1.0, 2.0, 3.0, 4.0]) + torch.tensor(TAUS).mean(dim=0)
    assert torch.allclose(soup.uniform_soup(base, models, ["w"])["w"], mean)
    assert torch.allclose(continual.running_average(base, iter(models), ["w"])["w"], mean)


def test_continual_task_arithmetic_adds_lambda_tau(tmp_path: Path) -> None:
    base, models = _folders(tmp_path, [1.0, 2.0, 3.0, 4.0], TAUS)
    out = continual.continual_task_arithmetic(base, iter(models), ["w"], lam=0.3)
    expected = torch.tensor([1.0, 2.0, 3.0, 4.0]) + 0.3 * torch.tensor(TAUS).sum(dim=0)
    assert torch.allclose(out["w"], expected)


def test_greedy_soup_keeps_a_model_only_on_strict_improvement(tmp_path: Path) -> None:
    # score = minus the distance of w[0] to 2.0: model values 5, 1, 2, 3 (taus on base 0)
    base, models = _folders(tmp_path, [0.0], [[5.0], [1.0], [2.0], [3.0]])

    def score(state: dict[str, torch.Tensor]) -> float:
        return -abs(float(state["w"][0]) - 2.0)

    state, info = soup.greedy_soup(base, models, ["w"], score)
    # ranked: 2 (0), 1 (-1), 3 (-1), 0 (-3). Start {2}: +1 -> mean 1.5 (-0.5) worse: out;
    # +3 -> 2.5 (-0.5) worse: out; +0 -> 3.5 worse: out. A tie must not enter either:
    assert info["order"][0] == 2
    assert info["kept"] == [2]
    assert float(state["w"][0]) == 2.0
    base2, models2 = _folders(tmp_path / "tie", [0.0], [[2.0], [2.0], [1.0], [3.0]])
    state2, info2 = soup.greedy_soup(base2, models2, ["w"], score)
    assert info2["kept"] == [0]  # model 1 would leave the score equal: not kept
    # a real improvement enters: {1, 3} averages to 2
    base3, models3 = _folders(tmp_path / "up", [0.0], [[1.0], [3.0], [9.0]])
    _, info3 = soup.greedy_soup(base3, models3, ["w"], score)
    assert sorted(info3["kept"]) == [0, 1]


def test_ties_rejects_an_unknown_merge(tmp_path: Path) -> None:
    base, models = _folders(tmp_path, [0.0] * 4, TAUS)
    with pytest.raises(ValueError, match="ties.merge 'median'"):
        arithmetic.ties(base, models, ["w"], top_k=0.5, merge="median", lam=1.0)
