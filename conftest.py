"""For every test, the chapters' too (nbval): the chapters' per-student exercises are stored
with the book's reader's numbers, and nbval compares them, so pin the reader: a JUPYTERHUB_USER
(a class's hub) or a PTSIM_STUDENT in the environment must not make them someone else's. The
kernels nbval starts inherit this environment (--nbval-current-env); tests that want another
student name one or monkeypatch. This file sits at the top so that `pytest notebooks/X.ipynb`
loads it too."""

import os

from ptsim.exercises import READER

os.environ["PTSIM_STUDENT"] = READER
