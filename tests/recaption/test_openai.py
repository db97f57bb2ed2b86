"""Protocol test of the `openai` backend against a loopback chat-completions server (no model
runs: the server scripts its replies), covering retries, 500s, closed connections, hangs,
half-JSON, prose and absurdly long outputs."""

from __future__ import annotations

import time

from PIL import Image

from tasks.recaption.backends.base import CaptionRequest
from tasks.recaption.backends.openai import OpenAICaptioner
from tasks.recaption.params import OpenAIParams, OutputLimitsParams
from tests.recaption.chatserver import ChatServer


def _requests(alts: list[str]) -> list[CaptionRequest]:
    img = Image.new("RGB", (16, 12), (10, 200, 30))
    return [CaptionRequest(uid=f"u{i}", image=img, alt_text=a) for i, a in enumerate(alts)]


def _captioner(server: ChatServer, **kw: object) -> OpenAICaptioner:
    params = OpenAIParams(
        base_url=server.base_url,
        model="tiny-test",
        timeout_s=kw.pop("timeout_s", 2.0),
        retries=kw.pop("retries", 2),
        backoff_s=0.01,
        concurrency=4,
        **kw,
    )
    return OpenAICaptioner(params, OutputLimitsParams(max_chars=500))


def test_four_fields_and_provenance_from_a_good_reply():
    with ChatServer() as server:
        [ann] = _captioner(server).annotate(_requests(["ok a red square"]))
    assert server.bad == []
    assert ann.error is None
    assert ann.long_positive == "A detailed picture of ok a red square."
    assert ann.long_negative and ann.short_negative == ["nothing"]
    assert ann.short_positive == ["ok a red square", "picture"]
    assert ann.sources == {f: "openai:tiny-test" for f in ann.sources} and len(ann.sources) == 4


def test_each_failure_is_its_rows_reason_and_the_batch_goes_on():
    alts = [
        "ok one",
        "flaky two",
        "fail500 three",
        "close four",
        "hang five",
        "half six",
        "prose seven",
        "long eight",
    ]
    with ChatServer(hang_s=3.0) as server:
        start = time.monotonic()
        anns = _captioner(server, timeout_s=0.5, retries=1).annotate(_requests(alts))
        elapsed = time.monotonic() - start
    by = dict(zip(alts, anns, strict=True))
    assert by["ok one"].error is None and by["ok one"].long_positive
    assert by["flaky two"].error is None and server.requests["flaky two"] == 2  # retried once
    assert by["fail500 three"].error == "openai: http_500"
    assert server.requests["fail500 three"] == 2  # first try + 1 retry, then given up
    assert by["close four"].error.startswith("openai: connection_closed")
    assert by["hang five"].error == "openai: timeout after 0.5s"
    assert by["half six"].error.startswith(("truncated_json", "half_json"))
    assert by["prose seven"].error.startswith("not_json")
    assert by["long eight"].error.startswith("too_long: long_positive")
    assert elapsed < 2.9  # the hang was cut by the timeout, not waited out
    assert server.bad == []
