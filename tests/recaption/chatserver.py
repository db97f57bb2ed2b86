"""A small loopback server that speaks OpenAI's chat-completions protocol with image input, for
protocol tests of the `openai` backend (it runs no model: its replies are scripted per alt text).

The reply for a request is chosen by a word in its prompt (the alt text is in the prompt):
- `ok...`       a well-formed JSON object with the four fields (naming the alt text);
- `flaky...`    HTTP 500 on the first try of that alt text, then as `ok`;
- `fail500...`  HTTP 500 always;
- `close...`    the connection is closed without a response;
- `hang...`     no response until the client gives up (sleeps `hang_s`);
- `half...`     a reply cut mid-JSON;
- `prose...`    a reply that is not JSON at all;
- `long...`     a long positive of 10,000 characters.
Every request is checked: POST /v1/chat/completions, a user message whose content holds a text
part and an `image_url` part with a base64 PNG data URL that decodes; else HTTP 400.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image


def _reply(alt: str) -> dict[str, Any]:
    return {
        "long_positive": f"A detailed picture of {alt}.",
        "long_negative": f"A detailed picture of something other than {alt}.",
        "short_positive": [alt, "picture"],
        "short_negative": ["nothing"],
    }


class ChatServer:
    def __init__(self, hang_s: float = 5.0, delay_s: float = 0.0) -> None:
        self.hang_s = hang_s
        self.delay_s = delay_s
        self.requests: Counter[str] = Counter()  # alt text -> requests received
        self.bad: list[str] = []  # protocol violations seen
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.handle(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _check(self, handler: BaseHTTPRequestHandler, body: bytes) -> str | None:
        """The alt text of a valid request (the prompt's text after 'Alt text: '), else None."""
        if handler.path != "/v1/chat/completions":
            return None
        try:
            msg = json.loads(body)["messages"][0]
            parts = {p["type"]: p for p in msg["content"]}
            url = parts["image_url"]["image_url"]["url"]
            head, b64 = url.split(",", 1)
            if head != "data:image/png;base64":
                return None
            Image.open(io.BytesIO(base64.b64decode(b64))).verify()
            return str(parts["text"]["text"].split("Alt text: ", 1)[1])
        except (KeyError, IndexError, ValueError, TypeError, OSError):
            return None

    def _send(self, handler: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        alt = self._check(handler, body)
        if alt is None:
            self.bad.append(body[:200].decode("utf-8", "replace"))
            self._send(handler, 400, {"error": {"message": "bad request"}})
            return
        self.requests[alt] += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        kind = alt.split()[0] if alt.split() else ""
        if kind.startswith("fail500") or (kind.startswith("flaky") and self.requests[alt] == 1):
            self._send(handler, 500, {"error": {"message": "internal error"}})
            return
        if kind.startswith("close"):
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        if kind.startswith("hang"):
            time.sleep(self.hang_s)
            return
        content = json.dumps(_reply(alt))
        if kind.startswith("half"):
            content = content[: len(content) // 2]
        elif kind.startswith("prose"):
            content = "I am sorry, I cannot describe this image."
        elif kind.startswith("long"):
            content = json.dumps({**_reply(alt), "long_positive": "word " * 2000})
        self._send(
            handler, 200, {"choices": [{"message": {"role": "assistant", "content": content}}]}
        )
