"""The HQ-CLIP objective: contrastive loss with the batch's long negative descriptions as hard
negatives, plus a tag classification head (formulas: tasks/train/hqclip.py, docs/CONTRACTS.md).

The tag head (a linear layer, normalised image embedding -> one logit per vocabulary tag) is the
objective's own: its parameters join the optimizer (`parameters()`), its weights travel in the
train-state checkpoint (`state_dict()`), and the exported model folder stays a plain CLIP.

Several Ray Train workers: the vocabulary is built once, by rank 0 from the shards' JSON side
files, and broadcast to the others (so every worker's head has the same columns); each step the
image / text features, the negative descriptions' features (every worker encodes all its local
rows, "" where a sample has none, so every worker gathers the same shapes), the negative mask and
the tag targets / weights are gathered across workers (open_clip's gather_features, with gradients
for the features), and every worker computes both losses over the global batch, as open_clip's
ClipLoss does without local_loss. The tag head starts from the same seed on every worker and sees
the same global inputs, so its gradient is the same everywhere and it stays in step without an
all-reduce; the model's gradients are averaged by the loop. Two workers thus train what one
worker does on the same global batch (tests/train/test_hqclip_train.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasks.clip.texttrim import clip_forward, encode_text
from tasks.train.data import Picked
from tasks.train.hqclip import (
    build_vocab,
    hard_negative_clip_loss,
    shard_metas,
    tag_loss,
    tag_targets,
)
from tasks.train.objectives.base import Batch, ObjectiveBase
from tasks.train.params import TrainParams

if TYPE_CHECKING:
    from torch import Tensor


def embed_dim_of(model: Any) -> int:
    """The joint embedding width of an open_clip model (text projection's output)."""
    proj = getattr(model, "text_projection", None)
    if proj is not None and getattr(proj, "ndim", 0) == 2:
        return int(proj.shape[1])
    dim = getattr(getattr(model, "visual", None), "output_dim", None)
    if dim is None:
        raise ValueError("hqclip.enabled: cannot tell the model's embedding width for the tag head")
    return int(dim)


class HQClipExtras:
    """Batch extras: `neg_texts` (tokens, "" where a sample has no negative), `has_negative`,
    `tag_targets`, `tag_weights`."""

    replaces_images = False

    def __init__(self, p: TrainParams, vocab: list[str], tokenizer: Any) -> None:
        self.cfg, self.vocab, self.tokenizer = p.hqclip, vocab, tokenizer

    def __call__(self, samples: list[dict[str, Any]], picked: Picked) -> dict[str, Any]:
        import torch

        from tasks.io.wds import sample_json

        metas = [sample_json(s) for s in samples]
        negs = [str(m.get(self.cfg.negative_field) or "").strip() for m in metas]
        targets, weights = tag_targets(
            metas,
            self.vocab,
            self.cfg.positive_tags_field,
            self.cfg.negative_tags_field,
            self.cfg.unmentioned_weight,
        )
        return {
            "neg_texts": self.tokenizer(negs),
            "has_negative": torch.tensor([bool(n) for n in negs]),
            "tag_targets": targets,
            "tag_weights": weights,
        }


def shared_vocab(p: TrainParams, rank: int, world: int) -> list[str]:
    """The tag vocabulary of the training shards, read once: by rank 0, broadcast to the others."""
    from tasks.train.data import list_shards, load_excluded

    cfg = p.hqclip
    vocab: list[str] = []
    if rank == 0:
        fields = [cfg.positive_tags_field, cfg.negative_tags_field]
        metas = shard_metas(list_shards(p.shards), load_excluded(p.exclude_uids))
        vocab = build_vocab(metas, fields, cfg.tag_min_count, cfg.max_tags)
    if world > 1:
        import torch.distributed as dist

        box: list[Any] = [vocab]
        dist.broadcast_object_list(box, src=0)
        vocab = list(box[0])
    return vocab


class HQClipObjective(ObjectiveBase):
    """`L = L_con(hard negatives, w_neg) + w_tag * L_tag` over the (global) batch."""

    def __init__(self, p: TrainParams, model: Any, rank: int, world: int) -> None:
        super().__init__()
        import torch

        if p.loss != "clip":
            raise ValueError(f"hqclip.enabled with loss {p.loss!r}: HQ-CLIP's loss is softmax CLIP")
        self.p, self.cfg, self.rank, self.world = p, p.hqclip, rank, world
        self.vocab = shared_vocab(p, rank, world)
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(p.seed)
            self.head = torch.nn.Linear(embed_dim_of(model), max(len(self.vocab), 1)).to(device)

    def parameters(self) -> list[Any]:
        """The tag head's parameters: the worker adds them to the optimizer."""
        return list(self.head.parameters()) if self.vocab and self.cfg.tag_weight > 0 else []

    def make_extras(self, built: Any) -> list[Any]:
        return [HQClipExtras(self.p, self.vocab, built.tokenizer)]

    def _gather(self, x: Tensor, grad: bool = True) -> Tensor:
        """`x` of every worker, concatenated in rank order (this worker's keeps its gradient)."""
        if self.world == 1:
            return x
        from open_clip.loss import gather_features

        return gather_features(x, x, False, grad, self.rank, self.world)[0]

    def loss(self, model: Any, batch: Batch, step: int) -> Tensor:
        import torch

        out = clip_forward(model, batch.images, batch.texts)
        img, txt, scale = out["image_features"], out["text_features"], out["logit_scale"]
        img, txt = self._gather(img), self._gather(txt)
        has_neg = batch.extras["has_negative"]
        neg = txt[:0]
        if self.cfg.negative_weight > 0 and (self.world > 1 or bool(has_neg.any())):
            neg = self._gather(encode_text(model, batch.extras["neg_texts"], normalize=True))
            has_neg = self._gather(has_neg.to(torch.uint8), grad=False).bool()  # gloo: no bool
        con = hard_negative_clip_loss(img, txt, neg, has_neg, scale, self.cfg.negative_weight)
        self._terms = {"contrastive": float(con.detach())}
        if not self.parameters():
            return con
        targets = self._gather(batch.extras["tag_targets"], grad=False)
        weights = self._gather(batch.extras["tag_weights"], grad=False)
        tags = tag_loss(self.head(img), targets, weights)
        self._terms["tags"] = float(tags.detach())
        return con + self.cfg.tag_weight * tags

    def state_dict(self) -> dict[str, Tensor]:
        return {f"head.{k}": v for k, v in self.head.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.head.load_state_dict({k.removeprefix("head."): v for k, v in state.items()})
