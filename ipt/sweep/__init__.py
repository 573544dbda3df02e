"""`ipt sweep`: one experiment over a grid of overrides, each point a run directory, one summary.

config.py holds the sweep file's schema, grid.py expands it into named points, plan.py
resolves and validates every point (and the pipeline stages it needs) before anything runs,
markers.py says which are done, run.py runs them (launch.py prints them as cluster jobs instead),
summary.py writes summary.csv/.md and the plot.
"""
