"""Performance tooling: benchmarks (`bench`, `bench_train`, `bench_compare`) and the pre-flight
(`aot`, with TPU slice data in `chips`).

These sit above the core (models, diffusion, train, cascade) and are never imported by it.
"""
