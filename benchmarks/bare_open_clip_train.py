"""The training script a user writes from open_clip's README and its training app, run as its own
process by benchmarks/train_overhead.py against the whole `clipmill run train` command.

Same steps as the train stage: webdataset shards drawn with replacement, a shuffle buffer, the
model's training (or eval) transform, AdamW with open_clip's no-decay groups, linear warmup then
cosine, gradient clipping, logit-scale clamp, and an open_clip-style checkpoint at the end.
Nothing from clipmill is imported: the repo's model configs are handed to open_clip by path.
Usage: python benchmarks/bare_open_clip_train.py --shards DIR --out FILE [--steps N] [--batch B]
For the two-process hardware ceiling (benchmarks/train_overhead.py `two_processes_ceiling`):
`--threads 1 --part 0/2 --ready-go` trains on every second shard with one torch thread, and waits
after its set-up for a line on stdin so that two copies step at the same time; it prints the
median step time (the first step, which fills the shuffle buffer, left out) and the CPU
seconds of its loop.
"""

from __future__ import annotations

import argparse
import glob
import os
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "tasks" / "clip" / "configs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", required=True, help="folder of *.tar webdataset shards")
    parser.add_argument("--out", required=True, help="checkpoint file written at the end")
    parser.add_argument("--model", default="clipmill-tiny-vit")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--shuffle", type=int, default=512, help="shuffle buffer (samples)")
    parser.add_argument("--augment", action="store_true", help="training transform")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (0 = torch's default)"
    )
    parser.add_argument("--part", default="", help="I/N: train on shards[I::N] only")
    parser.add_argument(
        "--ready-go", action="store_true", help="print READY after set-up, wait for a stdin line"
    )
    args = parser.parse_args()

    import open_clip
    import torch
    import webdataset as wds
    from open_clip_train.scheduler import cosine_lr

    if args.threads:
        torch.set_num_threads(args.threads)
    open_clip.add_model_config(CONFIGS)
    torch.manual_seed(args.seed)
    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(args.model)
    preprocess = preprocess_train if args.augment else preprocess_val
    tokenizer = open_clip.get_tokenizer(args.model)
    shards = sorted(glob.glob(os.path.join(args.shards, "*.tar")))
    if args.part:
        index, count = (int(x) for x in args.part.split("/"))
        shards = shards[index::count]
    data = (
        wds.WebDataset(shards, resampled=True, shardshuffle=False, seed=args.seed)
        .shuffle(args.shuffle)
        .decode("pilrgb")
        .to_tuple("jpg;png;jpeg;webp", "txt")
        .map_tuple(preprocess, lambda t: t)
        .batched(
            args.batch,
            partial=False,
            collation_fn=lambda s: (torch.stack([x[0] for x in s]), tokenizer([x[1] for x in s])),
        )
    )
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": 0.1},
        ],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    scheduler = cosine_lr(optimizer, args.lr, args.warmup, args.steps)
    loss_fn = open_clip.ClipLoss()
    model.train()
    it = iter(data)
    if args.ready_go:
        print("READY", flush=True)
        input()
    started, cpu_started = time.perf_counter(), time.process_time()
    step_times: list[float] = []
    for step in range(args.steps):
        step_started = time.perf_counter()
        images, texts = next(it)
        scheduler(step)
        optimizer.zero_grad()
        image_features, text_features, logit_scale = model(images, texts)
        loss = loss_fn(image_features, text_features, logit_scale)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        step_times.append(time.perf_counter() - step_started)
        if step % 10 == 0 or step + 1 == args.steps:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    torch.save(
        {
            "epoch": 1,
            "name": args.model,
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
        },
        args.out,
    )
    steady = sorted(step_times[1:] or step_times)
    print(f"median step {steady[len(steady) // 2]:.5f} s, loop cpu {cpu:.2f} s", flush=True)
    print(f"trained {args.steps} steps in {seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
