"""Model-free decontamination library: eval images seen as the pool stores images, their
perceptual hashes (whole view and crops), Hamming matching against them, and the planted-copy
quality metrics.

Two stages share it: `decontaminate` (hash-only, before any model trains) and curate's
`decontaminate` step (the same hashes plus an embedding gate). Nothing here loads a model.
"""
