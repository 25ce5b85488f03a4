"""Hypothesis profiles. By default every run plays the same examples (derandomized), so that
`make test` and CI agree; `HYPOTHESIS_PROFILE=explore make test` draws new ones each run.

The chapters' per-student exercises are stored with the book's reader's numbers, and nbval
compares them: pin the reader, so that a JUPYTERHUB_USER (a class's hub) or a PTSIM_STUDENT in
the environment does not make them someone else's. The kernels nbval starts inherit this
environment (--nbval-current-env); tests that want another student name one or monkeypatch."""

import os

from hypothesis import settings

settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

os.environ["PTSIM_STUDENT"] = "reader"
