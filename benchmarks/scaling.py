"""`alignray bench scaling`: our DPO with 1 vs 2 workers on the same global batch and workload as
`alignray bench dpo` (same options; the measurement code lives in benchmarks/dpo.py)."""

from benchmarks.dpo import scaling_main as main

__all__ = ["main"]
