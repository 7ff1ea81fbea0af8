"""Benchmark harness for asyncapp: real processes, pinned CPUs, medians over runs.

Run ``python -m bench --help`` from the repository root; see ``bench/README.md``.
"""
