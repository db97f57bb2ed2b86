"""TinyCLIP manual weight inheritance: a smaller student starts from slices of a larger trained model.

Rules (REFERENCE.md "Train", TinyCLIP's manual inheritance), per tower:
- depth: student layer i takes teacher layer `i * (T // S)` (T, S = teacher / student layers of
  that tower's `resblocks`), so layers 0, step, 2*step, ... are kept;
- width: every other tensor keeps its leading slice in every dimension (the first channels, the
  first MLP units, the first rows of the token embedding and of the text positions);
- attention: `in_proj_weight` is viewed as (3, heads, head_dim, in) and `in_proj_bias` as
  (3, heads, head_dim); the first student heads (and the leading head_dim, in slices) are kept, so
  q, k and v each keep whole heads; `out_proj.weight` is viewed as (out, heads, head_dim) likewise.
A student dimension larger than the teacher's, a missing key, or an image grid / patch size that
differs (a leading slice of positions or of a kernel would be the wrong pixels) is an
`InheritError` naming the key. `logit_scale` (and `logit_bias`) is copied with either tower.
"""

from __future__ import annotations

import re
from typing import Any

_LAYER = re.compile(r"^(?P<prefix>.*resblocks)\.(?P<idx>\d+)\.(?P<rest>.+)$")
SAME_DIMS = {"visual.positional_embedding": (0,), "visual.conv1.weight": (1, 2, 3)}  # must match


class InheritError(ValueError):
    """The student cannot inherit from this model; the message names the tensor."""


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer each student layer takes: 0, step, 2*step, ... with step = T // S."""
    if not 0 < student_layers <= teacher_layers:
        raise InheritError(
            f"student has {student_layers} layers, teacher {teacher_layers}: need 1 <= S <= T"
        )
    step = teacher_layers // student_layers
    return [i * step for i in range(student_layers)]


def _depths(state: dict[str, Any]) -> dict[str, int]:
    depths: dict[str, int] = {}
    for key in state:
        m = _LAYER.match(key)
        if m:
            depths[m["prefix"]] = max(depths.get(m["prefix"], 0), int(m["idx"]) + 1)
    return depths


def _heads(model: Any) -> dict[str, tuple[int, int]]:
    import torch

    return {
        name: (mod.num_heads, mod.head_dim)
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.MultiheadAttention)
    }


def _lead(t: Any, shape: tuple[int, ...], key: str) -> Any:
    if t.ndim != len(shape) or any(s > d for s, d in zip(shape, t.shape, strict=True)):
        raise InheritError(
            f"{key}: student shape {tuple(shape)} is not a leading slice of the teacher's "
            f"{tuple(t.shape)}"
        )
    return t[tuple(slice(0, s) for s in shape)]


def slice_tensor(
    key: str,
    t: Any,
    shape: tuple[int, ...],
    heads: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> Any:
    """The student's tensor `key` (shape `shape`) cut from the teacher's `t`; `heads` =
    ((teacher heads, head_dim), (student heads, head_dim)) for attention projections."""
    for dim in SAME_DIMS.get(key, ()):
        if t.shape[dim] != shape[dim]:
            raise InheritError(
                f"{key}: dimension {dim} differs (teacher {tuple(t.shape)}, student "
                f"{tuple(shape)}); inherit needs the same image size and patch size"
            )
    if heads is not None and key.endswith(("in_proj_weight", "in_proj_bias", "out_proj.weight")):
        (ht, dt), (hs, ds) = heads
        if hs > ht or ds > dt:
            raise InheritError(f"{key}: student heads {hs}x{ds} exceed the teacher's {ht}x{dt}")
        if key.endswith("in_proj_weight"):
            v = t.reshape(3, ht, dt, t.shape[1])[:, :hs, :ds, : shape[1]]
        elif key.endswith("in_proj_bias"):
            v = t.reshape(3, ht, dt)[:, :hs, :ds]
        else:
            v = t.reshape(t.shape[0], ht, dt)[: shape[0], :hs, :ds]
        return v.reshape(shape).clone()
    return _lead(t, shape, key).clone()


def _tower(key: str) -> str:
    if key.startswith("visual."):
        return "image"
    return "shared" if key.startswith("logit_") else "text"


def inherit_weights(
    student: Any, teacher: Any, *, image: bool = True, text: bool = True
) -> dict[str, str]:
    """Overwrite the student's tensors of the chosen towers with slices of the teacher's; returns
    student key -> teacher key copied (what a test or the run's log can check)."""
    s_state, t_state = student.state_dict(), teacher.state_dict()
    s_depth, t_depth = _depths(s_state), _depths(t_state)
    maps = {p: layer_map(t_depth.get(p, 0), n) for p, n in s_depth.items()}
    s_heads, t_heads = _heads(student), _heads(teacher)
    wanted = {"image": image, "text": text, "shared": image or text}
    new, copied = dict(s_state), {}
    for key, value in s_state.items():
        if not wanted[_tower(key)]:
            continue
        m, tkey, module = _LAYER.match(key), key, key.rsplit(".", 1)[0]
        if m:
            tkey = f"{m['prefix']}.{maps[m['prefix']][int(m['idx'])]}.{m['rest']}"
        if tkey not in t_state:
            raise InheritError(f"{key}: the teacher has no tensor {tkey}")
        attn = module.removesuffix(".out_proj")
        pair = (t_heads[_module_of(tkey)], s_heads[attn]) if attn in s_heads else None
        new[key] = slice_tensor(key, t_state[tkey], tuple(value.shape), pair).to(value.dtype)
        copied[key] = tkey
    student.load_state_dict(new)
    return copied


def _module_of(tkey: str) -> str:
    return tkey.rsplit(".", 1)[0].removesuffix(".out_proj")


def inherit_from(student: Any, source: str, *, image: bool, text: bool) -> dict[str, str]:
    """Load `source` through the model library (a model folder, an MLflow URI, `random:<cfg>`) and
    inherit from it; a source that fails to load raises the library's ModelLoadError naming it."""
    from tasks.clip import load_clip

    teacher, _, _ = load_clip(source)
    return inherit_weights(student, teacher, image=image, text=text)
