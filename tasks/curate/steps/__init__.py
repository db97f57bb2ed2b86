"""Curation steps (`base.Step`): each declares its inputs and params section, returns a keep mask with reasons."""
