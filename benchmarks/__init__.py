"""Benchmarks: measured ratios (dense vs. compacted, LUMOS vs. peers), results in docs/results/."""
