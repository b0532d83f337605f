"""VQA answer normalisation and accuracy; every expected value is worked out by hand in the comments."""

import pytest

from llavakit.eval.vqa_metrics import (
    digits_and_articles,
    evalai_process,
    gqa_clean,
    normalize_answer,
    strip_punctuation,
    textvqa_accuracy,
    vqa_accuracy,
)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("yes.", "yes"),  # a period not followed by a digit is removed
        ("Yes.", "yes"),  # ... and processDigitArticle lower-cases
        ("1,000", "1000"),  # a digit,digit group: every listed mark is deleted, not spaced
        ("3.5", "3.5"),  # a period followed by a digit stays
        ("The dog", "dog"),  # articles go
        ("a cat and an owl", "cat and owl"),
        ("two", "2"),  # number words zero..ten become digits
        ("none", "0"),  # "none" counts as zero
        ("ten", "10"),
        ("eleven", "eleven"),  # only up to ten
        ("dont", "don't"),  # contractions table
        ("isnt", "isn't"),
        ("Im", "im"),  # the table's "Im" key can never match after lower-casing
        ("somebody'd", "somebodyd"),  # the table's reversed entry
        ("black-and-white", "black and white"),  # a mark without a space next to it becomes a space
        ("t - shirt", "t shirt"),  # a mark next to a space is deleted; split/join collapses spaces
        ("hello!!!", "hello"),
        ("it's", "it's"),  # apostrophes are not punctuation here
        ("Mr. Smith", "mr smith"),
        ("a/b", "b"),  # "/" -> space, then "a" is an article
        ("  red\n", "red"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_period_regex_removes_at_most_32_periods():
    # re.UNICODE (= 32) is passed as sub()'s count in vqaEval.py: 40 periods -> 8 left.
    assert strip_punctuation("." * 40) == "." * 8


def test_comma_group_deletes_other_marks_too():
    # "1,000-2,000": the digit,digit search matches, so "-" is deleted rather than turned into a space.
    assert strip_punctuation("1,000-2,000") == "10002000"
    assert strip_punctuation("a-b, c") == "a b c"  # ", " -> "," deleted; "-" has no space -> space


def test_digits_and_articles_maps_words_before_dropping_articles():
    assert digits_and_articles("The Two Dogs") == "2 dogs"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Yes.", "yes"),
        ("Dog's bowl?", "dog 's bowl"),  # "?" deleted, possessive split off
        ("1,000", "1000"),  # commas deleted up front
        ("Two", "2"),
        ("The Eiffel Tower.", "eiffel tower"),
        ("Coca-Cola", "coca cola"),
    ],
)
def test_evalai_process(raw, expected):
    assert evalai_process(raw) == expected


# Ten human answers: black x4, "black and white" x3, gray x2, grey x1 (VQAv2 fixture question 42000).
COLOURS = ["black"] * 4 + ["black and white"] * 3 + ["gray"] * 2 + ["grey"]


def test_vqa_accuracy_full_credit_with_three_matches_left():
    # Leaving out one of the 4 "black": 3 others match -> 1; leaving out another answer: 4 -> 1. Mean 1.0
    assert vqa_accuracy("black", COLOURS) == pytest.approx(1.0)


def test_vqa_accuracy_three_humans():
    # 3 humans said it. Left-out is one of them (3 of 10 subsets): 2 match -> 2/3; otherwise 3 -> 1.
    # (3 * 2/3 + 7 * 1) / 10 = 0.9
    assert vqa_accuracy("black and white", COLOURS) == pytest.approx(0.9)


def test_vqa_accuracy_two_humans():
    # 2 humans: (2 * 1/3 + 8 * 2/3) / 10 = 0.6; "grey" is a different string and does not help.
    assert vqa_accuracy("gray", COLOURS) == pytest.approx(0.6)


def test_vqa_accuracy_one_human():
    # 1 human: left out -> 0 (1 subset); else 1/3 (9 subsets) -> 9/3/10 = 0.3
    assert vqa_accuracy("cat", ["cat"] + ["dog"] * 9) == pytest.approx(0.3)


def test_vqa_accuracy_normalises_both_sides_when_humans_disagree():
    # "two" -> "2": the answers become "2" x8 and "3" x2, so "Two" gets full credit.
    assert vqa_accuracy("Two", ["2"] * 6 + ["two"] * 2 + ["3"] * 2) == pytest.approx(1.0)
    assert vqa_accuracy("three", ["2"] * 6 + ["two"] * 2 + ["3"] * 2) == pytest.approx(0.6)


def test_vqa_accuracy_does_not_normalise_unanimous_answers():
    # All ten say "no": vqaEval skips normalisation, so only the exact (whitespace-stripped) string scores.
    unanimous = ["no"] * 10
    assert vqa_accuracy("no", unanimous) == 1.0
    assert vqa_accuracy(" no\n", unanimous) == 1.0
    assert vqa_accuracy("No", unanimous) == 0.0
    assert vqa_accuracy("no.", unanimous) == 0.0
    # ... which is why LLaVA runs the EvalAI processor on what it uploads:
    assert vqa_accuracy(evalai_process("No."), unanimous) == 1.0


def test_vqa_accuracy_empty_answers():
    assert vqa_accuracy("x", []) == 0.0


def test_textvqa_accuracy_normalises_everything():
    # Both sides through the EvalAI processor: "Coca-Cola" == "coca-cola" -> "coca cola". Ten match -> 1.0
    assert textvqa_accuracy("Coca-Cola", ["coca-cola"] * 10) == 1.0
    assert vqa_accuracy("Coca-Cola", ["coca-cola"] * 10) == 0.0  # the VQA server would not
    # "1000" x5, "1,000" x3 -> "1000" x8; "one thousand" x2 -> "1 thousand" x2.
    answers = ["1000"] * 5 + ["1,000"] * 3 + ["one thousand"] * 2
    assert textvqa_accuracy("1,000", answers) == pytest.approx(1.0)
    assert textvqa_accuracy("One thousand", answers) == pytest.approx(0.6)


def test_gqa_clean():
    assert gqa_clean("Traffic light..") == "traffic light"
    assert gqa_clean("Yes") == "yes"
    assert gqa_clean("3.5") == "3.5"
