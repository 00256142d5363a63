"""Benchmarks: search quality and speed, side by side with other tools (see bench/README.md)."""
