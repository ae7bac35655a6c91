"""The sendonce benchmark harness: `python -m bench` (or `bench/run`, `make bench`)."""
