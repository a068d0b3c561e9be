"""Rows of each measurement: the registry (registry.py) names a producer per measurement; trials
on one device (single.py) or per rank (parallel.py, ranks.py, sharding.py), the largest batch
(trials.py, maxbatch.py), fidelity, attribution, convergence; the OOM rule (outcome.py)."""
