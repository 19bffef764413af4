"""Development helpers shared by the tests, the benchmark and the deploy scripts (not part of
the shipped ``service`` package)."""
