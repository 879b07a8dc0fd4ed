"""sendonce."""
