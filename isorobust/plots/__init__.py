"""Figures of one run (frames in, PNG bytes out): the isometry maps (``isometry``)."""
