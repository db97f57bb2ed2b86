"""The merge stage: model soups, task arithmetic, TIES, DARE, WiSE-FT and OPCM on open_clip folders."""
