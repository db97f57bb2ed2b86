"""Backend `openai`: an OpenAI-compatible chat-completions server with image input (what vLLM,
SGLang and TGI expose): one request per image, the image sent as a base64 PNG data URL.

Requests run `concurrency` at a time on a thread pool (httpx, one client per actor). A 5xx, a
closed connection or a timeout is retried `retries` times with doubling backoff; a 4xx is not
retried. A row whose request still fails gets `error` = the reason (http_500, connection_closed,
timeout, ...), and the batch goes on: one bad row never fails the batch.
"""

from __future__ import annotations

import base64
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tasks.recaption.backends.base import Annotation, CaptionRequest
from tasks.recaption.backends.parsing import parse_reply


class _Failed(Exception):
    """A request that failed for good; its message is the row's reason."""


class _Retryable(_Failed):
    """A failure worth another try; its message is the row's reason if the tries run out."""


def data_url(image: Any) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAICaptioner:
    name = "openai"

    def __init__(self, params: Any, limits: Any) -> None:
        import httpx

        self.p = params  # OpenAIParams
        self.limits = limits
        self.model_version = params.model
        key = os.environ.get(params.api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(
            base_url=str(params.base_url).rstrip("/"), headers=headers, timeout=params.timeout_s
        )
        self.pool = ThreadPoolExecutor(max_workers=params.concurrency)

    def annotate(self, requests: list[CaptionRequest]) -> list[Annotation]:
        return list(self.pool.map(self._one, requests))

    def _one(self, r: CaptionRequest) -> Annotation:
        try:
            reply = self._with_retries(self._body(r))
        except _Failed as exc:
            return Annotation(error=f"openai: {exc}")
        return parse_reply(
            reply, f"{self.name}:{self.model_version}", self.limits.max_chars, self.limits.max_tags
        )

    def _body(self, r: CaptionRequest) -> dict[str, Any]:
        prompt = self.p.prompt.replace("{alt_text}", r.alt_text)
        content = [
            {"type": "text", "text": prompt},
            {"type": "image_url", "image_url": {"url": data_url(r.image)}},
        ]
        return {
            "model": self.p.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.p.max_tokens,
        }

    def _with_retries(self, body: dict[str, Any]) -> str | None:
        delay = self.p.backoff_s
        for attempt in range(self.p.retries + 1):
            try:
                return self._post(body)
            except _Retryable:
                if attempt == self.p.retries:
                    raise
                time.sleep(delay)
                delay *= 2
        return None  # unreachable: the loop returns or raises

    def _post(self, body: dict[str, Any]) -> str | None:
        import httpx

        try:
            resp = self.client.post("/chat/completions", json=body)
        except httpx.TimeoutException:
            raise _Retryable(f"timeout after {self.p.timeout_s}s") from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError) as exc:
            raise _Retryable(f"connection_closed: {type(exc).__name__}") from None
        if resp.status_code >= 500:
            raise _Retryable(f"http_{resp.status_code}")
        if resp.status_code >= 400:
            raise _Failed(f"http_{resp.status_code}: {resp.text[:80]!r}")
        try:
            return str(resp.json()["choices"][0]["message"]["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retryable(f"bad_response: not a chat completion {resp.text[:80]!r}") from None


def build(params: Any) -> OpenAICaptioner:
    return OpenAICaptioner(params.openai, params.limits)
