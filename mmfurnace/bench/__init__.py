"""Profiling and benchmarks: per-stage timing, framework traces, FLOP counts, baselines.

Kept import-light on purpose: import the submodule you need (``mmfurnace.bench.profile``,
``.flops``, ``.regression``, ``.timing``, ``.runtimes``, ``.machine``).
"""
