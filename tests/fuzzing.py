"""Hypothesis settings the fuzz suites share.

Reproducible in CI (derandomize), no example database in the repo, a generous per-example
deadline that still flags a pathological slowdown on a loaded 2-core box.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=5000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def fuzz(max_examples: int) -> settings:
    return settings(FUZZ, max_examples=max_examples)
