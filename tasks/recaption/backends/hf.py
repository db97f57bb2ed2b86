"""Backend `hf`: a Hugging Face transformers vision-language model (BLIP, LLaVA, Qwen2-VL style)
from a local folder or a hub id, prompted for HQ-CLIP's four fields as JSON.

The processor and model load once per actor (`AutoProcessor`, `AutoModelForImageTextToText`).
A processor with a chat template (LLaVA, Qwen2-VL) gets the prompt as a user turn holding the
image; one without (BLIP) gets the prompt as the text prefix. Generation is greedy; only the new
tokens are decoded and read by `parsing.parse_reply`. A batch whose generation raises is redone
one image at a time, so the failing row alone carries the reason.
"""

from __future__ import annotations

from typing import Any

from tasks.recaption.backends.base import Annotation, CaptionRequest
from tasks.recaption.backends.parsing import parse_reply


class HFCaptioner:
    name = "hf"

    def __init__(self, params: Any, limits: Any) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.p = params  # HFParams
        self.limits = limits
        device = params.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.processor = AutoProcessor.from_pretrained(params.model)
        model = AutoModelForImageTextToText.from_pretrained(
            params.model, dtype=getattr(torch, params.dtype)
        )
        self.model = model.to(device).eval()
        commit = getattr(model.config, "_commit_hash", None)
        self.model_version = f"{params.model}@{commit}" if commit else str(params.model)
        self.chat = bool(getattr(self.processor, "chat_template", None))

    def annotate(self, requests: list[CaptionRequest]) -> list[Annotation]:
        if not requests:
            return []
        try:
            replies = self._generate(requests)
        except Exception:  # noqa: BLE001 - redo one by one so the failing row carries the reason
            return [self._alone(r) for r in requests]
        return [self._parse(text) for text in replies]

    def _alone(self, r: CaptionRequest) -> Annotation:
        try:
            return self._parse(self._generate([r])[0])
        except Exception as exc:  # noqa: BLE001 - a row-level failure is the row's reason
            return Annotation(error=f"hf: generation failed: {type(exc).__name__}: {exc}"[:300])

    def _parse(self, text: str) -> Annotation:
        return parse_reply(
            text, f"{self.name}:{self.model_version}", self.limits.max_chars, self.limits.max_tags
        )

    def _prompts(self, requests: list[CaptionRequest]) -> list[str]:
        prompts = [self.p.prompt.replace("{alt_text}", r.alt_text) for r in requests]
        if not self.chat:
            return prompts
        return [
            self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": t}]}],
                add_generation_prompt=True,
            )
            for t in prompts
        ]

    def _generate(self, requests: list[CaptionRequest]) -> list[str]:
        import torch

        inputs = self.processor(
            images=[r.image for r in requests],
            text=self._prompts(requests),
            return_tensors="pt",
            padding=True,
        ).to(self.device)
        with torch.no_grad():
            out = self.model.generate(
                **inputs, max_new_tokens=self.p.max_new_tokens, do_sample=False
            )
        prompt_ids = inputs.get("input_ids")
        n = 0 if prompt_ids is None else prompt_ids.shape[1]
        if n and out.shape[1] > n and torch.equal(out[:, :n], prompt_ids):
            out = out[:, n:]  # decoder-only models echo the prompt
        return [str(t) for t in self.processor.batch_decode(out, skip_special_tokens=True)]


def build(params: Any) -> HFCaptioner:
    return HFCaptioner(params.hf, params.limits)
