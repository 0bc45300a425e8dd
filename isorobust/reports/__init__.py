"""Reports from run directories: a sweep's summary (``sweep``), a study over several sweeps (``study``),
a sensitivity study (``sensitivity``), a run's own robustness.md (``run``), over the pure table functions
of ``aggregate`` and ``tables`` and the figures of ``figures``. Nothing here imports torch."""
