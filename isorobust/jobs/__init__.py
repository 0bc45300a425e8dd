"""The commands' jobs: ``train`` (train -> evaluate -> attack -> check [-> certify]) and the jobs on a
saved model (``attack``, ``check``, ``certify``), plus ``figure``. Each job runs one configuration pass
(``build``), calls the measuring code below it, and writes its results through ``rundir``."""
