"""Measurements, each used in its own pass so that no tracker slows a timed pass."""
