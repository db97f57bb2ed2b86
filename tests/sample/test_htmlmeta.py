"""HTML -> WAT HTML-Metadata in Common Crawl's shape."""

from __future__ import annotations

from tasks.sample.htmlmeta import html_metadata

PAGE = """<html><head><title> A  page </title><meta name="keywords" content="k">
<link rel="stylesheet" href="s.css"><script src="a.js"></script></head>
<body><a href="/x.html" title="t">Go <b>there</b></a>
<img src="i.png" alt="a cat" title="cute"><img src="n.png"><img src="e.png" alt="">
<a href="http://h/y"><img src="../z.jpg" alt="z"></a></body></html>"""


def test_links_are_recorded_as_common_crawl_does():
    meta = html_metadata(PAGE)
    assert meta["Head"]["Title"] == "A page"
    assert meta["Head"]["Metas"] == [{"name": "keywords", "content": "k"}]
    assert meta["Head"]["Link"] == [{"path": "LINK@/href", "url": "s.css", "rel": "stylesheet"}]
    assert meta["Head"]["Scripts"] == [{"path": "SCRIPT@/src", "url": "a.js"}]
    assert meta["Links"] == [
        {"path": "A@/href", "url": "/x.html", "title": "t", "text": "Go there"},
        {"path": "IMG@/src", "url": "i.png", "alt": "a cat", "title": "cute"},
        {"path": "IMG@/src", "url": "n.png"},
        {"path": "IMG@/src", "url": "e.png", "alt": ""},
        {"path": "A@/href", "url": "http://h/y"},
        {"path": "IMG@/src", "url": "../z.jpg", "alt": "z"},
    ]
