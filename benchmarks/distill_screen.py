"""A fast in-process screen of distillation levers (issue 14); NOT the `distilled_vs_alone` key.

Why: on the shared 2-core machine one `clipmill run train` + `clipmill run evaluate` pair of the
tiny ViT took 17 min wall (107 CPU s) and an online run with a 5-teacher ensemble did one step in
16 min, so levers cannot be screened on 3 seeds with the real commands. This approximates them
cheaply: the curated shards decoded once through the student's EVAL transform (no augmentation;
40 steps x 32 = 1280 samples < 2208, so each sample is seen about once anyway), the alt text only,
the teachers' embeddings computed once (the teacher and the merge suite's experts share the
teacher's locked towers: tower features once, each model's projection heads on them, checked
against the full model), the library's own losses (tasks/train/distill.py, open_clip ClipLoss),
AdamW groups and the warmup + cosine schedule of tasks/train/loop.py, and the scoreboard's
average (zero-shot acc1 on the five classification sets, mean R@1 on retrieval, the evaluate
library's functions). Absolute values differ from the stage's (no augmentation, another batch
order); use it to rank levers, then measure the winner with benchmarks/train_distill.py.
Usage: .venv/bin/python benchmarks/distill_screen.py --root /tmp/clone --cache /tmp/x/cache.pt \
         --variants '{"kd": {"mode": "mobileclip", "w0": 0.0}}' --seeds 0 1 2
Variant keys: mode (off | mobileclip | affinity | feature), w0, w1, fd, icl (feature), lr, warmup (default steps // 10, as
train_distill.py), steps, batch, wd, teachers (model folders under --root), types (txt, rec),
tscale (0 = own), sscale (affinity). Seeds run outer, variants inner, so a screen cut short still
holds paired seeds; `--baseline NAME` prints each variant's paired difference against NAME with
its standard error, `--out FILE` keeps the per-seed values, `--model` picks the student (the cache
holds its pixels: one cache per student).
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
TEACHERS = ["data/models/teacher"] + [
    f"data/models/experts/{e}" for e in ("emoji", "fashion", "openclipart", "tuxpaint")
]
EVAL_SETS = (
    "fashion_mnist",
    "emoji_groups",
    "emoji_subgroups",
    "tuxpaint_categories",
    "openclipart_categories",
    "retrieval",
)


def build_cache(root: Path, student_model: str = "clipmill-tiny-vit") -> dict[str, Any]:
    """Everything the runs share, computed once: student pixels and tokens, teacher embeddings,
    eval pixels and tokens (pixels at `student_model`'s size, so one cache per student)."""
    from open_clip.model import get_model_preprocess_cfg

    from tasks.clip import load_clip, make_transforms
    from tasks.clip.locked import split_image
    from tasks.evaluate.datasets import CLASSIFICATION, load_set
    from tasks.evaluate.embed import decode_image as eval_decode
    from tasks.train.data import (
        _shard_samples,
        decode_image,
        list_shards,
        load_excluded,
        pick_caption_field,
    )

    student, s_pre, s_tok = load_clip(f"random:{student_model}")
    excluded = load_excluded(str(root / "data/decontaminate/flagged_uids.parquet"))
    samples = [
        s
        for sh in list_shards(str(root / "data/curate/shards"))
        for s in _shard_samples(sh)
        if s["__key__"] not in excluded
    ]
    print("train samples", len(samples), flush=True)
    txt = [pick_caption_field(s, {"txt": 1.0}, random.Random(0))[1] for s in samples]
    rec = [pick_caption_field(s, {"recaption": 1.0}, random.Random(0)) for s in samples]
    rec_txt = [c for _, c in rec]
    has_rec = torch.tensor([f == "recaption" for f, _ in rec])
    pixels = torch.stack([decode_image(s, s_pre, None) for s in samples])
    cache: dict = {
        "model": student_model,
        "pixels": pixels,
        "tok_txt": s_tok(txt),
        "tok_rec": s_tok(rec_txt),
        "has_rec": has_rec,
    }
    # teachers: teacher + experts share locked towers -> frozen features once
    refs = [r for r in TEACHERS if (root / r).is_dir()]
    t_model, _, t_tok = load_clip(str(root / refs[0]))
    _, t_eval, _ = make_transforms(t_model, get_model_preprocess_cfg(t_model))
    split = split_image(t_model, get_model_preprocess_cfg(t_model))
    t0 = time.time()
    feats = []
    for i in range(0, len(samples), 64):
        px = torch.stack([decode_image(s, t_eval, None) for s in samples[i : i + 64]])
        feats.append(split.frozen(px))
    feats_img = torch.cat(feats)
    print("teacher trunk", time.time() - t0, flush=True)
    # text: HF tower frozen part
    from tasks.clip.locked import split_text

    tsplit = split_text(t_model, {})
    with torch.no_grad():
        ft_txt = torch.cat(
            [tsplit.frozen(t_tok(txt[i : i + 128])) for i in range(0, len(txt), 128)]
        )
        ft_rec = torch.cat(
            [tsplit.frozen(t_tok(rec_txt[i : i + 128])) for i in range(0, len(txt), 128)]
        )
    cache["teachers"] = {}
    for ref in refs:
        m, _, _ = load_clip(str(root / ref))
        isplit = split_image(m, get_model_preprocess_cfg(m))
        ts = split_text(m, {})
        with torch.no_grad():
            cache["teachers"][ref] = {
                "img": F.normalize(isplit.head(feats_img).float(), dim=-1),
                "txt": F.normalize(ts.head(ft_txt).float(), dim=-1),
                "rec": F.normalize(ts.head(ft_rec).float(), dim=-1),
                "scale": float(m.logit_scale.exp()),
            }
    # check the split against the full model on a few samples
    with torch.no_grad():
        px = torch.stack([decode_image(s, t_eval, None) for s in samples[:4]])
        full = t_model.encode_image(px, normalize=True)
        assert torch.allclose(full, cache["teachers"][refs[0]]["img"][:4], atol=1e-4)
        full_t = t_model.encode_text(t_tok(txt[:4]), normalize=True)
        assert torch.allclose(full_t, cache["teachers"][refs[0]]["txt"][:4], atol=1e-4)
    # eval sets
    evals = {}
    for name in EVAL_SETS:
        s = load_set(name, root / "data/sample/eval", root / "data/benchmarks", "test")
        px = torch.stack([s_pre(eval_decode(b)) for b in s.images])
        if s.task == CLASSIFICATION:
            prompts = [t.format(c=c) for c in s.classnames for t in s.templates]
            evals[name] = {
                "pixels": px,
                "tok": s_tok(prompts),
                "n_cls": len(s.classnames),
                "n_tpl": len(s.templates),
                "labels": torch.tensor(s.labels),
            }
        else:
            from tasks.evaluate.retrieval import flatten_captions

            texts, owner = flatten_captions(s.captions)
            evals[name] = {"pixels": px, "tok": s_tok(texts), "owner": owner}
    cache["evals"] = evals
    return cache


def evaluate(model: torch.nn.Module, evals: dict[str, Any]) -> dict[str, float]:
    """The scoreboard average's rows with the evaluate library's functions."""
    from tasks.evaluate.retrieval import mean_recall, recall_at_k
    from tasks.evaluate.zeroshot import classifier_from_text_embeddings, logits, topk_accuracy

    model.eval()
    out = {}
    with torch.no_grad():
        for name, e in evals.items():
            img = torch.cat(
                [
                    model.encode_image(e["pixels"][i : i + 256], normalize=True)
                    for i in range(0, len(e["pixels"]), 256)
                ]
            )
            txt = torch.cat(
                [
                    model.encode_text(e["tok"][i : i + 256], normalize=True)
                    for i in range(0, len(e["tok"]), 256)
                ]
            )
            if "labels" in e:
                clf = classifier_from_text_embeddings(list(txt.reshape(e["n_cls"], e["n_tpl"], -1)))
                out[name] = topk_accuracy(logits(img, clf), e["labels"], 1)
            else:
                out[name] = mean_recall(recall_at_k(img, txt, e["owner"], [1]), 1)
    out["average"] = sum(out.values()) / len(out)
    return out


def train(cache: dict[str, Any], seed: int, cfg: dict[str, Any]) -> dict[str, float]:
    """One student run of `cfg` at `seed`; its evaluation."""
    from open_clip.loss import ClipLoss

    from tasks.clip import load_clip
    from tasks.train.distill import affinity_loss, feature_distill_loss, mobileclip_loss
    from tasks.train.loop import _no_decay

    steps, bs = cfg.get("steps", 40), cfg.get("batch", 32)
    lr, warm = cfg.get("lr", 5e-4), cfg.get("warmup", max(1, steps // 10))
    torch.manual_seed(seed)
    model, _, _ = load_clip(f"random:{cache.get('model', 'clipmill-tiny-vit')}")
    model.train()
    named = [(n, q) for n, q in model.named_parameters() if q.requires_grad]
    opt = torch.optim.AdamW(
        [
            {"params": [q for n, q in named if _no_decay(n, q)], "weight_decay": 0.0},
            {
                "params": [q for n, q in named if not _no_decay(n, q)],
                "weight_decay": cfg.get("wd", 0.1),
            },
        ],
        lr=lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    n = len(cache["pixels"])
    g = torch.Generator().manual_seed(seed)
    # as many passes as the run needs (400 steps x 64 is ~12 passes over the 2.2k pairs)
    order = torch.cat([torch.randperm(n, generator=g) for _ in range(steps * bs // n + 2)])
    teachers = cfg.get("teachers", TEACHERS[:1])
    mode = cfg.get("mode", "off")
    types = cfg.get("types", ["txt"])
    tscale = cfg.get("tscale", 0.0)
    for step in range(steps):
        cur = (
            lr * (step + 1) / warm
            if step < warm
            else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(steps - warm, 1))) * lr
        )
        for gr in opt.param_groups:
            gr["lr"] = cur
        idx = order[step * bs : (step + 1) * bs]
        img = model.encode_image(cache["pixels"][idx], normalize=True)
        scale = model.logit_scale.exp()
        texts = []
        for t in types:
            tok = cache["tok_txt" if t == "txt" else "tok_rec"][idx]
            texts.append(model.encode_text(tok, normalize=True))
        if mode == "off":
            loss = ClipLoss()(img, texts[0], scale)
        else:
            t_img = [cache["teachers"][r]["img"][idx] for r in teachers]
            t_txt = [[cache["teachers"][r][t][idx] for r in teachers] for t in types]
            scales = [tscale or cache["teachers"][r]["scale"] for r in teachers]
            if mode == "feature":
                loss = feature_distill_loss(
                    img,
                    texts,
                    scale,
                    t_img,
                    t_txt,
                    scales,
                    cfg.get("w0", 0.0),
                    cfg.get("w1", 0.0),
                    cfg.get("fd", 1.0),
                    cfg.get("icl", 1.0),
                )
            elif mode == "affinity":
                loss = sum(
                    affinity_loss(img, tx, cfg.get("sscale", 50.0), t_img, tt, scales)
                    for tx, tt in zip(texts, t_txt, strict=True)
                ) / len(texts)
            else:
                loss = mobileclip_loss(
                    img, texts, scale, t_img, t_txt, scales, cfg.get("w0", 0.0), cfg.get("w1", 1.0)
                )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
    return evaluate(model, cache["evals"])


def paired_summary(per_seed: dict[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
    """Each variant against `baseline` seed by seed: ratio of the means, mean paired difference
    and its standard error (stdev / sqrt(n)), seeds won; a lever counts only when the difference
    stands clear of its standard error, not when one lucky seed lifts the mean."""
    import statistics

    base = per_seed[baseline]
    out = {}
    for name, vals in per_seed.items():
        d = [v - b for v, b in zip(vals, base, strict=True)]
        se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
        out[name] = {
            "mean": statistics.mean(vals),
            "stdev": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "ratio": statistics.mean(vals) / statistics.mean(base),
            "diff": statistics.mean(d),
            "diff_se": se,
            "wins": sum(x > 0 for x in d),
            "n": len(d),
        }
    return out


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="project root with the demo's data")
    ap.add_argument("--cache", type=Path, required=True, help="cache file (built when missing)")
    ap.add_argument("--variants", required=True, help="JSON {name: config}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--model", default="clipmill-tiny-vit", help="student config (cache build)")
    ap.add_argument("--baseline", default="", help="variant the others are paired against")
    ap.add_argument("--out", type=Path, default=None, help="JSON file of per-seed values")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.cache.is_file():
        cache = torch.load(args.cache, weights_only=False)
    else:
        cache = build_cache(args.root.resolve(), args.model)
        torch.save(cache, args.cache)
    variants = json.loads(args.variants)
    per_seed: dict[str, list[float]] = {name: [] for name in variants}
    for seed in args.seeds:  # seeds outer: a screen cut short still holds paired seeds
        for name, cfg in variants.items():
            t = time.time()
            r = train(cache, seed, cfg)
            per_seed[name].append(r["average"])
            row = {"name": name, "seed": seed, **{k: round(v, 4) for k, v in r.items()}}
            print(json.dumps({**row, "s": round(time.time() - t)}), flush=True)
        if args.out:
            args.out.write_text(json.dumps({"per_seed": per_seed, "cfg": variants}, indent=1))
    summary = paired_summary(per_seed, args.baseline) if args.baseline in per_seed else {}
    for name, row in summary.items():
        print(json.dumps({"vs": args.baseline, "name": name, **row}), flush=True)
    if args.out:
        out = {"per_seed": per_seed, "cfg": variants, "summary": summary}
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
