"""Every reward term with tricky cases, the router, RLPR against a hand-computed example, the std
filter curriculum, reward-model standardisation and the group scorer."""

from __future__ import annotations

import math

import pytest

from minicpmv.rl import rewards
from minicpmv.rl.rewards import (
    RewardConfig, StdFilter, answer_kind, final_answer, format_reward, parse_choice, parse_number, parse_yes_no,
    repetition_penalty, reward_model_scores, rlpr_reward, route, score_group, split_answer, standardize, std_filter,
    token_f1, verify,
)

LONG_OK = "<think>\nThe numbers are 3 and 4. 3 + 4 = 7.\n</think>\n\n7"
SHORT_OK = "<think>\n\n</think>\n\n7"


@pytest.mark.parametrize("answer, reference", [
    ("1000", "1,000"), ("1,000", "1000"), ("1,000.5", "1000.50"), ("$1,234.5", "1234.5"), ("0.5", "1/2"),
    ("1/2", "0.5"), ("2/4", "0.5"), ("50%", "0.5"), ("0.5", "50%"), ("50", "50%"), ("5 kg", "5kg"), ("5", "5 kg"),
    ("12 centimeters", "12 cm"), ("3 hours", "3 h"), ("-2", "-2.0"), ("7.", "7"), ("0.33", "1/3"),
    ("The answer is 7.", "7"), ("so x = \\boxed{1/2}", "0.5"),
])
def test_numbers_that_match(answer, reference):
    assert answer_kind(reference) == "number"
    assert verify(answer, reference) == 1.0


@pytest.mark.parametrize("answer, reference", [
    ("5 g", "5 kg"), ("100", "1,000"), ("0", "0.4"), ("0.3", "1/3"), ("1,5", "1.5"), ("two", "2"), ("3 apples", "3"),
    ("", "7"), ("7 and 8", "7"),
])
def test_numbers_that_do_not_match(answer, reference):
    assert verify(answer, reference) == 0.0


def test_parse_number_reads_value_unit_and_decimals():
    assert parse_number("1,000") == rewards.Number(1000, "", 0)
    assert parse_number("50 %") == rewards.Number(50, "%", 0)
    assert parse_number("2.50 metres") == rewards.Number(rewards.Fraction(5, 2), "m", 2)
    assert parse_number("1,5") is None and parse_number("3 apples and 2 pears") is None and parse_number("1/0") is None


@pytest.mark.parametrize("answer, reference, expected", [
    ("B", "B", 1.0), ("(B) cat", "B", 1.0), ("B) cat", "(B)", 1.0), ("B.", "B", 1.0), ("The answer is (B).", "B", 1.0),
    ("Option C", "C", 1.0), ("A cat", "A", 0.0), ("C", "B", 0.0), ("(c)", "C", 0.0),
])
def test_multiple_choice_letters(answer, reference, expected):
    assert answer_kind(reference) == "choice"
    assert verify(answer, reference) == expected


def test_parse_choice_and_yes_no():
    assert parse_choice("(D) the dog") == "D" and parse_choice("A cat") is None
    assert parse_yes_no("Yes, it is.") == "yes" and parse_yes_no("No.") == "no" and parse_yes_no("Maybe") is None


@pytest.mark.parametrize("answer, reference, expected", [
    ("Yes", "yes", 1.0), ("yes, there is a cat.", "Yes.", 1.0), ("No", "yes", 0.0), ("Nope", "no", 0.0),
])
def test_yes_no(answer, reference, expected):
    assert answer_kind(reference) == "yesno"
    assert verify(answer, reference) == expected


@pytest.mark.parametrize("answer, reference, expected", [
    ("The Eiffel Tower.", "eiffel tower", 1.0), ("eiffel  tower!", "The Eiffel tower", 1.0),
    ("Louvre", "eiffel tower", 0.0), ("red car", "a red car", 1.0),
])
def test_short_strings_are_normalised(answer, reference, expected):
    assert answer_kind(reference) == "short"
    assert verify(answer, reference) == expected


def test_final_answer_picks_the_conclusion():
    assert final_answer("First 3. The answer is 4. Final answer: 5") == "5"
    assert final_answer("\\boxed{1} then \\boxed{2}") == "2"
    assert final_answer("Paris") == "Paris"


def test_router_sends_free_form_answers_to_rlpr_in_long_mode_only():
    free = "the cat sits on the red mat near the door"
    assert answer_kind(free) == "free" and route(free, "long") == "rlpr" and route(free, "short") == "overlap"
    for ref in ("7", "B", "yes", "Paris", "3 kg", "50%"):
        assert route(ref, "long") == route(ref, "short") == "rule"
    assert route("three blind mice", "long", short_words=2) == "rlpr"


def test_token_f1():
    assert token_f1("a red car", "the red bus") == pytest.approx(0.5)
    assert token_f1("red red", "red") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert token_f1("blue", "red") == 0.0


def test_rlpr_against_the_hand_computed_example():
    # reference tokens with p = 0.5, 0.9 after the reasoning -> 0.7; without reasoning 0.4, 0.6 -> 0.5
    with_reasoning, without = [math.log(0.5), math.log(0.9)], [math.log(0.4), math.log(0.6)]
    assert rewards.mean_token_prob(with_reasoning) == pytest.approx(0.7)
    assert rlpr_reward(with_reasoning, without) == pytest.approx(0.2)
    assert rlpr_reward(without, with_reasoning) == 0.0  # clipped at 0, never negative
    assert rlpr_reward([0.0], [-1e9]) == 1.0
    with pytest.raises(ValueError, match="empty"):
        rewards.mean_token_prob([])


def test_std_filter_keeps_groups_above_beta_times_the_ema():
    assert std_filter([0.0, 0.1, 0.3], 0.4, 0.5) == [False, False, True]
    assert std_filter([0.0], None, 0.5) == [True]
    f = StdFilter(beta=0.5, ratio=0.5, start=1)
    assert f.keep([0.2, 0.6]) == [True, True] and f.ema == pytest.approx(0.4)  # first batch starts the EMA
    assert f.keep([0.1, 0.3]) == [False, True] and f.ema == pytest.approx(0.5 * 0.4 + 0.5 * 0.2)
    g = StdFilter()
    g.load_state_dict(f.state_dict())
    assert (g.ema, g.seen) == (f.ema, f.seen)


@pytest.mark.parametrize("text, mode, expected", [
    (LONG_OK, "long", 0.0),
    ("<think>\n3 + 4 = 7", "long", -1.0),  # never closed
    ("<think>\n\n</think>\n\n7", "long", -1.0),  # long mode must reason
    ("<think>\nhm\n</think>\n\n", "long", -1.0),  # no answer
    ("<think>\nhm\n</think>\n\n7 <think>again</think> 7", "long", -1.0),  # a second block
    ("x <think>\nhm\n</think>\n\n7", "long", -1.0),  # text before the block
    (SHORT_OK, "short", 0.0),
    ("<think>\n\n</think>\n\nThe sum is 7.", "short", 0.0),
    ("<think>\nhm\n</think>\n\n7", "short", -1.0),  # short mode must not reason
    ("<think>\n\n</think>\n\n<think>\n7", "short", -1.0),
    ("<think>\n\n</think>\n\n", "short", -1.0),
])
def test_format_reward_per_mode(text, mode, expected):
    assert format_reward(text, mode) == expected


def test_format_reward_rejects_unknown_modes():
    with pytest.raises(ValueError, match="mode"):
        format_reward(SHORT_OK, "medium")


def test_repetition_penalty_counts_repeated_word_windows():
    assert repetition_penalty("go on go on go on", window=2, max_repeats=3) == -1.0
    assert repetition_penalty("go on go on", window=2, max_repeats=3) == 0.0
    assert repetition_penalty("a_b a_b a_b", window=1, max_repeats=3) == -1.0  # underscores split words: a b a b a b
    looping = " ".join(["the same ten words keep on coming back again and again"] * 6)
    assert repetition_penalty(looping) == -1.0 and repetition_penalty(LONG_OK) == 0.0


def test_standardize_within_a_group():
    assert standardize([1.0, 2.0, 3.0]) == pytest.approx([-1.0, 0.0, 1.0])
    assert standardize([5.0, 5.0]) == [0.0, 0.0] and standardize([4.0]) == [0.0]


def test_reward_model_sees_answers_without_thinking():
    seen = {}

    def rm(questions, answers):
        seen["q"], seen["a"] = list(questions), list(answers)
        return [len(a) for a in answers]

    assert reward_model_scores(rm, "Q?", [LONG_OK, SHORT_OK, "<think>\nx\n</think>\n\nlonger"]) == [1.0, 1.0, 6.0]
    assert seen == {"q": ["Q?"] * 3, "a": ["7", "7", "longer"]}
    with pytest.raises(ValueError, match="2 scores for 1"):
        reward_model_scores(lambda q, a: [0.0, 1.0], "Q?", [SHORT_OK])


def test_split_answer():
    assert split_answer(LONG_OK) == ("The numbers are 3 and 4. 3 + 4 = 7.", "7")
    assert split_answer("<think>\nunfinished") == ("unfinished", "")


def test_score_group_combines_the_terms():
    texts = [LONG_OK, "<think>\nwrong\n</think>\n\n8", "<think>\nno answer", LONG_OK + " " + "x y " * 12]
    parts = score_group(texts, "long", "7", RewardConfig(repetition_window=2, repetition_limit=6),
                        rm_scores=[1.0, 2.0, 3.0, 4.0])
    assert [p.accuracy for p in parts] == [1.0, 0.0, 0.0, 0.0]  # the 4th answer is '7 x y x y ...'
    assert [p.format for p in parts] == [0.0, 0.0, -1.0, 0.0]
    assert [p.repetition for p in parts] == [0.0, 0.0, 0.0, -1.0]
    rm = standardize([1.0, 2.0, 3.0, 4.0])
    assert [p.total for p in parts] == pytest.approx([1 + 0.5 * rm[0], 0.5 * rm[1], -1 + 0.5 * rm[2], -1 + 0.5 * rm[3]])
    assert [p.correct for p in parts] == [True, False, False, False]


def test_score_group_routes_free_form_references():
    ref = "a small brown dog sleeps under the wooden table"
    texts = ["<think>\nlook\n</think>\n\na dog sleeps", "<think>\nlook\n</think>\n\nnothing"]
    parts = score_group(texts, "long", ref, rlpr_scores=[0.3, 0.0])
    assert [p.accuracy for p in parts] == [0.3, 0.0] and {p.route for p in parts} == {"rlpr"}
    with pytest.raises(ValueError, match="RLPR score"):
        score_group(texts, "long", ref)
    short = score_group(["<think>\n\n</think>\n\na small dog"], "short", ref)
    assert short[0].route == "overlap" and short[0].accuracy == pytest.approx(token_f1("a small dog", ref))
