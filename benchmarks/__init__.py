"""Commands that measure or stress tokex; run them from the repository root (see
docs/benchmarks.md): `python -m benchmarks.fuzz`, `python -m benchmarks.load`,
`python benchmarks/exchange.py`."""
