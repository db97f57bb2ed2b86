"""Backend `hf` on a tiny BLIP built from a config with RANDOM weights and a hand-made
vocabulary: a code-path test (loading from a local folder, prompting, batched generation,
decoding only the new tokens, parsing into the four fields), not a test of caption quality;
no vision-language model can be downloaded here."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tasks.recaption.backends.base import CaptionRequest
from tasks.recaption.backends.parsing import parse_reply
from tasks.recaption.params import HFParams, OutputLimitsParams

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "{", "}", '"', ":", ",", "[", "]"] + [
    "long_positive", "long_negative", "short_positive", "short_negative", "a", "dog", "describe",
    "the", "image", "as", "json", "alt", "text", *[f"w{i}" for i in range(40)],
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder = tmp_path_factory.mktemp("tiny-blip")
    (folder / "vocab.txt").write_text("\n".join(VOCAB))
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=BertTokenizerFast(vocab_file=str(folder / "vocab.txt")),
    )
    small = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }
    config = BlipConfig(
        vision_config={**small, "image_size": 32, "patch_size": 16},
        text_config={
            **small,
            "vocab_size": len(VOCAB),
            "max_position_embeddings": 64,
            "bos_token_id": 2,
            "sep_token_id": 3,
            "pad_token_id": 0,
            "eos_token_id": 3,
        },
        projection_dim=32,
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _requests() -> list[CaptionRequest]:
    return [
        CaptionRequest("u0", Image.new("RGB", (40, 40), (200, 10, 10)), "a dog"),
        CaptionRequest("u1", Image.new("RGB", (20, 50), (10, 200, 10)), "alt text"),
    ]


def test_random_blip_code_path_from_a_local_folder(tiny_blip):
    from tasks.recaption.backends.hf import HFCaptioner

    captioner = HFCaptioner(
        HFParams(model=str(tiny_blip), max_new_tokens=6, device="cpu"), OutputLimitsParams()
    )
    assert captioner.model_version == str(tiny_blip) and not captioner.chat
    reqs = _requests()
    texts = captioner._generate(reqs)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    anns = captioner.annotate(reqs)
    expected = [parse_reply(t, f"hf:{tiny_blip}", 2000, 32) for t in texts]
    assert anns == expected  # what the model generated is what was parsed, row by row
    assert all(a.error for a in anns)  # random weights write no JSON: each row says why


def test_a_generation_failure_is_the_rows_reason(tiny_blip):
    """A batch that fails to generate is redone row by row; a row that still fails carries the
    exception as its reason, and the others are annotated."""
    from tasks.recaption.backends.hf import HFCaptioner

    captioner = HFCaptioner(
        HFParams(model=str(tiny_blip), max_new_tokens=4, device="cpu"), OutputLimitsParams()
    )
    reqs = _requests()
    bad = CaptionRequest("bad", Image.new("RGBA", (0, 0)), "a dog")  # 0x0: the processor raises
    anns = captioner.annotate([reqs[0], bad, reqs[1]])
    assert len(anns) == 3
    assert anns[1].error and anns[1].error.startswith("hf: generation failed")
    assert not (anns[0].error or "").startswith("hf: generation failed")


def test_a_row_over_the_time_limit_fails_with_reason_timeout(tiny_blip):
    """The limit is checked after every token: a batch over it is redone row by row, and a row
    still over it carries `timeout`, not its truncated text parsed as a reply. A generous limit
    changes nothing: the same texts as without a limit."""
    from tasks.recaption.backends.hf import HFCaptioner

    def captioner(timeout_s: float) -> HFCaptioner:
        params = HFParams(model=str(tiny_blip), max_new_tokens=8, device="cpu", timeout_s=timeout_s)
        return HFCaptioner(params, OutputLimitsParams())

    reqs = _requests()
    anns = captioner(1e-9).annotate(reqs)
    assert [a.error for a in anns] == ["hf: timeout: generation over 1e-09s"] * 2
    assert captioner(1e-9)._generate(reqs) is None
    assert captioner(600.0)._generate(reqs) == captioner(0.0)._generate(reqs)
