import math

import pytest

from tasks.validate.metrics import (
    json_valid,
    mean,
    mean_absolute_error,
    pearson,
    percentile,
    rouge_l,
    spearman,
)


def test_rouge_l_by_hand():
    # LCS("the cat sat on the mat", "the cat on the mat") = 5 tokens; P = 5/6, R = 5/5.
    value = rouge_l("the cat sat on the mat", "the cat on the mat")
    assert value == pytest.approx(2 * (5 / 6) * 1 / ((5 / 6) + 1))
    assert rouge_l("", "anything") == 0.0
    assert rouge_l("identical words", "identical words") == 1.0


def test_percentile_interpolates_like_numpy():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([1, 2, 3, 4], 95) == pytest.approx(3.85)
    assert percentile([7], 95) == 7
    assert math.isnan(percentile([], 50))


def test_correlations_by_hand():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))  # constant input: undefined, not an error
    assert math.isnan(spearman([1], [1]))


def test_mae_and_mean():
    assert mean_absolute_error([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0)
    assert mean([1.0, float("nan"), 3.0]) == 2.0
    assert math.isnan(mean([]))


def test_json_validity_with_schema():
    schema = {"type": "object", "properties": {"score": {"type": "number"}}, "required": ["score"]}
    assert json_valid('{"score": 0.5}', schema)
    assert not json_valid('{"score": "high"}', schema)
    assert not json_valid("[1, 2]")
    assert not json_valid("not json")
