"""Measurement engine: job spec, model zoo, memory/throughput/fidelity trials, runner, CLI."""
