"""Experiments that are not part of the installed library (run from the repository root)."""
