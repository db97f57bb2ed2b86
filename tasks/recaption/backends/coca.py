"""Backend `coca`: an open_clip CoCa writes each image's long positive caption.

The model is a CoCa trained by the train stage (`params/coca.yaml`, loss `coca`) and loaded from
its model folder through `tasks.clip.load_clip` (or `random:<coca config>` in tests). It fills
only `long_positive`; the tagger and composer later in the chain fill the rest.

Generation is ours, not `CoCa.generate`: open_clip's generate needs transformers'
`BeamSearchScorer`, which transformers 5 removed, so it fails here. Both modes run the model's own
forward with the image encoded once (`image_latent`, `image_embs`), one token per step:
- `top_p`: nucleus sampling (MobileCLIP DR's choice, top-p 0.9) with a generator seeded per row
  from (stage seed, uid), so a row's caption depends on neither the batch it lands in nor the
  actor, and a resumed run writes the same captions;
- `beam_search`: plain beam search (no beam groups), score = sum of log-probs / length**penalty.
End-of-text is blocked until `min_tokens` tokens are out; at most `max_tokens` tokens (capped by
the model's context length) are generated.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tasks.recaption.backends.base import Annotation, CaptionRequest, source_of

DEFAULT_SOT, DEFAULT_EOT = 49406, 49407  # open_clip SimpleTokenizer's special tokens


class CocaModelError(ValueError):
    """coca.model does not name a CoCa model (a plain CLIP has no caption decoder)."""


def row_seed(seed: int, uid: str) -> int:
    """A 63-bit seed per (stage seed, uid): sampling independent of batching and actors."""
    digest = hashlib.sha256(f"{seed}:{uid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def model_version(ref: str) -> str:
    """What made the captions: the weights file's sha256 (first 16 hex) for a folder, else the ref."""
    from tasks.clip import WEIGHTS_FILE, is_mlflow_uri, is_random_ref, local_folder

    if is_random_ref(ref) or is_mlflow_uri(ref):
        return ref
    weights = Path(local_folder(ref)) / WEIGHTS_FILE
    digest = hashlib.sha256()
    with weights.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()[:16]}"


def _next_logits(model: Any, latent: Any, embs: Any, tokens: Any) -> Any:
    """Logits of the next token after `tokens` (the causal decoder's last position)."""
    out = model(None, tokens, image_latent=latent, image_embs=embs, output_labels=False)
    return out["logits"][:, -1].float()


def _top_p_filter(probs: Any, top_p: float) -> Any:
    """Zero every token outside the smallest set whose probability reaches top_p; renormalise."""
    import torch

    sorted_p, order = probs.sort(dim=-1, descending=True)
    outside = (sorted_p.cumsum(-1) - sorted_p) >= top_p  # the first token always stays
    sorted_p = sorted_p.masked_fill(outside, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return kept / kept.sum(-1, keepdim=True)


def sample_top_p(
    model: Any, images: Any, seeds: list[int], cfg: Any, sot: int, eot: int, steps: int
) -> list[list[int]]:
    """Nucleus sampling, one generator per row; returns the generated ids (without sot/eot)."""
    import torch

    n = images.shape[0]
    latent, embs = model._encode_image(images)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    tokens = torch.full((n, 1), sot, dtype=torch.long, device=images.device)
    done = torch.zeros(n, dtype=torch.bool)
    for step in range(steps):
        logits = _next_logits(model, latent, embs, tokens) / cfg.temperature
        if step < cfg.min_tokens:
            logits[:, eot] = float("-inf")
        probs = _top_p_filter(logits.softmax(-1), cfg.top_p).cpu()
        nxt = torch.tensor(
            [int(torch.multinomial(probs[i], 1, generator=gens[i])) for i in range(n)]
        )
        nxt = torch.where(done, torch.full_like(nxt, eot), nxt)
        done |= nxt == eot
        tokens = torch.cat([tokens, nxt.to(tokens.device)[:, None]], dim=1)
        if bool(done.all()):
            break
    return [_strip(row, eot) for row in tokens[:, 1:].tolist()]


def beam_search(
    model: Any, images: Any, cfg: Any, sot: int, eot: int, steps: int
) -> list[list[int]]:
    """Beam search per image (beams of all images in one batch); the best normalised beam wins."""
    import torch

    n, k = images.shape[0], cfg.num_beams
    latent, embs = model._encode_image(images)
    latent, embs = latent.repeat_interleave(k, 0), embs.repeat_interleave(k, 0)
    tokens = torch.full((n * k, 1), sot, dtype=torch.long, device=images.device)
    scores = torch.full((n, k), float("-inf"), device=images.device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    done = torch.zeros(n * k, dtype=torch.bool, device=images.device)
    lengths = torch.zeros(n * k, device=images.device)
    for step in range(steps):
        logp = _next_logits(model, latent, embs, tokens).log_softmax(-1)
        if step < cfg.min_tokens:
            logp[:, eot] = float("-inf")
        logp[done] = float("-inf")
        logp[done, eot] = 0.0  # a finished beam only continues with eot, at no cost
        vocab = logp.shape[-1]
        cand = (scores.view(n * k, 1) + logp).view(n, k * vocab)
        scores, flat = cand.topk(k, dim=-1)
        beam = (flat // vocab + torch.arange(n, device=flat.device)[:, None] * k).view(-1)
        nxt = (flat % vocab).view(-1)
        tokens = torch.cat([tokens[beam], nxt[:, None]], dim=1)
        lengths = lengths[beam] + (~done[beam]).float()
        done = done[beam] | (nxt == eot)
        if bool(done.all()):
            break
    norm = scores / lengths.view(n, k).clamp(min=1) ** cfg.length_penalty
    best = norm.argmax(-1) + torch.arange(n, device=norm.device) * k
    return [_strip(row, eot) for row in tokens[best, 1:].tolist()]


def _strip(ids: list[int], eot: int) -> list[int]:
    return ids[: ids.index(eot)] if eot in ids else ids


class CocaCaptioner:
    """Loads the CoCa once (per actor) and captions batches; row failures become Annotation.error."""

    name = "coca"

    def __init__(self, cfg: Any, seed: int = 0) -> None:
        import torch

        from tasks.clip import load_clip

        device = (
            cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
        )
        self.cfg, self.seed, self.device = cfg, seed, torch.device(device)
        self.model, self.preprocess, self.tokenizer = load_clip(cfg.model, device=device)
        if not hasattr(self.model, "text_decoder"):
            raise CocaModelError(
                f"coca.model {cfg.model!r}: {type(self.model).__name__} is not a CoCa "
                "(no caption decoder); train one with params/coca.yaml"
            )
        self.model_version = model_version(cfg.model)
        self.sot = int(getattr(self.tokenizer, "sot_token_id", DEFAULT_SOT))
        self.eot = int(getattr(self.tokenizer, "eot_token_id", DEFAULT_EOT))
        context = int(self.model.text.context_length)
        self.steps = min(cfg.max_tokens, context - 1)

    def generate(self, requests: list[CaptionRequest]) -> list[str]:
        """One caption per request (may be empty), batched through the model."""
        import torch

        images = torch.stack([self.preprocess(r.image) for r in requests]).to(self.device)
        with torch.no_grad():
            if self.cfg.generation == "beam_search":
                ids = beam_search(self.model, images, self.cfg, self.sot, self.eot, self.steps)
            else:
                seeds = [row_seed(self.seed, r.uid) for r in requests]
                ids = sample_top_p(
                    self.model, images, seeds, self.cfg, self.sot, self.eot, self.steps
                )
        return [self._decode(row) for row in ids]

    def _decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode([i for i in ids if i not in (self.sot, self.eot, 0)])
        return " ".join(str(text).split())

    def annotate(self, requests: list[CaptionRequest]) -> list[Annotation]:
        """A whole-batch failure is retried row by row, so one bad image flags only itself."""
        if not requests:
            return []
        try:
            captions = self.generate(requests)
        except Exception as exc:
            if len(requests) == 1:
                return [Annotation(error=f"coca: {type(exc).__name__}: {exc}"[:300])]
            return [self._one(r) for r in requests]
        return [self._annotation(c) for c in captions]

    def _one(self, request: CaptionRequest) -> Annotation:
        try:
            return self._annotation(self.generate([request])[0])
        except Exception as exc:
            return Annotation(error=f"coca: {type(exc).__name__}: {exc}"[:300])

    def _annotation(self, caption: str) -> Annotation:
        if not caption:
            return Annotation(error="coca: empty caption")
        return Annotation(long_positive=caption, sources={"long_positive": source_of(self)})


def build(params: Any) -> CocaCaptioner:
    """Builder registered as backend "coca": reads the stage params' `coca` section and seed."""
    return CocaCaptioner(params.coca, seed=int(getattr(params, "seed", 0)))
