"""Captioner backends behind one interface (base.py); picked by name from params."""
