"""curate stage: MetaCLIP matching/balancing, DataComp filters, dedup, decontamination over the pool."""
