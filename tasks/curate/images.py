"""Decode image bytes the way every curate step sees them (the library's decode_rgb; tar
reading: tasks.io.wds). Kept as a name curate modules import; the code lives in tasks.imaging."""

from __future__ import annotations

from tasks.imaging.rgb import decode_rgb

__all__ = ["decode_rgb"]
