"""Measurement engine, in layers that import downwards only (tests/test_layers.py):
instruments/ (what measures) <- trial/ (a model, optimizer and batch in a mode) <- producers/
(each measurement's rows) <- runner, worker, cli, tables."""
