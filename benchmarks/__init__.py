"""Commands that measure or stress tokex; run them from the repository root (see
docs/performance.md): `python -m benchmarks` (the figures against the AWS floor),
`python -m benchmarks.fuzz`, `python -m benchmarks.load`, `python benchmarks/exchange.py`."""
