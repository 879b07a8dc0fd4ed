"""Torture runs of the real system (``sendonce dev chaos``); excluded from the default run."""
