"""The one quantile (dagent.stats): the standard library's, at any q, for any sample."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagent.stats import quantile

samples = st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=80)


@given(samples)
def test_the_median_is_statistics_median(values: list[float]) -> None:
    assert quantile(values, 0.5) == pytest.approx(statistics.median(values) if values else 0.0, rel=1e-12)


@given(samples, st.floats(0, 1), st.floats(0, 1))
def test_a_quantile_lies_in_the_sample_and_grows_with_q(values: list[float], a: float, b: float) -> None:
    low, high = sorted((a, b))
    if values:
        slack = 1e-9 * max(values)  # interpolation rounds in the last digit
        assert min(values) - slack <= quantile(values, low) <= quantile(values, high) + slack <= max(values) + 2 * slack
    else:
        assert quantile(values, low) == 0.0


def test_a_few_by_hand() -> None:
    assert quantile([1, 2, 3, 4], 0.5) == 2.5 and quantile([5], 0.9) == 5 and quantile(range(10), 0.9) == 8.1
