"""Benchmarks: the paper's metrics on QA data sets, and speed against plain baselines."""
