"""Benchmarks (not tests): `python benchmarks/run.py`."""
