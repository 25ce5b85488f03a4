"""Hypothesis profiles. By default every run plays the same examples (derandomized), so that
`make test` and CI agree; `HYPOTHESIS_PROFILE=explore make test` draws new ones each run.
(The reader is pinned for every test, the chapters' too, in the conftest.py at the top.)"""

import os

from hypothesis import settings

settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

