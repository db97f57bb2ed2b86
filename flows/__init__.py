"""Prefect flows: scheduling, retries and notifications around DVC; no stage logic lives here."""
