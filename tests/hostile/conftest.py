"""Hostile-corpus fixtures: every case is recorded in the reliability log (tests/hostile/recording.py)."""

from tests.hostile.recording import pytest_runtest_makereport  # noqa: F401 - a pytest hook
