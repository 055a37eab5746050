"""Benchmarks that print figures, each a module run from the checkout: ``python -m benchmarks.<name> --help``.
Each prints ratios against a baseline measured in the same run; none asserts a time."""
