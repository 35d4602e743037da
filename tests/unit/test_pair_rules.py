import pytest

from tasks.pairs.rules import decide_pair


@pytest.mark.parametrize(
    "original_ok,improved_ok,expected",
    [
        (False, True, "chosen_improved"),
        (True, False, "chosen_original"),
        (True, True, "chosen_improved"),
        (False, False, "no_pair"),
        (None, True, "no_pair"),
        (True, None, "no_pair"),
    ],
)
def test_every_branch(original_ok, improved_ok, expected):
    decision, reason = decide_pair("An answer.", "A better answer.", original_ok, improved_ok)
    assert decision == expected
    assert reason


def test_identical_responses_never_pair_even_if_scores_differ():
    assert decide_pair("Same text.", "  same   TEXT. ", False, True)[0] == "no_pair"


def test_empty_response_never_pairs():
    assert decide_pair("", "Something.", False, True) == ("no_pair", "empty response")


def test_unicode_and_long_text():
    long = "é" * 100_000
    assert decide_pair(long, long + "!", False, True)[0] == "chosen_improved"
