"""Benchmark scoring as pure functions: answer extraction, per-question scores, per-benchmark aggregates.

Each function follows the convention the published numbers were computed with (VLMEvalKit's exact-matching
path, no GPT judge; ecosystem spec §3a), written here from the definitions, with a worked example in its
docstring. Per-question functions return floats in [0, 1]; aggregates return percentages (0..100) except
OCRBench, which counts points.

    extract_choice       free text -> option letter or None        (MCQ, Video-MME)
    normalize_yes_no     free text -> 'Yes' | 'No' | 'Unknown'      (HallusionBench, MME-style sets)
    final_answer         'reasoning ... Answer: 42' -> '42'          (short-CoT prompts)
    vqa_accuracy         min(#matching annotators / 3, 1), averaged over the 10 leave-one-out subsets
    anls                 1 - normalised Levenshtein distance, 0 under the 0.5 threshold
    relaxed_accuracy     numbers within 5 % (ChartQA), exact text otherwise
    ocrbench_hit / ocrbench_summary, hallusion_summary, accuracy_by
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Hashable, Iterable, Mapping, Sequence

# ---- answer extraction -------------------------------------------------------------------------------------

# "Answer: B", "the answer is (C)", "best option is D", "answer: option A", "\boxed{B}"; letter upper-case only
# so that "the answer is a cat" does not read as option A.
_STATEMENT = re.compile(r"(?i:\b(?:answer|option))\s*(?:(?i:is)\s*)?(?:[:=]\s*)?(?:(?i:option)\s*)?"
                        r"[(\[]?([A-Z])(?![A-Za-z0-9])")
_BOXED = re.compile(r"\\boxed\{\s*\(?([A-Z])\)?\s*\}")
_LETTER_PUNCT = str.maketrans({c: " " for c in ".()[],:;!*#{}"})  # VLMEvalKit can_infer_option's list
_LONE_A = re.compile(r"(?<![A-Za-z0-9])A(?![A-Za-z0-9])")
_ARTICLE_A = re.compile(r"(?<![A-Za-z0-9])A(?=\s+[a-z])")
_ANSWER_MARK = re.compile(r"(?i)\banswer\s*:")


def final_answer(text: str) -> str:
    """The text after the last 'Answer:' (any case), stripped; the whole text, stripped, when there is none.

    Short-CoT prompts ask for 'the final answer in the format of "Answer: ..."' (VLMEvalKit MiniCPM-V 4.5
    `extract_answer`). Example: 'The bars add up.\\nAnswer: 42\\n' -> '42'; 'Paris' -> 'Paris'.
    """
    marks = list(_ANSWER_MARK.finditer(text))
    return text[marks[-1].end():].strip() if marks else text.strip()


def extract_choice(text: str, options: Mapping[str, str]) -> str | None:
    """The option letter a free-text reply chooses, or None when it cannot be told.

    options: {'A': 'cat', 'B': 'dog', ...}. Rules, first that decides wins:
      1. An explicit statement, the last one whose letter is an option: 'Answer: B', 'The answer is (C).',
         'best option is D', '\\boxed{B}'.
      2. Letter tokens (VLMEvalKit `can_infer_option`): the characters . ( ) [ ] , : ; ! * # { } become
         spaces and the text is split on whitespace; exactly one distinct option letter among the tokens
         decides ('B', '(B)', 'B.', 'B) dog'). An 'A' read as the article ('A dog is ...': 'A' then a
         lower-case word) is not a letter here, a fix over VLMEvalKit, which would answer A.
      3. Option text (VLMEvalKit `can_infer_text`): exactly one option's text occurs in the reply, case
         ignored; an option whose text only occurs inside another matching option's text does not count
         ('dark red' matches 'dark red', not 'red').
      4. Otherwise None: could not extract (scored as wrong, reported as unparsed).

    Examples with {'A': 'cat', 'B': 'dog', 'C': 'red', 'D': 'dark red'}: 'B' -> 'B'; '(C)' -> 'C';
    'The answer is D.' -> 'D'; 'A dog.' -> 'B' (rule 3); 'It is a dog' -> 'B'; 'dark red' -> 'D';
    'B or C' -> None; 'no idea' -> None.
    """
    letters = [k for k in options if len(k) == 1 and k.isupper()]
    statements = sorted((m.start(), m.group(1)) for p in (_STATEMENT, _BOXED) for m in p.finditer(text)
                        if m.group(1) in letters)
    if statements:
        return statements[-1][1]
    tokens = set(text.translate(_LETTER_PUNCT).split())
    chosen = [k for k in letters if k in tokens]
    if "A" in chosen and len(_LONE_A.findall(text)) == len(_ARTICLE_A.findall(text)):
        chosen.remove("A")  # every standalone 'A' is the article
    if len(chosen) == 1:
        return chosen[0]
    if len(chosen) > 1:
        return None
    return _choice_by_text(text, options)


def _choice_by_text(text: str, options: Mapping[str, str]) -> str | None:
    """Rule 3 of `extract_choice`: the one option whose text occurs in `text` (case ignored)."""
    low = text.lower()
    hits = {k: str(v).strip().lower() for k, v in options.items() if str(v).strip() and str(v).strip().lower() in low}
    outer = [k for k, v in hits.items() if not any(v != w and v in w for w in hits.values())]
    return outer[0] if len(outer) == 1 else None


# ---- normalisation (the VQA evaluation's, as VLMEvalKit applies it to every answer) --------------------------

_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")  # a full stop not followed by a digit ('3.5' keeps its point)
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# Apostrophe-less spellings -> the VQA evaluation's canonical form (the common entries of its table).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "lets": "let's",
    "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "shant": "shan't", "shed": "she'd",
    "shes": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "thats": "that's", "thered": "there'd",
    "theres": "there's", "theyd": "they'd", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "wasnt": "wasn't", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've",
    "wouldnt": "wouldn't", "yall": "y'all", "youd": "you'd", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}


def strip_punctuation(text: str) -> str:
    """The VQA evaluation's punctuation step.

    Each mark of its list is deleted when it touches a space or when the text holds a number with a
    thousands comma, and replaced by a space otherwise; then full stops not followed by a digit go.
    Example: 'yes, it is' -> 'yes it is'; '1,000 cars.' -> '1000 cars'; 'red/blue' -> 'red blue';
    '3.5' -> '3.5'.
    """
    out = text
    number_comma = _COMMA_IN_NUMBER.search(text) is not None
    for p in _PUNCT:
        out = out.replace(p, "" if (p + " " in text or " " + p in text or number_comma) else " ")
    return _PERIOD.sub("", out)


def normalize_vqa_answer(text: str) -> str:
    """Answer normalisation of the VQA evaluation: whitespace, punctuation, number words, articles,
    contractions. Example: ' The Two dogs.\\n' -> '2 dogs'; 'dont know' -> "don't know"; 'None' -> '0'."""
    text = strip_punctuation(text.replace("\n", " ").replace("\t", " ").strip())
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_yes_no(text: str) -> str:
    """'Yes', 'No' or 'Unknown' for a free-text reply (VLMEvalKit `YOrN_Extraction`, after `final_answer`).

    The reply is lower-cased, its punctuation stripped (`strip_punctuation`) and split into words: 'yes'
    without 'no' is Yes, 'no' without 'yes' is No, anything else Unknown. A short-CoT reply is judged on
    what follows its last 'Answer:'. Examples: 'Yes.' -> 'Yes'; 'No, it is not.' -> 'No';
    'Yes and no' -> 'Unknown'; 'I cannot tell' -> 'Unknown'; 'no... Answer: Yes' -> 'Yes';
    'Nope' -> 'Unknown'.
    """
    words = strip_punctuation(final_answer(text).lower()).split()
    if "yes" in words and "no" not in words:
        return "Yes"
    if "no" in words and "yes" not in words:
        return "No"
    return "Unknown"


# ---- per-question scores --------------------------------------------------------------------------------------


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy: min(#annotators who gave the prediction / 3, 1), averaged over leaving each annotator out.

    Both sides go through `normalize_vqa_answer`. With 10 answers, each of the 10 subsets of 9 scores
    min(matches / 3, 1). Example: prediction '2' with answers ['two']*2 + ['3']*8: dropping a 'two' leaves
    1 match (1/3), dropping a '3' leaves 2 (2/3) -> (2 * 1/3 + 8 * 2/3) / 10 = 0.6. With ['two']*4 + ...
    every subset has >= 3 matches -> 1.0. A single reference answer (no annotator pool) scores 1.0 on a
    match (min(1/3 * 3, 1) is not meaningful there, so exact normalised match is used).
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    pred = normalize_vqa_answer(prediction)
    gts = [normalize_vqa_answer(a) for a in answers]
    if len(gts) == 1:
        return float(pred == gts[0])
    scores = []
    for i in range(len(gts)):
        matches = sum(1 for j, g in enumerate(gts) if j != i and g == pred)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions cost 1). Example: ('kitten', 'sitting') -> 3."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity of one question (DocVQA, InfoVQA; ST-VQA definition).

    Each side is lower-cased with runs of whitespace collapsed; NL = distance / max(len) (0 for two empty
    strings); the score is max over reference answers of 1 - NL when NL < threshold, else 0.
    Examples: ('Smith', ['smith']) -> 1.0; ('smlth', ['smith']) -> 0.8 (one edit in 5);
    ('sm', ['smith']) -> 0.0 (NL 0.6); ('1990', ['1989', '1990']) -> 1.0.
    """
    if not answers:
        raise ValueError("anls needs at least one reference answer")
    pred = " ".join(prediction.strip().lower().split())
    best = 0.0
    for answer in answers:
        gt = " ".join(str(answer).strip().lower().split())
        longest = max(len(gt), len(pred))
        nl = levenshtein(gt, pred) / longest if longest else 0.0
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


def _to_number(text: str) -> float | None:
    """'12.5' -> 12.5; '40%' -> 0.4; '1,000' -> None (as ChartQA's evaluation: plain float() only)."""
    text = text.strip()
    try:
        return float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_accuracy(prediction: str, answers: Sequence[str], tolerance: float = 0.05) -> float:
    """ChartQA relaxed accuracy: 1.0 if the prediction matches any reference answer, else 0.0.

    A match is numeric when both parse as numbers ('%' means /100) and the reference is non-zero:
    |pred - ref| / |ref| <= tolerance; otherwise case-insensitive exact text. Examples:
    ('10.4', ['10']) -> 1.0 (4 %); ('10.6', ['10']) -> 0.0 (6 %); ('45%', ['0.46']) -> 1.0;
    ('Yes', ['yes']) -> 1.0; ('0', ['0']) -> 1.0 (text); ('0.01', ['0']) -> 0.0.
    """
    pred = prediction.strip()
    for answer in answers:
        ref = str(answer).strip()
        p, r = _to_number(pred), _to_number(ref)
        if p is not None and r:
            if abs(p - r) / abs(r) <= tolerance:
                return 1.0
        elif pred.lower() == ref.lower():
            return 1.0
    return 0.0


# ---- OCRBench --------------------------------------------------------------------------------------------------

HME = "Handwritten Mathematical Expression Recognition"
# OCRBench's five reported groups; the first sums six recognition categories.
OCRBENCH_GROUPS: dict[str, tuple[str, ...]] = {
    "Text Recognition": ("Regular Text Recognition", "Irregular Text Recognition", "Artistic Text Recognition",
                         "Handwriting Recognition", "Digit String Recognition", "Non-Semantic Text Recognition"),
    "Scene Text-centric VQA": ("Scene Text-centric VQA",),
    "Doc-oriented VQA": ("Doc-oriented VQA",),
    "Key Information Extraction": ("Key Information Extraction",),
    HME: (HME,),
}


def ocrbench_hit(prediction: str, answers: Sequence[str], category: str) -> bool:
    """Whether any reference answer occurs inside the prediction (OCRBench's rule).

    Case and newlines are ignored (newline -> space, then stripped), except for handwritten mathematical
    expressions, which are compared case-sensitively with every space removed. Examples:
    ('The sign says STOP here', ['stop'], 'Regular Text Recognition') -> True;
    ('x^2 + 1', ['x^{2}+1', 'x^2+1'], HME) -> True; ('X^2+1', ['x^2+1'], HME) -> False.
    """
    if category == HME:
        pred = prediction.strip().replace("\n", " ").replace(" ", "")
        return any(a.strip().replace("\n", " ").replace(" ", "") in pred for a in answers)
    pred = prediction.lower().strip().replace("\n", " ")
    return any(a.lower().strip().replace("\n", " ") in pred for a in answers)


def ocrbench_summary(hits: Iterable[tuple[str, bool]]) -> dict[str, float]:
    """Points per OCRBench group, 'Final Score' (their sum: one point per question, 1000 on the full set)
    and 'Final Score Norm' (100 * score / questions, = score / 10 on the full set: the published 89.0).

    Categories outside OCRBench's list are counted in the total under their own name. Example:
    [('Regular Text Recognition', True), ('Doc-oriented VQA', True), ('Doc-oriented VQA', False),
    ('Key Information Extraction', False)] -> Text Recognition 1, Scene Text-centric VQA 0, Doc-oriented
    VQA 1, Key Information Extraction 0, HME 0, Final Score 2, Final Score Norm 50.0.
    """
    per_category: dict[str, int] = defaultdict(int)
    n = 0
    for category, hit in hits:
        per_category[category] += int(hit)
        n += 1
    out: dict[str, float] = {group: float(sum(per_category[c] for c in members))
                             for group, members in OCRBENCH_GROUPS.items()}
    known = {c for members in OCRBENCH_GROUPS.values() for c in members}
    out.update({c: float(v) for c, v in sorted(per_category.items()) if c not in known})
    total = float(sum(per_category.values()))
    out["Final Score"] = total
    out["Final Score Norm"] = 100.0 * total / n if n else 0.0
    return out


# ---- aggregates -----------------------------------------------------------------------------------------------


def accuracy_by(items: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Mean score (in %) per group label, then 'Overall' over all items, groups sorted by name.

    Example: [('short', 1), ('short', 0), ('long', 1)] -> {'long': 100.0, 'short': 50.0, 'Overall': 66.67}.
    """
    groups: dict[str, list[float]] = defaultdict(list)
    everything: list[float] = []
    for label, score in items:
        groups[label].append(score)
        everything.append(score)
    out = {label: 100.0 * sum(v) / len(v) for label, v in sorted(groups.items())}
    out["Overall"] = 100.0 * sum(everything) / len(everything) if everything else 0.0
    return out


def all_correct_rate(items: Iterable[tuple[Hashable, bool]]) -> float:
    """Share (in %) of groups whose items are all correct. Example: [(1, True), (1, False), (2, True)] -> 50.0."""
    groups: dict[Hashable, bool] = {}
    for key, correct in items:
        groups[key] = groups.get(key, True) and bool(correct)
    return 100.0 * sum(groups.values()) / len(groups) if groups else 0.0


@dataclass(frozen=True)
class HallusionItem:
    """One scored HallusionBench question: its grouping keys and whether the Yes/No answer was right."""

    category: str  # VD (visual dependent) / VS (visual supplement)
    subcategory: str  # the TSV's l2-category
    set_id: str
    figure_id: str
    question_id: str
    correct: bool


def hallusion_summary(items: Sequence[HallusionItem]) -> dict[str, float]:
    """HallusionBench's three accuracies (in %) as VLMEvalKit reports them, overall and per category.

    aAcc: share of questions answered right. fAcc: share of figures (subcategory, set, figure) whose
    questions are all right. qAcc: share of questions (subcategory, set, question) right on every figure
    variant. 'Overall' = their mean (OpenCompass's HallusionBench number). Example: questions q0, q1 on
    figure 0 and q0 on figure 1 of one set, right / wrong / right -> aAcc 66.7, fAcc 50.0 (figure 1 only),
    qAcc 50.0 (q0 only), Overall 55.6.
    """
    def three(rows: Sequence[HallusionItem]) -> tuple[float, float, float]:
        a = 100.0 * sum(r.correct for r in rows) / len(rows) if rows else 0.0
        f = all_correct_rate(((r.subcategory, r.set_id, r.figure_id), r.correct) for r in rows)
        q = all_correct_rate(((r.subcategory, r.set_id, r.question_id), r.correct) for r in rows)
        return a, f, q

    a, f, q = three(items)
    out = {"aAcc": a, "fAcc": f, "qAcc": q, "Overall": (a + f + q) / 3}
    for category in sorted({r.category for r in items}):
        ca, cf, cq = three([r for r in items if r.category == category])
        out.update({f"{category} aAcc": ca, f"{category} fAcc": cf, f"{category} qAcc": cq})
    return out
