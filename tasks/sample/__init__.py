"""The `sample` stage: a sample web built from real Debian data (see stage.py, docs/CONTRACTS.md)."""
