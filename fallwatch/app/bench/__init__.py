"""Benchmarks: each area's ``run(quick, progress) -> dict`` lives in its own module here."""
