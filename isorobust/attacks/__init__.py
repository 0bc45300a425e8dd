"""Attacks: the foolbox wrappers and their ε-ball bookkeeping (``base``), APGD (``apgd``), AutoAttack and
Square (``autoattack``), the paper's own FGSM (``paper``), and the ε sweep that runs them all (``sweep``)."""
