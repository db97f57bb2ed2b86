"""tasks/progress.py: plain, rate-limited progress lines where no terminal shows a bar (DVC,
Prefect, CI logs), with counts, percentage, rate and ETA; quiet for short steps."""

from __future__ import annotations

import io
import re

import pytest

from tasks.progress import Progress, format_duration


class Clock:
    """A hand-driven clock, so rate limits and rates are exact."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


def test_lines_carry_counts_percentage_rate_and_eta() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress(
        "curate: embedding pool images",
        total=40_000,
        interval_s=10,
        mode="lines",
        stream=out,
        clock=clock,
    )
    clock.now += 150
    p.update(12_800)  # 85.3 images/s over 150 s; 27,200 left -> 319 s
    assert _lines(out) == [
        "curate: embedding pool images 12,800/40,000 (32%), 85 rows/s, ETA 5 min"
    ]


def test_lines_are_rate_limited_and_a_done_line_closes_them() -> None:
    out, clock = io.StringIO(), Clock()
    with Progress(
        "train", total=100, unit="steps", interval_s=10, mode="lines", stream=out, clock=clock
    ) as p:
        for _ in range(100):  # one step every 0.5 s: 50 s in all
            clock.now += 0.5
            p.update(1, loss=2.0)
    lines = _lines(out)
    assert len(lines) == 5, lines  # at 10, 20, 30, 40 s; at 50 s the done line says it once
    assert lines[0] == "train 20/100 (20%), 2.0 steps/s, ETA 40 s, loss 2"
    assert re.fullmatch(r"train 100/100 \(100%\), 2\.0 steps/s, loss 2; done in 50 s", lines[-1])


def test_a_step_shorter_than_the_interval_prints_nothing() -> None:
    out, clock = io.StringIO(), Clock()
    with Progress(
        "evaluate: embedding images", total=64, interval_s=10, mode="lines", stream=out, clock=clock
    ) as p:
        for _ in range(8):
            clock.now += 0.5
            p.update(8)
    assert out.getvalue() == ""


def test_unknown_total_shows_count_and_rate_only() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress("crawl", unit="images", interval_s=0, mode="lines", stream=out, clock=clock)
    clock.now += 4
    p.update(2_000)
    assert _lines(out) == ["crawl 2,000, 500 images/s"]


def test_resumed_progress_counts_its_rate_from_where_it_resumed() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress(
        "teacher: training",
        total=300,
        unit="steps",
        done=200,
        interval_s=0,
        mode="lines",
        stream=out,
        clock=clock,
    )
    clock.now += 10
    p.update(20)
    assert _lines(out) == ["teacher: training 220/300 (73%), 2.0 steps/s, ETA 40 s"]


def test_auto_mode_draws_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    plain, tty = io.StringIO(), FakeTTY()
    assert Progress("x", total=3, mode="auto", interval_s=0, stream=plain).mode == "lines"
    with Progress("x", total=3, mode="auto", interval_s=0, stream=tty) as bar:
        bar.update(3)
    assert bar.mode == "bar" and "\r" in tty.getvalue() and "3/3" in tty.getvalue()


def test_off_prints_nothing_and_a_bad_mode_is_named() -> None:
    out = io.StringIO()
    with Progress("x", total=3, mode="off", interval_s=0, stream=out) as p:
        p.update(3)
    assert out.getvalue() == ""
    with pytest.raises(ValueError, match="'loud'"):
        Progress("x", mode="loud", interval_s=0)


def test_mode_and_interval_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.settings import get_settings

    monkeypatch.setenv("CLIPMILL_PROGRESS", "lines")
    monkeypatch.setenv("CLIPMILL_PROGRESS_INTERVAL_S", "0")
    get_settings.cache_clear()
    try:
        out = io.StringIO()
        p = Progress("x", total=10, stream=FakeTTY())
        assert p.mode == "lines" and p.interval_s == 0
        p = Progress("x", total=10, stream=out)
        p.update(5)
        assert _lines(out)[0].startswith("x 5/10 (50%)")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


@pytest.mark.parametrize(
    ("seconds", "text"), [(4.2, "4 s"), (89, "89 s"), (360, "6 min"), (5400, "1.5 h")]
)
def test_durations_are_coarse(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
