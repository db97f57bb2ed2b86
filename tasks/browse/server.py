"""`clipmill browse`: the LanceDB pool as a web page, for looking at curation decisions.

One page: text search (the query is embedded with a CLIP model from the registry, or any
reference `load_clip` takes, and matched against the pool's `curate_image_emb` column, the
image embeddings curate stored, so the model must be the one that made them: by default the one
named in `curate_features_model`), filters by curation decision and reason, thumbnails read from
the crawl's shards with their caption, the other candidate texts and any `recaption*` column,
and paging. Without a query the rows come in pool order. It binds to 127.0.0.1 unless told
otherwise: it serves the pool's images and captions to whoever can reach it.

Standard library HTTP (ThreadingHTTPServer): one page and one image route need no framework.
"""

from __future__ import annotations

import html
import json
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlparse

SHOWN = ["uid", "text", "texts", "shard", "curate_keep", "curate_reason", "url"]
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class Browser:
    """The pool, the crawl folder its `shard` paths are relative to, and a text encoder."""

    table: Any
    crawl_dir: Path
    model_ref: str | None = None
    page_size: int = 24
    _encoder: Callable[[str], list[float]] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _reasons: list[str] | None = field(default=None, repr=False)

    def columns(self) -> list[str]:
        return list(self.table.schema.names)

    def reasons(self) -> list[str]:
        if "curate_reason" not in self.columns():
            return []
        if self._reasons is None:  # read once: the pool does not change while browsing
            col = self.table.search().select(["curate_reason"]).limit(None).to_arrow()
            self._reasons = sorted({str(v) for v in col.column(0).to_pylist() if v})
        return self._reasons

    def encode(self, query: str) -> list[float]:
        """The query's CLIP text embedding (normalised), with the model loaded once."""
        with self._lock:
            if self._encoder is None:
                self._encoder = _text_encoder(self._model())
        return self._encoder(query)

    def _model(self) -> str:
        if self.model_ref:
            return self.model_ref
        if "curate_features_model" in self.columns():
            rows = self.table.search().select(["curate_features_model"]).limit(1).to_list()
            if rows and rows[0]["curate_features_model"]:
                return str(rows[0]["curate_features_model"])
        raise ValueError("text search needs --model: the pool records no curate_features_model")

    def rows(
        self, query: str = "", decision: str = "all", reason: str = "", page: int = 1
    ) -> tuple[list[dict[str, Any]], bool]:
        """One page of rows matching the filters, and whether a next page exists."""
        cols = [c for c in [*SHOWN, *self._recaption_columns()] if c in self.columns()]
        where = []
        if decision in ("kept", "dropped") and "curate_keep" in self.columns():
            where.append(f"curate_keep = {'true' if decision == 'kept' else 'false'}")
        if reason and "curate_reason" in self.columns():
            where.append("curate_reason = '{}'".format(reason.replace("'", "''")))
        offset = (max(page, 1) - 1) * self.page_size
        if query.strip():
            if "curate_image_emb" not in self.columns():
                raise ValueError("text search needs the curate stage's curate_image_emb column")
            search = self.table.search(self.encode(query), vector_column_name="curate_image_emb")
            search = search.distance_type("cosine").select([*cols, "_distance"])
        else:
            search = self.table.search().select(cols)
        if where:
            search = search.where(" and ".join(where), prefilter=True)
        got = search.limit(offset + self.page_size + 1).to_list()[offset:]
        return got[: self.page_size], len(got) > self.page_size

    def _recaption_columns(self) -> list[str]:
        return [c for c in self.columns() if c.startswith("recaption")]

    def image(self, uid: str, shard: str) -> tuple[bytes, str] | None:
        """The image bytes of `uid` from its webdataset shard (path relative to crawl_dir)."""
        path = (self.crawl_dir / shard).resolve()
        if self.crawl_dir.resolve() not in path.parents or not path.is_file():
            return None
        with tarfile.open(path) as tar:
            for ext in IMAGE_EXT:
                try:
                    member = tar.getmember(uid + ext)
                except KeyError:
                    continue
                data = tar.extractfile(member)
                if data is not None:
                    kind = "jpeg" if ext in (".jpg", ".jpeg") else ext[1:]
                    return data.read(), f"image/{kind}"
        return None


def _text_encoder(ref: str) -> Callable[[str], list[float]]:
    import torch

    from tasks.clip import load_clip

    model, _, tokenizer = load_clip(ref)

    def encode(text: str) -> list[float]:
        with torch.no_grad():
            emb = model.encode_text(tokenizer([text]))
            emb = emb / emb.norm(dim=-1, keepdim=True)
        return [float(v) for v in emb[0]]

    return encode


def render_page(browser: Browser, params: dict[str, str]) -> str:
    """The whole page for one set of query parameters."""
    query, decision = params.get("q", ""), params.get("decision", "all")
    reason, page = params.get("reason", ""), max(int(params.get("page", "1") or 1), 1)
    error = ""
    try:
        rows, more = browser.rows(query, decision, reason, page)
    except ValueError as exc:
        rows, more, error = [], False, str(exc)
    esc = html.escape
    options = "".join(
        f'<option value="{esc(r)}"{" selected" if r == reason else ""}>{esc(r)}</option>'
        for r in ["", *browser.reasons()]
    )
    decisions = "".join(
        f'<option value="{d}"{" selected" if d == decision else ""}>{d}</option>'
        for d in ("all", "kept", "dropped")
    )
    cards = []
    for row in rows:
        thumb = "/thumb?" + urlencode({"uid": row["uid"], "shard": row.get("shard") or ""})
        others = [t for t in row.get("texts") or [] if t != row.get("text")]
        recaps = [f"{c}: {row[c]}" for c in row if c.startswith("recaption") and row[c]]
        keep = row.get("curate_keep")
        verdict = "kept" if keep else ("dropped" if keep is not None else "undecided")
        score = f" · distance {row['_distance']:.3f}" if "_distance" in row else ""
        cards.append(
            f'<div class="card {verdict}" data-uid="{esc(row["uid"])}">'
            f'<img src="{esc(thumb)}" alt="{esc(row.get("text") or "")}" loading="lazy">'
            f'<div class="caption">{esc(row.get("text") or "")}</div>'
            + "".join(f'<div class="alt">{esc(t)}</div>' for t in others[:3])
            + "".join(f'<div class="recaption">{esc(t)}</div>' for t in recaps)
            + f'<div class="decision">{verdict}: {esc(row.get("curate_reason") or "")}{score}</div>'
            "</div>"
        )
    link = {"q": query, "decision": decision, "reason": reason}
    prev = f'<a id="prev" href="/?{urlencode({**link, "page": page - 1})}">previous</a>'
    nxt = f'<a id="next" href="/?{urlencode({**link, "page": page + 1})}">next</a>'
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>clipmill pool</title>
<style>body{{font-family:sans-serif;margin:1em}}.grid{{display:flex;flex-wrap:wrap;gap:8px}}
.card{{width:180px;border:2px solid #ccc;padding:4px;font-size:12px}}.kept{{border-color:#2a2}}
.dropped{{border-color:#c33}}.card img{{width:176px;height:176px;object-fit:contain;background:#eee}}
.caption{{font-weight:bold}}.alt,.recaption{{color:#555}}.error{{color:#c33}}</style></head><body>
<h1>clipmill pool <small>({browser.table.count_rows()} rows)</small></h1>
<form method="get" action="/"><input name="q" value="{esc(query)}" placeholder="text search">
<select name="decision">{decisions}</select> <select name="reason">{options}</select>
<button type="submit">show</button></form>
<p class="error">{esc(error)}</p><p id="page">page {page}</p>
<div class="grid">{"".join(cards) or "<p>no rows</p>"}</div>
<p>{prev if page > 1 else ""} {nxt if more else ""}</p></body></html>"""


def make_handler(browser: Browser) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlparse(self.path)
            params = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if url.path == "/":
                self._send(200, render_page(browser, params).encode(), "text/html; charset=utf-8")
            elif url.path == "/thumb":
                found = browser.image(params.get("uid", ""), params.get("shard", ""))
                if found is None:
                    self._send(404, b"no such image", "text/plain")
                else:
                    self._send(200, found[0], found[1])
            elif url.path == "/api/rows":
                rows, more = browser.rows(
                    params.get("q", ""),
                    params.get("decision", "all"),
                    params.get("reason", ""),
                    int(params.get("page", "1") or 1),
                )
                body = json.dumps({"rows": rows, "more": more}, default=str).encode()
                self._send(200, body, "application/json")
            else:
                self._send(404, f"no page {quote(url.path)}".encode(), "text/plain")

        def _send(self, code: int, body: bytes, kind: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

    return Handler


def make_server(browser: Browser, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    return ThreadingHTTPServer((host, port), make_handler(browser))


def serve(
    lance_uri: str | None,
    crawl_dir: Path,
    model: str | None,
    host: str = "127.0.0.1",
    port: int = 0,
    page_size: int = 24,
) -> None:
    """Serve until interrupted; prints the URL first."""
    from tasks.pool import open_pool

    browser = Browser(open_pool(lance_uri), crawl_dir, model, page_size)
    server = make_server(browser, host, port)
    print(f"clipmill browse: http://{host}:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
