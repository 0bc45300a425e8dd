"""Sweeps: find the run directories of one or more sweeps, aggregate them over seeds, plot and report.

``aggregate`` holds the pure functions (runs in, tables out), ``plot`` the figure, ``report`` writes
summary.csv / summary.md / robustness.png / robustness.pdf, ``callback`` does that at the end of every
``isorobust train -m``, ``threads`` shares the cores among parallel jobs, ``resume`` skips finished jobs.
Nothing here imports torch or matplotlib at import time: the callback is loaded by every Hydra start.
"""
