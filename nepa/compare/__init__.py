"""``nepa compare``: one recipe over a grid of config overrides and seeds, resumable, with a
table and plots (grid.py: the plan; runner.py: training and evaluation; report.py: outputs)."""
