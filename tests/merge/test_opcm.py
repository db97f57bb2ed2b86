"""OPCM as REFERENCE.md states it: one model returns it, the projection's structure in the SVD
basis, the rescaled norm, every open_clip parameter merged, constant memory."""

from __future__ import annotations

import gc
import math
import weakref
from pathlib import Path

import pytest
import torch

from tasks.clip.statedict import LazyWeights, open_weights
from tasks.merge.arithmetic import task_vector_norm
from tasks.merge.keys import merged_keys
from tasks.merge.opcm import opcm, project, split_rank
from tests.merge.helpers import tensor_folder, tiny_suite


def test_opcm_of_one_model_returns_it(tmp_path: Path) -> None:
    base, experts = tiny_suite(tmp_path, 1)
    b, e = open_weights(base), open_weights(experts[0])
    state = opcm(b, [e], merged_keys(b, []), alpha=0.5)
    assert state.lam == 1.0
    for key in b.names():
        assert torch.equal(state.merged[key], e.get(key)), key


def test_split_rank_is_zero_based() -> None:
    s = torch.tensor([4.0, 3.0, 2.0, 1.0])  # cumulative shares .4 .7 .9 1.0
    assert split_rank(s, 0.5) == 1
    assert split_rank(s, 0.3) == 0
    assert split_rank(s, 0.95) == 3
    assert split_rank(torch.zeros(3), 0.5) == 0


@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (6, 6)])  # tall, wide (transposed), square
def test_projected_update_has_zero_diagonal_and_zero_top_left_block(
    shape: tuple[int, int],
) -> None:
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(*shape, generator=gen, dtype=torch.float64)
    tau = torch.randn(*shape, generator=gen, dtype=torch.float64)
    update, r = project(d, tau, alpha=0.5)
    assert update.shape == tau.shape
    u, s, vh = torch.linalg.svd(d, full_matrices=True)
    assert r == split_rank(s, 0.5) and r >= 1
    p = u.T @ update @ vh.T
    k = min(shape)
    assert torch.allclose(torch.diagonal(p), torch.zeros(k, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(p[:r, :r], torch.zeros(r, r, dtype=torch.float64), atol=1e-10)
    # the rest of tau survives: the update is not zero
    full = u.T @ tau @ vh.T
    mask = torch.ones_like(full, dtype=torch.bool)
    mask[:r, :r] = False
    mask.fill_diagonal_(False)
    assert torch.allclose(p[mask], full[mask], atol=1e-10)


def test_rescaled_task_vector_norm_is_the_mean_single_task_norm(tmp_path: Path) -> None:
    base, experts = tiny_suite(tmp_path, 3)
    b = open_weights(base)
    models = [open_weights(e) for e in experts]
    keys = merged_keys(b, [])
    state = opcm(b, models, keys, alpha=0.5)
    norms = [task_vector_norm(b, m, keys) for m in models]
    merged_norm = math.sqrt(sum(float(((state.merged[k] - b.get(k)) ** 2).sum()) for k in keys))
    assert state.norms == [pytest_approx(n) for n in norms]
    assert math.isclose(merged_norm, sum(norms) / 3, rel_tol=1e-5)
    assert state.lam != 1.0


def pytest_approx(x: float):  # noqa: ANN201 - small helper for list comparison
    import pytest

    return pytest.approx(x, rel=1e-6)


def test_every_open_clip_parameter_changes_under_opcm(tmp_path: Path) -> None:
    """fusion_bench's pitfall: parameters of modules with children were never merged."""
    base, experts = tiny_suite(tmp_path, 2)
    b = open_weights(base)
    e0, e1 = (open_weights(e) for e in experts)
    state = opcm(b, [e0, e1], merged_keys(b, []), alpha=0.5)
    names = b.names()
    for needle in (
        "in_proj_weight",
        "class_embedding",
        "positional_embedding",
        "visual.proj",
        "text_projection",
        "logit_scale",
    ):
        assert any(needle in k for k in names), needle
    unchanged = [k for k in names if torch.equal(state.merged[k], b.get(k))]
    only_first = [k for k in names if torch.equal(state.merged[k], e0.get(k))]
    assert not unchanged, f"left at the base: {unchanged}"
    assert not only_first, f"the second model never reached: {only_first}"


def test_excluded_keys_keep_the_base(tmp_path: Path) -> None:
    base, experts = tiny_suite(tmp_path, 2)
    b = open_weights(base)
    keys = merged_keys(b, ["logit_scale", "visual.*"])
    assert "logit_scale" not in keys and not any(k.startswith("visual.") for k in keys)
    state = opcm(b, [open_weights(e) for e in experts], keys, alpha=0.5)
    assert torch.equal(state.merged["logit_scale"], b.get("logit_scale"))


def test_opcm_holds_at_most_base_merged_and_incoming(tmp_path: Path) -> None:
    """Models arrive from a generator; once the next one arrives, no earlier one is alive."""
    t = {"w": torch.randn(4, 3), "b": torch.randn(3)}
    base = tensor_folder(tmp_path / "base", t)
    folders = []
    for i in range(5):
        gen = torch.Generator().manual_seed(i)
        moved = {k: v + torch.randn(v.shape, generator=gen) for k, v in t.items()}
        folders.append(tensor_folder(tmp_path / f"m{i}", moved).folder)
    alive: list[weakref.ref[LazyWeights]] = []
    peak = 0

    def arriving():  # noqa: ANN202
        nonlocal peak
        for folder in folders:
            gc.collect()
            peak = max(peak, sum(r() is not None for r in alive))
            model = LazyWeights(folder)
            alive.append(weakref.ref(model))
            yield model
            del model

    opcm(base, arriving(), merged_keys(base, []), alpha=0.5)
    assert len(alive) == 5
    assert peak == 0, f"{peak} earlier models still referenced when the next arrived"


def test_a_released_tensor_leaves_none_of_its_file_resident(tmp_path: Path) -> None:
    """The stage keeps every model open while it reads them all (changed_keys, then the method).
    safetensors' tensors are private maps of the file: pages read through one long-lived map stay
    resident (and count in RSS) until the file is closed, N checkpoints after N models. Each read
    must map the file for that tensor only, so releasing it releases its pages. Linux: the file's
    Rss in /proc/self/smaps."""
    import gc

    smaps = Path("/proc/self/smaps")
    if not smaps.is_file():
        pytest.skip("needs Linux /proc/self/smaps")
    tensors = {f"w{i}": torch.randn(256, 1024) for i in range(8)}  # 8 MB
    model = tensor_folder(tmp_path / "m", tensors)
    for key in model.names():
        assert torch.equal(model.get(key), tensors[key])  # read, every page touched, released
    gc.collect()
    path = str(model.folder / "model.safetensors")
    resident_kb, inside = 0, False
    for line in smaps.read_text().splitlines():
        if line[:1].isalnum() and "-" in line.split()[0]:  # a mapping's header line
            inside = line.endswith(path)
        elif inside and line.startswith("Rss:"):
            resident_kb += int(line.split()[1])
    assert resident_kb <= 256, f"{resident_kb} kB of {path} still resident, model still open"
