"""Training objectives: what one optimizer step minimises (the hook between the loop and methods).

Kept import-free on purpose: `tasks.train.loop` imports `objectives.base`, and the objectives
import the loop's loss table, so importing the package must not pull either in.
"""
