"""Hydra glue: what a multirun needs beyond the jobs themselves.

``callback`` writes the sweep summary at the end of every ``isorobust train -m`` (through ``reports``),
``threads`` shares the cores among parallel jobs, ``resume`` skips finished jobs, ``objective`` is what an
optimizing sweeper maximises, ``resolvers`` the OmegaConf resolvers the configs use. Nothing here imports
torch or matplotlib at import time: the callback is loaded by every Hydra start.
"""
