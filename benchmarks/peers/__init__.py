"""Adapters that run other groups' registration methods on a ReMIND2Reg folder (for benchmarks)."""
