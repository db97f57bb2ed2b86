"""Curation steps: each takes the rows that reached it and returns a keep mask with reasons."""
