"""The `decontaminate` stage: hash-only eval-set decontamination of the crawl, before any model
trains (tasks/decontaminate/stage.py)."""
