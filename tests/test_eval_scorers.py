"""Scorers and prompt builders of minicpmv.eval on hand-made cases (every expected value worked out by hand)."""

from __future__ import annotations

import random

import pytest
from PIL import Image

from minicpmv.errors import InputError
from minicpmv.eval import scorers
from minicpmv.eval.prompts import (BENCHMARKS, MCQ_COT, SHORT_ANSWER_COT, UPSIZE_MAX_PIXELS, VQA_INSTRUCTION, Prompt,
                                   build_mcq_prompt, build_video_mcq_prompt, build_vqa_prompt, build_yes_no_prompt,
                                   official_settings, resolve_benchmark, row_rng, upsize_image)

ANIMALS = {"A": "cat", "B": "dog", "C": "red", "D": "dark red"}


# ---- multiple choice ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("B", "B"),
    ("(C)", "C"),
    ("C.", "C"),
    ("B) dog", "B"),
    ("The answer is D.", "D"),
    ("Answer: B", "B"),
    ("the best answer is (C)", "C"),
    ("I'd go with option B here.", "B"),
    ("\\boxed{C}", "C"),
    ("A. cat", "A"),
    ("A", "A"),
    ("(A) is right", "A"),
])
def test_extract_choice_letters(text, expected):
    assert scorers.extract_choice(text, ANIMALS) == expected


@pytest.mark.parametrize("text, expected", [
    ("A dog.", "B"),                       # 'A' is the article: falls to the option text
    ("It is a dog", "B"),                  # lower-case 'a' is never a letter
    ("dark red", "D"),                     # 'red' lies inside 'dark red': only the outer one counts
    ("Dark Red!", "D"),                    # case ignored
    ("A is wrong, B is wrong, so D", None),  # several letters and no statement: undecidable
    ("B or C", None),
    ("no idea", None),
    ("", None),
    ("Let me think: A looks odd, C too.\nAnswer: B", "B"),  # the statement wins over stray letters
    ("Answer: A\nwait, no. Answer: C", "C"),                # the last statement wins
    ("The answer is E", None),             # E is not an option, nothing else decides
    ("cat or dog", None),                  # two option texts
])
def test_extract_choice_tricky(text, expected):
    assert scorers.extract_choice(text, ANIMALS) == expected


def test_extract_choice_respects_the_option_set():
    two = {"A": "yes", "B": "no"}
    assert scorers.extract_choice("C", two) is None
    assert scorers.extract_choice("I say no", two) == "B"


# ---- yes / no, final answer ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("Yes", "Yes"), ("yes.", "Yes"), ("No, it is not.", "No"), ("NO", "No"),
    ("Yes and no", "Unknown"), ("I cannot tell", "Unknown"), ("Nope", "Unknown"), ("", "Unknown"),
    ("Probably no... Answer: Yes", "Yes"), ("Yes, the bar is higher? Answer: no", "No"),
])
def test_normalize_yes_no(text, expected):
    assert scorers.normalize_yes_no(text) == expected


def test_final_answer():
    assert scorers.final_answer("The bars add up.\nAnswer: 42\n") == "42"
    assert scorers.final_answer("answer: x\nANSWER:  y ") == "y"
    assert scorers.final_answer("  Paris ") == "Paris"


# ---- normalisation and VQA accuracy -------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    (" The Two dogs.\n", "2 dogs"), ("dont know", "don't know"), ("None", "0"), ("1,000 cars.", "1000 cars"),
    ("red/blue", "red blue"), ("3.5", "3.5"), ("an apple", "apple"), ("yes, it is", "yes it is"),
])
def test_normalize_vqa_answer(text, expected):
    assert scorers.normalize_vqa_answer(text) == expected


def test_vqa_accuracy_ten_annotators():
    # Dropping one of the 2 'two' leaves 1 match (1/3); dropping one of the 8 '3' leaves 2 (2/3).
    assert scorers.vqa_accuracy("2", ["two"] * 2 + ["3"] * 8) == pytest.approx((2 / 3 + 16 / 3) / 10)
    # 4 matches: every leave-one-out subset keeps >= 3.
    assert scorers.vqa_accuracy("Two", ["2"] * 4 + ["3"] * 6) == pytest.approx(1.0)
    # 3 matches: 3 subsets keep 2 (2/3), 7 keep 3 (1).
    assert scorers.vqa_accuracy("cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx((3 * 2 / 3 + 7) / 10)
    assert scorers.vqa_accuracy("bird", ["cat"] * 10) == 0.0


def test_vqa_accuracy_single_reference_is_exact_match():
    assert scorers.vqa_accuracy("The cat.", ["cat"]) == 1.0
    assert scorers.vqa_accuracy("cats", ["cat"]) == 0.0
    with pytest.raises(ValueError):
        scorers.vqa_accuracy("x", [])


# ---- ANLS and relaxed accuracy ------------------------------------------------------------------------------

def test_levenshtein():
    assert scorers.levenshtein("kitten", "sitting") == 3
    assert scorers.levenshtein("", "abc") == 3
    assert scorers.levenshtein("same", "same") == 0


@pytest.mark.parametrize("prediction, answers, expected", [
    ("Smith", ["smith"], 1.0),
    ("smlth", ["smith"], 0.8),            # 1 edit in 5
    ("sm", ["smith"], 0.0),               # NL 0.6 >= 0.5
    ("smi", ["smith"], 0.6),              # 2 edits in 5: NL 0.4 < 0.5
    ("1990", ["1989", "1990"], 1.0),      # best reference
    ("  New   York ", ["new york"], 1.0),  # whitespace collapsed, case ignored
    ("ab", ["abcd"], 0.0),                # NL 0.5 is not below the threshold
    ("", [""], 1.0),
])
def test_anls(prediction, answers, expected):
    assert scorers.anls(prediction, answers) == pytest.approx(expected)


@pytest.mark.parametrize("prediction, answers, expected", [
    ("10.4", ["10"], 1.0), ("10.6", ["10"], 0.0), ("9.5", ["10"], 1.0), ("45%", ["0.46"], 1.0),
    ("Yes", ["yes"], 1.0), ("0", ["0"], 1.0), ("0.01", ["0"], 0.0), ("twelve", ["12"], 0.0),
    ("-5.1", ["-5"], 1.0), (" 7 ", ["3", "7"], 1.0),
])
def test_relaxed_accuracy(prediction, answers, expected):
    assert scorers.relaxed_accuracy(prediction, answers) == expected


# ---- OCRBench ------------------------------------------------------------------------------------------------

def test_ocrbench_hit():
    assert scorers.ocrbench_hit("The sign says STOP here", ["stop"], "Regular Text Recognition")
    assert scorers.ocrbench_hit("line one\nline two", ["one line"], "Doc-oriented VQA")
    assert not scorers.ocrbench_hit("go", ["stop", "halt"], "Scene Text-centric VQA")
    assert scorers.ocrbench_hit("x^2 + 1", ["x^{2}+1", "x^2+1"], scorers.HME)
    assert not scorers.ocrbench_hit("X^2+1", ["x^2+1"], scorers.HME)  # case counts for formulas


def test_ocrbench_summary_counts_points():
    hits = [("Regular Text Recognition", True), ("Artistic Text Recognition", True), ("Digit String Recognition", False),
            ("Doc-oriented VQA", True), ("Doc-oriented VQA", False), ("Key Information Extraction", False),
            (scorers.HME, True), ("Something Else", True)]
    summary = scorers.ocrbench_summary(hits)
    assert summary["Text Recognition"] == 2
    assert summary["Scene Text-centric VQA"] == 0
    assert summary["Doc-oriented VQA"] == 1
    assert summary["Key Information Extraction"] == 0
    assert summary[scorers.HME] == 1
    assert summary["Something Else"] == 1
    assert summary["Final Score"] == 5
    assert summary["Final Score Norm"] == pytest.approx(100 * 5 / 8)


# ---- aggregates ----------------------------------------------------------------------------------------------

def test_accuracy_by_and_all_correct_rate():
    out = scorers.accuracy_by([("short", 1), ("short", 0), ("long", 1)])
    assert list(out) == ["long", "short", "Overall"]
    assert out == {"long": 100.0, "short": 50.0, "Overall": pytest.approx(200 / 3)}
    assert scorers.all_correct_rate([(1, True), (1, False), (2, True)]) == 50.0
    assert scorers.all_correct_rate([]) == 0.0


def test_hallusion_summary():
    H = scorers.HallusionItem
    items = [
        H("VD", "math", "0", "0", "0", True), H("VD", "math", "0", "0", "1", False),   # figure 0: q0 right, q1 wrong
        H("VD", "math", "0", "1", "0", True), H("VD", "math", "0", "1", "1", True),    # figure 1: both right
        H("VS", "chart", "0", "0", "0", False),                                         # another subcategory
    ]
    out = scorers.hallusion_summary(items)
    assert out["aAcc"] == pytest.approx(100 * 3 / 5)
    # figures: (math,0,0) no, (math,0,1) yes, (chart,0,0) no
    assert out["fAcc"] == pytest.approx(100 / 3)
    # questions: (math,0,q0) yes, (math,0,q1) no, (chart,0,q0) no
    assert out["qAcc"] == pytest.approx(100 / 3)
    assert out["Overall"] == pytest.approx((60 + 100 / 3 + 100 / 3) / 3)
    assert out["VD aAcc"] == 75.0 and out["VD fAcc"] == 50.0 and out["VD qAcc"] == 50.0
    assert out["VS aAcc"] == 0.0


# ---- prompts and settings ------------------------------------------------------------------------------------

def test_mcq_prompts_follow_the_reference_wording():
    direct = build_mcq_prompt("Which animal?", {"A": "cat", "B": "dog"}, hint="It barks.")
    assert direct == Prompt("", "Hint: It barks.\nQuestion: Which animal?\nOptions:\nA. cat\nB. dog\n\n"
                                "Answer with the option's letter from the given choices directly.")
    cot = build_mcq_prompt("Which animal?", {"A": "cat", "B": "dog"}, cot=True)
    assert cot.text == MCQ_COT + "Which animal?\nA. cat\nB. dog\n"
    assert build_mcq_prompt("How many?", {}, cot=True).text == SHORT_ANSWER_COT + "How many?\n"
    assert build_mcq_prompt("How many?", {}).instruction.startswith("Carefully read")


def test_other_prompts():
    assert build_yes_no_prompt("Is it red?", suffix=" Yes or No?").text == "Is it red? Yes or No?"
    assert build_yes_no_prompt("Is it red?", cot=True).text == SHORT_ANSWER_COT + "Is it red?"
    assert build_vqa_prompt("What is written?") == Prompt(VQA_INSTRUCTION, "What is written?")
    assert build_vqa_prompt("What is written?", cot=True, ocrbench=True).text.startswith("Carefully observe the image")
    video = build_video_mcq_prompt("Which way?", {"A": "left", "B": "right", "C": "up", "D": "down"})
    assert video.text == ("Select the best answer to the following multiple-choice question based on the video. "
                          "Respond with only the letter (A, B, C, or D) of the correct option.\nWhich way?\n"
                          "A. left\nB. right\nC. up\nD. down\nThe best answer is:")
    subs = build_video_mcq_prompt("Which way?", {"A": "left", "B": "right"}, subtitles="hello")
    assert subs.text.startswith("This video's subtitles are listed below: \nhello\nSelect the best answer")
    assert "(A or B)" in subs.text and "based on the video and the subtitles" in subs.text
    empty = build_video_mcq_prompt("Which way?", {"A": "left", "B": "right"}, subtitles="")
    assert "No subtitles available" in empty.text


def test_resolve_benchmark():
    assert resolve_benchmark("mmstar").name == "MMStar"
    assert resolve_benchmark("MMBench_DEV_EN_V11").name == "MMBench"
    assert resolve_benchmark("Video-MME").name == "VideoMME"
    assert resolve_benchmark("AI2D_TEST").name == "AI2D"
    with pytest.raises(InputError, match="unknown benchmark 'Nope'"):
        resolve_benchmark("Nope")


def test_official_settings():
    mmstar = official_settings(BENCHMARKS["MMStar"])
    assert mmstar.thinking and mmstar.cot_prompt and mmstar.upsize and mmstar.think_prefill == "I"
    assert mmstar.sampling.temperature == 0.7 and mmstar.sampling.max_new_tokens == 8192
    off = official_settings(BENCHMARKS["MMStar"], "off")
    assert not off.thinking and off.cot_prompt and off.think_prefill == ""
    assert (off.sampling.num_beams, off.sampling.repetition_penalty, off.sampling.max_new_tokens) == (3, 1.2, 2048)
    ai2d = official_settings(BENCHMARKS["AI2D"], max_new_tokens=5, num_beams=1)
    assert not ai2d.thinking and not ai2d.cot_prompt and ai2d.upsize
    assert (ai2d.sampling.max_new_tokens, ai2d.sampling.num_beams) == (5, 1)
    assert official_settings(BENCHMARKS["DocVQA"]).sampling.max_new_tokens == 1024
    assert official_settings(BENCHMARKS["VideoMME"], subtitles=True).subtitles
    with pytest.raises(InputError, match="--subtitles applies to video"):
        official_settings(BENCHMARKS["AI2D"], subtitles=True)
    with pytest.raises(InputError, match="think must be"):
        official_settings(BENCHMARKS["AI2D"], "maybe")
    with pytest.raises(InputError, match="num_beams"):
        official_settings(BENCHMARKS["MMStar"], num_beams=3)


def test_upsize_image():
    small = Image.new("RGB", (448, 336))
    sizes = set()
    for k in range(20):
        out = upsize_image(small, row_rng(0, str(k)))
        w, h = out.size
        assert 448 <= w <= 1551 and h == int(w / 448 * 336) and w * h <= UPSIZE_MAX_PIXELS
        sizes.add(out.size)
    assert len(sizes) > 1  # it is random...
    assert upsize_image(small, row_rng(0, "7")).size == upsize_image(small, row_rng(0, "7")).size  # ...but per-row fixed
    big = Image.new("RGB", (1344, 1344))
    assert upsize_image(big, random.Random(0)) is big
