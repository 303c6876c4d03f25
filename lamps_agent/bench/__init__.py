"""Benchmarks: grids of (policy, predictor, qps) simulations, reports and plots."""
