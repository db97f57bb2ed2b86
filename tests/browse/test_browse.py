"""`clipmill browse` on a tiny real pool: LanceDB table, a webdataset shard of images, and a tiny
randomly initialised CLIP model (a code-path test of text search: it checks the ranking equals a
brute-force cosine search with the same encoder, not that the model is any good). The page is
loaded in headless Chromium (filters, thumbnails, paging) and a screenshot saved."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tasks.browse.server import Browser, make_server
from tests.support.tinymodel import save_tiny_model

COLOURS = ["red", "green", "blue", "yellow", "black", "white", "purple"]


def _png(rgb: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (48, 48), rgb).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """7 crawled rows (4 kept, 3 dropped for two reasons), their images in one shard, and the
    image embeddings of the tiny model in `curate_image_emb`, as curate stores them."""
    import lancedb
    import torch
    from PIL import Image

    from tasks.clip import load_clip

    root = tmp_path_factory.mktemp("browse")
    model_dir = save_tiny_model(root / "model")
    model, preprocess, _ = load_clip(str(model_dir))
    rgb = {
        "red": (220, 20, 20),
        "green": (20, 200, 20),
        "blue": (20, 20, 220),
        "yellow": (230, 230, 20),
        "black": (0, 0, 0),
        "white": (255, 255, 255),
        "purple": (128, 0, 128),
    }
    crawl = root / "crawl"
    (crawl / "shards").mkdir(parents=True)
    rows, embs = [], []
    with tarfile.open(crawl / "shards" / "00000.tar", "w") as tar:
        for i, colour in enumerate(COLOURS):
            uid = f"{i:024x}"
            data = _png(rgb[colour])
            info = tarfile.TarInfo(f"{uid}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            with torch.no_grad():
                x = preprocess(Image.open(io.BytesIO(data)).convert("RGB")).unsqueeze(0)
                e = model.encode_image(x)
                e = e / e.norm(dim=-1, keepdim=True)
            embs.append(e[0].numpy().astype("float32"))
            keep = i < 4
            rows.append(
                {
                    "uid": uid,
                    "text": f"a {colour} square",
                    "texts": [f"a {colour} square", f"{colour}.jpg"],
                    "shard": "shards/00000.tar",
                    "curate_keep": keep,
                    "curate_reason": "kept"
                    if keep
                    else ("basic:too_few_words" if i < 6 else "dedup"),
                    "recaption_text": f"a plain {colour} picture",
                    "curate_features_model": str(model_dir),
                }
            )
    table = pa.Table.from_pylist(rows)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(embs)), len(embs[0]))
    table = table.append_column("curate_image_emb", emb)
    db = lancedb.connect(str(root / "lancedb"))
    return {"table": db.create_table("pool", table), "crawl": crawl, "embs": np.stack(embs)}


@pytest.fixture()
def served(pool: dict[str, Any]) -> Iterator[tuple[str, Browser]]:
    browser = Browser(pool["table"], pool["crawl"], page_size=3)
    server = make_server(browser)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", browser
    finally:
        server.shutdown()
        server.server_close()


def test_binds_to_loopback_by_default(served: tuple[str, Browser]) -> None:
    assert served[0].startswith("http://127.0.0.1:")


def test_filters_and_paging(pool: dict[str, Any]) -> None:
    browser = Browser(pool["table"], pool["crawl"], page_size=3)
    first, more = browser.rows(decision="kept")
    second, more2 = browser.rows(decision="kept", page=2)
    assert more and not more2
    assert sorted(r["text"] for r in first + second) == sorted(f"a {c} square" for c in COLOURS[:4])
    dropped, _ = browser.rows(decision="dropped", reason="basic:too_few_words")
    assert [r["text"] for r in dropped] == ["a black square", "a white square"]
    assert browser.reasons() == ["basic:too_few_words", "dedup", "kept"]


def test_text_search_ranks_as_brute_force_cosine(pool: dict[str, Any]) -> None:
    """Code path (random model): the order equals numpy's cosine ranking of the same vectors."""
    browser = Browser(pool["table"], pool["crawl"], page_size=7)
    query = browser.encode("a red square")
    rows, _ = browser.rows(query="a red square")
    expected = np.argsort(-(pool["embs"] @ np.asarray(query)), kind="stable")
    assert [r["text"] for r in rows] == [f"a {COLOURS[i]} square" for i in expected]


def test_thumbnail_route_serves_the_shard_image(served: tuple[str, Browser]) -> None:
    url, _ = served
    uid = f"{0:024x}"
    with urllib.request.urlopen(f"{url}/thumb?uid={uid}&shard=shards/00000.tar") as resp:
        assert resp.headers["Content-Type"] == "image/jpeg"
        assert resp.read() == _png((220, 20, 20))
    with pytest.raises(urllib.error.HTTPError):  # outside the crawl folder: refused
        urllib.request.urlopen(f"{url}/thumb?uid={uid}&shard=../../etc/passwd")


def test_page_in_headless_chromium(
    served: tuple[str, Browser],
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("chromium is missing: `make setup` installs it (apt-get install chromium)")
    url = f"{served[0]}/?q=&decision=dropped&reason=&page=1"
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    base += ["--no-first-run", "--virtual-time-budget=10000", "--window-size=1200,800"]
    dom = subprocess.run(
        [*base, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=True
    ).stdout
    assert dom.count('class="card dropped"') == 3 and 'class="card kept"' not in dom, dom[-2000:]
    assert "a plain black picture" in dom and "black.jpg" in dom  # recaption, other texts
    assert dom.count("<img") == 3 and "/thumb?uid=" in dom
    assert 'id="next"' not in dom  # 3 dropped rows fit one page of 3
    out = Path(os.environ.get("TEST_ARTIFACTS_DIR") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "browse.png"
    subprocess.run(
        [*base, f"--screenshot={shot}", f"{served[0]}/"],
        check=True,
        timeout=180,
        capture_output=True,
    )
    assert shot.stat().st_size > 5_000
    with capsys.disabled():
        print(f"\nclipmill browse screenshot: {shot}")
