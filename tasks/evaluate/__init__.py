"""The `evaluate` stage: zero-shot, retrieval, probe, PerceptionCLIP, robustness, membership audit."""
