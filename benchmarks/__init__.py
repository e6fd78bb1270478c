"""Benchmarks of rdescent against SGD and Adam: a shared runner and one module per study.

Run `python -m benchmarks list` for the studies; see docs/benchmarks.md.
"""
