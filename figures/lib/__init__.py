"""Shared figure helpers that are not trained models (closed-form benchmarks, data loaders); no OUTPUTS."""
