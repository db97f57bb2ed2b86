"""Backend `hf`: a Hugging Face transformers vision-language model (BLIP, LLaVA, Qwen2-VL style)
from a local folder or a hub id, prompted for HQ-CLIP's four fields as JSON.

The processor and model load once per actor (`AutoProcessor`, `AutoModelForImageTextToText`).
A processor with a chat template (LLaVA, Qwen2-VL) gets the prompt as a user turn holding the
image; one without (BLIP) gets the prompt as the text prefix. Generation is greedy; only the new
tokens are decoded and read by `parsing.parse_reply`. A batch whose generation raises is redone
one image at a time, so the failing row alone carries the reason.

Time limit: a thread cannot be killed, so the limit is a stopping criterion checked after every
generated token (transformers' `MaxTimeCriteria` idea, with a flag saying it fired). A batch gets
`timeout_s` per image; a batch that hits it is redone image by image with `timeout_s` each, and
an image that still hits it fails with the reason `timeout` instead of its truncated text.
"""

from __future__ import annotations

import time
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
        if replies is None:  # the batch ran out of time: find the slow rows one by one
            return [self._alone(r) for r in requests]
        return [self._parse(text) for text in replies]

    def _alone(self, r: CaptionRequest) -> Annotation:
        try:
            replies = self._generate([r])
        except Exception as exc:  # noqa: BLE001 - a row-level failure is the row's reason
            return Annotation(error=f"hf: generation failed: {type(exc).__name__}: {exc}"[:300])
        if replies is None:
            return Annotation(error=f"hf: timeout: generation over {self.p.timeout_s}s")
        return self._parse(replies[0])

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

    def _generate(self, requests: list[CaptionRequest]) -> list[str] | None:
        """The decoded new text of each request, or None when the time limit stopped generation."""
        import torch

        inputs = self.processor(
            images=[r.image for r in requests],
            text=self._prompts(requests),
            return_tensors="pt",
            padding=True,
        ).to(self.device)
        limit = _time_limit(self.p.timeout_s * len(requests)) if self.p.timeout_s else None
        with torch.no_grad():
            out = self.model.generate(
                **inputs,
                max_new_tokens=self.p.max_new_tokens,
                do_sample=False,
                stopping_criteria=[limit] if limit else None,
            )
        if limit is not None and limit.fired:
            return None
        prompt_ids = inputs.get("input_ids")
        n = 0 if prompt_ids is None else prompt_ids.shape[1]
        if n and out.shape[1] > n and torch.equal(out[:, :n], prompt_ids):
            out = out[:, n:]  # decoder-only models echo the prompt
        return [str(t) for t in self.processor.batch_decode(out, skip_special_tokens=True)]


def _time_limit(seconds: float) -> Any:
    """A stopping criterion: stop once `seconds` have passed since it was made; `.fired` says so.

    Built on first use, so importing this module does not import transformers.
    """
    import torch
    from transformers import StoppingCriteria

    class TimeLimit(StoppingCriteria):
        def __init__(self) -> None:
            self.started = time.monotonic()
            self.fired = False

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            if time.monotonic() - self.started > seconds:
                self.fired = True
            return torch.full(
                (input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device
            )

    return TimeLimit()


def build(params: Any) -> HFCaptioner:
    return HFCaptioner(params.hf, params.limits)
