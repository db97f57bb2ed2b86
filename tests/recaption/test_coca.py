"""Backend `coca`: generation code paths on a tiny randomly initialised CoCa.

These are code-path tests (random weights write nonsense words): they check decoding rules
(top-p filtering, beam search = greedy at one beam, min/max length, per-uid determinism), the
provenance fields and row-level failures, not caption quality. tests/recaption/test_coca_train.py
runs the same backend on a CoCa the train stage trained.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.recaption.backends.base import CaptionRequest, build_captioner
from tasks.recaption.backends.coca import (
    CocaCaptioner,
    CocaModelError,
    _top_p_filter,
    beam_search,
    row_seed,
    sample_top_p,
)
from tasks.recaption.params import CocaParams, RecaptionParams

RANDOM = "random:clipmill-tiny-coca"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def _requests(n: int = 3, size: int = 40) -> list[CaptionRequest]:
    rng = np.random.default_rng(0)
    return [
        CaptionRequest(
            f"uid{i}", Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)), "alt"
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def captioner() -> CocaCaptioner:
    params = RecaptionParams(backends=["coca"], coca=CocaParams(model=RANDOM, max_tokens=8))
    built = build_captioner("coca", params)
    assert isinstance(built, CocaCaptioner)
    return built


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    kept = _top_p_filter(probs, 0.7)
    assert torch.allclose(kept, torch.tensor([[0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8]]))
    # the most likely token survives even when it alone exceeds p
    assert torch.equal(_top_p_filter(probs, 0.1), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))


def test_top_p_captions_are_fields_with_provenance(captioner: CocaCaptioner) -> None:
    reqs = _requests()
    out = captioner.annotate(reqs)
    assert len(out) == 3
    for a in out:
        assert a.error is None and a.long_positive and isinstance(a.long_positive, str)
        assert a.sources == {"long_positive": f"coca:{RANDOM}"}
        assert a.missing() == ("long_negative", "short_positive", "short_negative")
    # per-uid seeds: a row's caption does not depend on the batch it is in
    alone = captioner.annotate([reqs[2]])[0]
    assert alone.long_positive == out[2].long_positive
    assert len({a.long_positive for a in out}) == 3


def test_top_p_depends_on_the_seed_and_respects_lengths(captioner: CocaCaptioner) -> None:
    images = torch.stack([captioner.preprocess(r.image) for r in _requests(2)])
    cfg: Any = CocaParams(model=RANDOM, max_tokens=6, min_tokens=6)
    a = sample_top_p(captioner.model, images, [1, 2], cfg, captioner.sot, captioner.eot, 6)
    b = sample_top_p(captioner.model, images, [1, 3], cfg, captioner.sot, captioner.eot, 6)
    assert a[0] == b[0] and a[1] != b[1]
    assert all(len(ids) == 6 and captioner.eot not in ids for ids in a)  # eot blocked throughout
    assert row_seed(0, "x") != row_seed(1, "x") and row_seed(0, "x") == row_seed(0, "x")


def test_one_beam_is_greedy_decoding(captioner: CocaCaptioner) -> None:
    model, sot, eot = captioner.model, captioner.sot, captioner.eot
    images = torch.stack([captioner.preprocess(r.image) for r in _requests(2)])
    cfg: Any = CocaParams(model=RANDOM, generation="beam_search", num_beams=1, min_tokens=2)
    with torch.no_grad():
        got = beam_search(model, images, cfg, sot, eot, 5)
        latent, embs = model._encode_image(images)
        tokens = torch.full((2, 1), sot)
        for step in range(5):
            logits = model(None, tokens, image_latent=latent, image_embs=embs, output_labels=False)
            last = logits["logits"][:, -1]
            if step < 2:
                last[:, eot] = float("-inf")
            tokens = torch.cat([tokens, last.argmax(-1, keepdim=True)], 1)
    want = [ids[: ids.index(eot)] if eot in ids else ids for ids in tokens[:, 1:].tolist()]
    assert got == want


def test_beam_search_finds_a_sequence_at_least_as_likely_as_greedy(
    captioner: CocaCaptioner,
) -> None:
    """With no length normalisation, the best of 4 beams scores >= the greedy (1 beam) sequence."""
    model, sot, eot = captioner.model, captioner.sot, captioner.eot
    images = torch.stack([captioner.preprocess(r.image) for r in _requests(1)])

    def logprob(ids: list[int]) -> float:
        seq = torch.tensor([[sot, *ids]])
        with torch.no_grad():
            latent, embs = model._encode_image(images)
            out = model(None, seq, image_latent=latent, image_embs=embs, output_labels=False)
        lp = out["logits"][0, :-1].log_softmax(-1)
        return float(lp[torch.arange(len(ids)), torch.tensor(ids)].sum())

    def run(beams: int) -> list[int]:
        cfg: Any = CocaParams(
            model=RANDOM, generation="beam_search", num_beams=beams, min_tokens=4, length_penalty=0
        )
        with torch.no_grad():
            return beam_search(model, images, cfg, sot, eot, 4)[0]

    greedy, best = run(1), run(4)
    assert len(greedy) == len(best) == 4
    assert logprob(best) >= logprob(greedy) - 1e-4


def test_a_bad_row_is_flagged_and_the_others_captioned(captioner: CocaCaptioner) -> None:
    reqs = _requests(2)
    bad = CaptionRequest("broken", Image.new("RGB", (0, 0)), "alt")
    out = captioner.annotate([reqs[0], bad, reqs[1]])
    assert out[0].long_positive and out[2].long_positive
    assert out[1].long_positive is None and out[1].error and out[1].error.startswith("coca: ")
    assert captioner.annotate([]) == []


def test_params_mistakes_name_the_field() -> None:
    with pytest.raises(ValueError, match="coca.generation"):
        CocaParams(generation="greedy")
    with pytest.raises(CocaModelError, match="coca.model 'random:clipmill-tiny'"):
        CocaCaptioner(CocaParams(model="random:clipmill-tiny"))


def test_a_fresh_coca_decoder_projection_is_initialised_not_left_empty() -> None:
    """open_clip leaves CoCa's decoder `text_projection` as torch.empty memory; ours is normal(0, w**-0.5)."""
    from tasks.clip.zoo import build_model

    torch.manual_seed(0)
    built = build_model("clipmill-tiny-coca")
    proj = built.model.text_decoder.text_projection.detach()
    expected = built.model.text_decoder.width**-0.5
    assert torch.isfinite(proj).all()
    assert abs(float(proj.std()) - expected) < 0.2 * expected
    assert abs(float(proj.mean())) < 0.2 * expected
