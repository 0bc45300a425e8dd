"""Measurements of a trained model that are not attacks: clean accuracy and losses (``clean``), the isometry
of its hidden layers (``isometry``, ``regions``) and per-level accuracy of hierarchical networks
(``hierarchy``). They return numbers and frames; the jobs write them."""
