"""RL rewards (training spec §5.4-5.5), one pure function each, combined as

    R = R_acc + R_format + R_rep + 0.5 * R̃_rm

R_acc     rule verifier (`verify`: numbers with units / thousands separators / fractions / percentages,
          multiple-choice letters, yes/no, short strings) or the RLPR probability reward
          (`rlpr_reward`), picked per sample by `route` from the form of the reference answer.
R_format  `format_reward`: 0 when the assistant text has the structure of its mode, else -1.
R_rep     `repetition_penalty`: -1 when a window of words repeats too often, else 0.
R̃_rm      an optional reward model's score of the answer part, standardised within the group
          (`standardize`).

Format and repetition are penalties (0 or -1) so that a perfect response scores R = 1; GRPO
normalises rewards within a group, so only differences between the samples of a prompt matter.

All texts here are *assistant texts*: the template prefill of the mode (`<think>\\n` for long mode,
the empty block `<think>\\n\\n</think>\\n\\n` for short mode) followed by the generated response.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence

MODES = ("long", "short")
THINK_START, THINK_END = "<think>", "</think>"

# A reward model scores (question, answer) pairs; the answer has its thinking removed (spec §5.4).
RewardModel = Callable[[Sequence[str], Sequence[str]], Sequence[float]]

_UNIT_ALIASES = {
    "%": "%", "percent": "%", "percentage": "%", "°": "°", "deg": "°", "degree": "°",
    "m": "m", "meter": "m", "metre": "m", "cm": "cm", "centimeter": "cm", "centimetre": "cm",
    "mm": "mm", "millimeter": "mm", "km": "km", "kilometer": "km", "kg": "kg", "kilogram": "kg",
    "g": "g", "gram": "g", "s": "s", "sec": "s", "second": "s", "min": "min", "minute": "min",
    "h": "h", "hr": "h", "hour": "h", "l": "l", "liter": "l", "litre": "l", "ml": "ml",
}
_NUMBER = r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:\s*/\s*\d+(?:\.\d+)?)?"
_NUMBER_RE = re.compile(rf"^(?P<cur>[$€£¥])?\s*(?P<num>{_NUMBER})\s*(?P<unit>[^\d\s].*?)?$")
_CHOICE_RE = re.compile(r"^(?:\((?P<a>[A-Z])\)|(?P<b>[A-Z])(?:[.):]|$))")
_CHOICE_PHRASE_RE = re.compile(r"\b(?i:answer|option|choice)\s*(?:is|:)?\s*\(?(?P<c>[A-Z])\b\)?")
_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")
_ANSWER_IS_RE = re.compile(r"answer\s*(?:is|:)\s*", re.I)
_ARTICLES = {"a", "an", "the"}


# ---- parsing answers --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Number:
    """A parsed numeric answer: exact value, its unit ('' if none) and its written decimals."""

    value: Fraction
    unit: str
    decimals: int


def parse_number(text: str) -> Number | None:
    """A number with an optional currency sign, thousands separators, fraction, percent or unit.

    Examples: '1,000' -> 1000; '$1,234.5' -> 1234.5; '1/2' -> 1/2; '50%' -> 50 '%'; '3 kg.' -> 3 'kg';
    '12 centimeters' -> 12 'cm'; '1,5' -> None (not a thousands group); 'two' -> None.
    """
    match = _NUMBER_RE.match(text.strip().rstrip("."))
    if match is None:
        return None
    written = match["num"].replace(",", "").replace(" ", "")
    num, _, den = written.partition("/")
    try:
        value = Fraction(num) / (Fraction(den) if den else 1)
    except (ValueError, ZeroDivisionError):
        return None
    unit = (match["unit"] or "").strip().lower().rstrip(".")
    if unit and unit not in _UNIT_ALIASES:
        unit = unit[:-1] if unit.endswith("s") and unit[:-1] in _UNIT_ALIASES else unit
    if unit and unit not in _UNIT_ALIASES:
        return None  # '3 apples and 2 pears' is not a number with a unit
    decimals = len(num.partition(".")[2]) if not den else 0
    return Number(value, _UNIT_ALIASES.get(unit, ""), decimals)


def parse_choice(text: str) -> str | None:
    """The option letter of a multiple-choice answer: 'B', '(B) cat', 'B.', 'B) cat', 'The answer is (B)'.

    'A cat' -> None: a capital followed by a word is a sentence, not an option.
    """
    text = text.strip()
    match = _CHOICE_RE.match(text)
    if match:
        return match["a"] or match["b"]
    match = _CHOICE_PHRASE_RE.search(text)
    return match["c"] if match else None


def parse_yes_no(text: str) -> str | None:
    """'yes' / 'no' from the first word: 'Yes, it is.' -> 'yes'; 'No.' -> 'no'; 'Maybe' -> None."""
    words = normalize_text(text).split()
    return words[0] if words and words[0] in ("yes", "no") else None


def normalize_text(text: str) -> str:
    """Lower case, punctuation removed, articles dropped, spaces collapsed: 'The Red  car!' -> 'red car'."""
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def final_answer(answer: str) -> str:
    """The conclusion of an answer: the last \\boxed{...}, else what follows 'the answer is', else all of it.

    'So the sum is 7. The answer is 7.' -> '7.'; 'x = \\boxed{1/2}' -> '1/2'; 'Paris' -> 'Paris'.
    """
    boxed = _BOXED_RE.findall(answer)
    if boxed:
        return boxed[-1].strip()
    said = list(_ANSWER_IS_RE.finditer(answer))
    return answer[said[-1].end():].strip() if said else answer.strip()


# ---- R_acc: rule verifier, router ------------------------------------------------------------------------
def answer_kind(reference: str, short_words: int = 3) -> str:
    """'choice' | 'yesno' | 'number' | 'short' (<= short_words words) | 'free' (everything else)."""
    ref = reference.strip()
    if re.fullmatch(r"\(?[A-Z]\)?\.?", ref):
        return "choice"
    if normalize_text(ref) in ("yes", "no"):
        return "yesno"
    if parse_number(ref) is not None:
        return "number"
    return "short" if len(normalize_text(ref).split()) <= short_words else "free"


def route(reference: str, mode: str, short_words: int = 3) -> str:
    """'rule' or 'rlpr': the rule verifier for answers of a few tokens, RLPR for free-form ones.

    RLPR needs reasoning to score: in short mode the response has none, so the score with and
    without reasoning is the same for every sample (zero advantage); free-form answers in short
    mode therefore go to 'overlap' (token F1 with the reference) instead.
    """
    if answer_kind(reference, short_words) != "free":
        return "rule"
    return "rlpr" if mode == "long" else "overlap"


def numbers_match(answer: Number, reference: Number) -> bool:
    """Equal values; units must agree when both are written; a percentage may also be given as a
    fraction of 1; an answer with d >= 2 decimals matches the reference rounded to d decimals.

    Examples: 0.5 vs 1/2 yes; 50% vs 0.5 yes; 3 kg vs 3 yes; 3 kg vs 3 g no; 0.33 vs 1/3 yes; 0 vs 0.4 no.
    """
    if answer.unit and reference.unit and answer.unit != reference.unit:
        return False
    candidates = [reference.value]
    if "%" in (answer.unit, reference.unit) and answer.unit != reference.unit:
        candidates.append(reference.value / 100 if reference.unit == "%" else reference.value * 100)
    for ref in candidates:
        if answer.value == ref:
            return True
        if answer.decimals >= 2 and abs(answer.value - ref) <= Fraction(1, 2 * 10**answer.decimals):
            return True
    return False


def verify(answer: str, reference: str, short_words: int = 3) -> float:
    """Rule verifier: 1.0 when the final answer matches the reference in the reference's form, else 0.0.

    Examples: ('1000', '1,000') 1; ('(B) cat', 'B') 1; ('1/2', '0.5') 1; ('5 kg', '5kg') 1; ('5 g', '5 kg') 0;
    ('Yes, it is.', 'yes') 1; ('The Eiffel tower', 'eiffel tower') 1.
    """
    given = final_answer(answer)
    kind = answer_kind(reference, short_words)
    if kind == "choice":
        return float(parse_choice(given) == parse_choice(reference))
    if kind == "yesno":
        return float(parse_yes_no(given) == normalize_text(reference))
    if kind == "number":
        number = parse_number(given)
        return float(number is not None and numbers_match(number, parse_number(reference)))
    return float(normalize_text(given) == normalize_text(reference))


def token_f1(answer: str, reference: str) -> float:
    """F1 of the normalised word multisets: ('a red car', 'the red bus') -> P 1/2, R 1/2 -> 0.5."""
    a, r = normalize_text(answer).split(), normalize_text(reference).split()
    common = sum(min(a.count(w), r.count(w)) for w in set(a))
    if not common:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


# ---- R_acc: RLPR -----------------------------------------------------------------------------------------
def mean_token_prob(logprobs: Sequence[float]) -> float:
    """Mean of exp(log p) over the reference tokens (RLPR prefers it to the product: less variance)."""
    if not logprobs:
        raise ValueError("RLPR needs at least one reference token; the reference answer is empty")
    return sum(math.exp(lp) for lp in logprobs) / len(logprobs)


def rlpr_reward(with_reasoning: Sequence[float], without_reasoning: Sequence[float]) -> float:
    """RLPR probability reward r̂ = clip(r - r', 0, 1) (RLPR §3; `threshold_0` shaping).

    r:  mean token probability of the reference answer y* teacher-forced after the model's reasoning z;
    r': the same with no reasoning (the debiasing baseline, cached once per prompt and reference).
    Worked example: y* has two tokens with p = 0.5, 0.9 after z -> r = 0.7; without z p = 0.4, 0.6
    -> r' = 0.5; r̂ = 0.2. Reasoning that makes y* less likely than no reasoning scores 0, not < 0.
    """
    return min(1.0, max(0.0, mean_token_prob(with_reasoning) - mean_token_prob(without_reasoning)))


def ema_update(ema: float | None, value: float, ratio: float) -> float:
    """Exponential moving average: the first value starts it; then ratio * ema + (1 - ratio) * value."""
    return value if ema is None else ratio * ema + (1 - ratio) * value


def std_filter(group_stds: Sequence[float], ema_std: float | None, beta: float) -> list[bool]:
    """RLPR curriculum: keep a prompt group iff its reward std >= beta * EMA(mean group std).

    Example: stds [0.0, 0.1, 0.3], EMA 0.4, beta 0.5 -> threshold 0.2 -> [False, False, True].
    Before the EMA exists every group is kept.
    """
    if ema_std is None:
        return [True] * len(group_stds)
    return [s >= beta * ema_std for s in group_stds]


@dataclass
class StdFilter:
    """The EMA std filter with its state: `keep(stds)` filters (from step `start` on), then updates
    the EMA with this batch's mean group std. Defaults are RLPR's (beta 0.5, EMA ratio 0.99)."""

    beta: float = 0.5
    ratio: float = 0.99
    start: int = 6  # batches seen before filtering begins (RLPR starts around step 6-11)
    ema: float | None = None
    seen: int = 0

    def keep(self, group_stds: Sequence[float]) -> list[bool]:
        mask = std_filter(group_stds, self.ema, self.beta) if self.seen >= self.start else [True] * len(group_stds)
        self.ema = ema_update(self.ema, sum(group_stds) / max(len(group_stds), 1), self.ratio)
        self.seen += 1
        return mask

    def state_dict(self) -> dict:
        return {"ema": self.ema, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.ema, self.seen = state["ema"], state["seen"]


# ---- R_format, R_rep, R_rm ------------------------------------------------------------------------------
def split_answer(assistant_text: str) -> tuple[str, str]:
    """(reasoning, answer): the text inside the think block and the text after it (stripped);
    without a closed block, everything is reasoning and the answer is ''."""
    head, marker, answer = assistant_text.partition(THINK_END)
    if not marker:
        return assistant_text.replace(THINK_START, "").strip(), ""
    return head.replace(THINK_START, "").strip(), answer.strip()


def format_reward(assistant_text: str, mode: str) -> float:
    """0.0 when the text has its mode's structure, else -1.0.

    long:  exactly one `<think>` and one `</think>`, in that order, non-empty reasoning inside, then a
           non-empty answer: '<think>\\n3 + 4 = 7\\n</think>\\n\\n7' -> 0.0; '<think>\\n3 + 4' -> -1.0.
    short: exactly one think block, empty, then a non-empty answer: '<think>\\n\\n</think>\\n\\n7' -> 0.0;
           '<think>\\n\\n</think>\\n\\n<think>' -> -1.0.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}; use one of {MODES}")
    if assistant_text.count(THINK_START) != 1 or assistant_text.count(THINK_END) != 1:
        return -1.0
    before, _, answer = assistant_text.partition(THINK_END)
    if before.strip() and not before.lstrip().startswith(THINK_START):
        return -1.0  # text before the think block
    reasoning = before.strip()[len(THINK_START):].strip()
    ok = bool(answer.strip()) and (bool(reasoning) if mode == "long" else not reasoning)
    return 0.0 if ok else -1.0


def repetition_penalty(text: str, window: int = 10, max_repeats: int = 6) -> float:
    """-1.0 when some window of `window` consecutive words occurs >= max_repeats times, else 0.0.

    Words are split on whitespace and underscores (RLPR `repetition.py`). Example with window 2,
    max_repeats 3: 'go on go on go on' has 'go on' 3 times -> -1.0; 'go on go on' -> 0.0.
    """
    words = re.split(r"[\s_]+", text.strip())
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - window + 1):
        key = tuple(words[i:i + window])
        counts[key] = counts.get(key, 0) + 1
        if counts[key] >= max_repeats:
            return -1.0
    return 0.0


def standardize(scores: Sequence[float], eps: float = 1e-6) -> list[float]:
    """(x - mean) / std within a group (sample std, n - 1); all zeros when std < eps or n < 2.

    Example: [1, 2, 3] -> mean 2, std 1 -> [-1, 0, 1]; [5, 5] -> [0, 0].
    """
    n = len(scores)
    if n < 2:
        return [0.0] * n
    mean = sum(scores) / n
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1))
    return [0.0] * n if std < eps else [(s - mean) / std for s in scores]


def reward_model_scores(rm: RewardModel, question: str, assistant_texts: Sequence[str]) -> list[float]:
    """Raw RM scores of a group, computed on the answer part only (the thinking is stripped first:
    long chains of thought are out of distribution for reward models, spec §5.4)."""
    answers = [split_answer(t)[1] for t in assistant_texts]
    scores = [float(s) for s in rm([question] * len(answers), answers)]
    if len(scores) != len(answers):
        raise ValueError(f"the reward model returned {len(scores)} scores for {len(answers)} answers")
    return scores


# ---- combining ------------------------------------------------------------------------------------------
@dataclass
class RewardParts:
    """The terms of one sample's reward and their total R = acc + format + rep + rm_weight * rm."""

    accuracy: float
    format: float
    repetition: float
    rm: float = 0.0  # standardised within the group
    rm_weight: float = 0.5
    route: str = "rule"
    correct: bool = False  # the rule verifier accepted the answer (False when scored by RLPR / overlap)

    @property
    def total(self) -> float:
        return self.accuracy + self.format + self.repetition + self.rm_weight * self.rm


@dataclass(frozen=True)
class RewardConfig:
    """Knobs of `score_group` (spec §5.4 weights; RLPR repetition settings)."""

    short_words: int = 3  # references of at most this many words are checked by rule
    repetition_window: int = 10
    repetition_limit: int = 6
    rm_weight: float = 0.5


def score_group(
    assistant_texts: Sequence[str],
    mode: str,
    reference: str,
    cfg: RewardConfig = RewardConfig(),
    rlpr_scores: Sequence[float] | None = None,
    rm_scores: Sequence[float] | None = None,
) -> list[RewardParts]:
    """The rewards of one prompt's group (all samples in `mode`), routed by the reference's form.

    rlpr_scores: RLPR r̂ per sample, required when `route(reference, mode)` is 'rlpr'.
    rm_scores:   raw reward-model scores per sample (of the answer part), or None for no RM term.
    """
    how = route(reference, mode, cfg.short_words)
    if how == "rlpr" and (rlpr_scores is None or len(rlpr_scores) != len(assistant_texts)):
        raise ValueError(f"reference {reference!r:.60} is free-form: pass one RLPR score per sample "
                         f"({len(assistant_texts)}), got {None if rlpr_scores is None else len(rlpr_scores)}")
    rm = standardize(rm_scores) if rm_scores is not None else [0.0] * len(assistant_texts)
    parts = []
    for i, text in enumerate(assistant_texts):
        answer = split_answer(text)[1]
        correct = how == "rule" and bool(answer) and verify(answer, reference, cfg.short_words) == 1.0
        if how == "rule":
            accuracy = float(correct)
        else:
            accuracy = rlpr_scores[i] if how == "rlpr" else token_f1(answer, reference)
        parts.append(RewardParts(accuracy, format_reward(text, mode),
                                 repetition_penalty(text, cfg.repetition_window, cfg.repetition_limit),
                                 rm[i], cfg.rm_weight, how, correct))
    return parts
