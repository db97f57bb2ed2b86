"""Progress of long steps, readable in a terminal and in logs that are not one (DVC, Prefect, CI).

Ray Data's bars are off in non-interactive runs (tasks/raysession.py: they flood logs with
carriage-return redraws), and a step that embeds for twenty minutes then prints nothing at all.
`Progress` is counted on the driver (rows of the batches it iterates, steps the loop finishes)
and shows, on a terminal, a tqdm bar; elsewhere, plain lines at most every
`progress_interval_s` seconds (settings, CLIPMILL_PROGRESS_INTERVAL_S, 10 s by default):

    curate: embedding pool images 12,800/40,000 (32%), 85 rows/s, ETA 6 min

A step shorter than the interval prints nothing; a step that printed gets a last "done" line.
CLIPMILL_PROGRESS picks the display: auto (bar on a terminal, lines otherwise), bar, lines, off.
The rate is the average since the progress started (the total time a user waits for), so model
loading and actor start-up count against it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

MODES = ("auto", "bar", "lines", "off")


def format_duration(seconds: float) -> str:
    """45 s, 6 min, 1.5 h: as coarse as an ETA deserves."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_rate(rate: float) -> str:
    """Two significant figures for slow rates (1.7 steps/s), whole numbers for fast ones."""
    return f"{rate:.1f}" if rate < 10 else f"{rate:,.0f}"


def _settings() -> tuple[str, float]:
    from tasks.settings import get_settings

    s = get_settings()
    return s.progress, s.progress_interval_s


class Progress:
    """Counts units done (of `total` when known) and reports them; use as a context manager.

    `update(n, **info)` adds n units; `info` (loss=2.31) is shown after the rate. Lines go to
    `stream` (stderr by default), at most one per `interval_s`; the first only once `interval_s`
    has passed, so short steps stay quiet.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        unit: str = "rows",
        *,
        done: int = 0,
        interval_s: float | None = None,
        mode: str | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        default_mode, default_interval = (
            _settings() if mode is None or interval_s is None else ("", 0.0)
        )
        mode = mode or default_mode
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r}: expected one of {', '.join(MODES)}")
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.interval_s = default_interval if interval_s is None else interval_s
        self.clock = clock
        self.start_done = self.done = done
        self.started = self.last_line = clock()
        self.lines = 0
        self.info: dict[str, Any] = {}
        self.closed = False
        if mode == "auto":
            mode = "bar" if _isatty(self.stream) else "lines"
        self.mode = mode
        self.bar: Any = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=label, unit=unit, file=self.stream)

    def update(self, n: int = 1, **info: Any) -> None:
        self.done += n
        self.info.update(info)
        if self.bar is not None:
            self.bar.update(n)
            if info:
                self.bar.set_postfix(self.info, refresh=False)
            return
        finished = self.total is not None and self.done >= self.total  # close() says it
        now = self.clock()
        if self.mode == "lines" and not finished and now - self.last_line >= self.interval_s:
            self._write(self.line(now))
            self.last_line = now

    def rate(self, now: float | None = None) -> float:
        """Units per second since the start."""
        elapsed = (self.clock() if now is None else now) - self.started
        return (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0

    def line(self, now: float | None = None) -> str:
        """`label done/total (pct), rate unit/s, ETA ..., key value, ...`."""
        rate = self.rate(now)
        parts = [f"{self.label} {self.done:,}" + (f"/{self.total:,}" if self.total else "")]
        if self.total:
            parts[0] += f" ({self.done / self.total:.0%})"
        parts.append(f"{format_rate(rate)} {self.unit}/s")
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"ETA {format_duration((self.total - self.done) / rate)}")
        parts += [f"{k} {_show(v)}" for k, v in self.info.items()]
        return ", ".join(parts)

    def close(self) -> None:
        """A last line (with the time taken) when the step printed any or outlasted the interval."""
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
            return
        now = self.clock()
        took = now - self.started
        if self.mode == "lines" and (self.lines or took >= self.interval_s):
            self._write(f"{self.line(now)}; done in {format_duration(took)}")

    def _write(self, text: str) -> None:
        self.lines += 1
        print(text, file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or fake stream
        return False


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
