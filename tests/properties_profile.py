"""Hypothesis settings shared by the property tests (test_properties_*.py), without a conftest.

Imported first by each property module, which registers and loads the profiles here:

- `ci` (the default, and what CI runs): derandomized, so every run tries the same examples and a
  failure is reproducible from the log alone; no example database on disk; no deadline (a loaded
  2-core machine must not fail a test for being slow once). The whole property suite stays well
  under a minute.
- `deep`: for a session of hunting by hand, random seeds, fifty times the examples, the database
  kept in .hypothesis/ (a test then runs for minutes: lift pytest's 60 s timeout)::

      HYPOTHESIS_PROFILE=deep pytest --timeout 0 -k test_properties_ tests

`examples(count)` is a test's settings: `count` examples under ci, fifty times as many under deep.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=(HealthCheck.too_slow,),
)
settings.register_profile(
    "deep",
    derandomize=False,
    deadline=None,
    print_blob=True,
    suppress_health_check=(HealthCheck.too_slow,),
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)

# How many times the ci profile's example counts a run tries (50 under `deep`).
SCALE = 50 if PROFILE == "deep" else 1


def examples(count: int) -> settings:
    """A test's settings: `count` examples under ci (scaled under `deep`), the loaded profile otherwise."""
    return settings(max_examples=count * SCALE)
