"""A trial: a seeded model from the zoo with a method applied, its optimizer and a batch (build.py),
measured (measure.py, compiled.py) in one of the three modes (mode.py). Uses instruments only."""
