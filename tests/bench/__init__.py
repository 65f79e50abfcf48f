"""Benchmarks: scripts that print figures, never assert (make bench)."""
