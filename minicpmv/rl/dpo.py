"""RLAIF-V (training spec §5.6): preference pairs from the policy's own samples, scored claim by
claim, and DPO against a frozen reference model.

Pair construction (`build_pairs`), per prompt:
1. sample `samples_per_prompt` responses from the current policy with one shared sampling config;
2. divide: a text model splits each response into atomic claims (`split_claims`) and turns each
   claim into a yes/no question (`claim_questions`); default `ModelTextModel`, our own model with a
   prompt (RLAIF-V used Llama-3-8B);
3. conquer: a judge answers each question against the image (`ModelJudge`, default our model's
   P(yes) + P(Yes) vs P(no) + P(No) on the first answer token); score = -(rejected claims);
4. every response pair whose scores differ by >= 1 is a candidate (chosen = higher score); 2 are
   sampled per prompt (`preference_pairs`); finally `length_balance` drops pairs whose rejected
   answer is much longer than the chosen one so DPO cannot learn "shorter is better".

DPO (`dpo_loss`): -log sigmoid(beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))]),
sequence log-probs summed over tokens (RLAIF-V default), beta 0.1, optional SFT term on y_w.

Pair files (`minicpmv data rlaifv` writes them, `minicpmv train dpo` reads them) are fine-tune
records whose conversation ends with the user turn, plus `chosen` / `rejected` assistant texts
(a thinking response keeps its `<think>...</think>` block; both must be in the same mode).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from minicpmv.errors import InputError
from minicpmv.inference.engine import Engine
from minicpmv.inference.types import SamplingParams
from minicpmv.processor.processor import SPAN_MARKERS, EncodedSample, Processor
from minicpmv.rl import rewards
from minicpmv.rl.rollout import PREFILL, RLPrompt, encode_prompt, generate_rollouts, sequence_logprobs

TextModel = Callable[[Sequence[str]], list[str]]  # prompts -> completions (batched)
Judge = Callable[[RLPrompt, Sequence[str]], list[bool]]  # (prompt with its media, yes/no questions) -> yes?

CLAIMS_PROMPT = (
    "Here is a question about an image and an answer to it. List the facts the answer states about the "
    "image as short, self-contained sentences, one per line. Leave out opinions.\n"
    "Question: {question}\nAnswer: {answer}\nFacts:"
)
QUESTION_PROMPT = (
    "Turn the statement into a yes/no question whose answer is yes exactly when the statement is true. "
    "Keep any negation.\nStatement: {claim}\nQuestion:"
)
JUDGE_SUFFIX = " Please answer yes or no."


# ---- DPO ---------------------------------------------------------------------------------------------------
def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    sft_nll: torch.Tensor | None = None,
    sft_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean DPO loss over B pairs (summed sequence log-probs, all float[B]) plus sft_weight * sft_nll.

    Worked example, one pair: policy (-1, -2), reference (-1.5, -1.5), beta 0.1 -> margin
    (-1 + 1.5) - (-2 + 1.5) = 1.0 -> logit 0.1 -> loss = -log sigmoid(0.1) = 0.6444.
    Stats: 'margin' (mean log-ratio margin, the quantity DPO raises), 'accuracy' (share of pairs with
    a positive margin), 'chosen_reward' / 'rejected_reward' (beta * log-ratio).
    """
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected  # [B]
    margin = chosen_ratio - rejected_ratio  # [B]
    loss = -F.logsigmoid(beta * margin).mean()
    if sft_weight:
        if sft_nll is None:
            raise ValueError("sft_weight > 0 needs sft_nll (the chosen responses' token-mean NLL)")
        loss = loss + sft_weight * sft_nll
    stats = {"margin": float(margin.detach().mean()), "accuracy": float((margin.detach() > 0).float().mean()),
             "chosen_reward": float(beta * chosen_ratio.detach().mean()),
             "rejected_reward": float(beta * rejected_ratio.detach().mean())}
    return loss, stats


@dataclass
class EncodedPair:
    """A preference pair ready for the model: the prompt (in the pair's mode) and both response ids."""

    prompt: EncodedSample
    chosen_ids: list[int]
    rejected_ids: list[int]


def pair_texts(prompt: RLPrompt) -> tuple[str, str]:
    """(chosen, rejected) of a pair record, checked to be non-empty strings in the same mode."""
    chosen, rejected = prompt.record.get("chosen"), prompt.record.get("rejected")
    if not (isinstance(chosen, str) and chosen.strip() and isinstance(rejected, str) and rejected.strip()):
        raise InputError(f"{prompt.name}: a preference record needs non-empty 'chosen' and 'rejected' strings")
    if (rewards.THINK_END in chosen) != (rewards.THINK_END in rejected):
        raise InputError(f"{prompt.name}: 'chosen' and 'rejected' must both have a <think> block or both lack one")
    return chosen, rejected


def encode_pair(processor: Processor, prompt: RLPrompt, max_slice_nums: int | None = None) -> EncodedPair:
    """Prompt rendered in the pair's mode (long iff the responses think) + response ids ending in `<|im_end|>`."""
    chosen, rejected = pair_texts(prompt)
    mode = "long" if rewards.THINK_END in chosen else "short"
    tok = processor.tokenizer

    def response_ids(text: str) -> list[int]:
        text = text.strip()
        if mode == "long":
            text = text.removeprefix(rewards.THINK_START).lstrip("\n")  # the prompt already ends with <think>\n
        return tok.encode(text) + [tok.im_end_id]

    return EncodedPair(encode_prompt(processor, prompt, mode, max_slice_nums), response_ids(chosen), response_ids(rejected))


def pair_logprobs(model: nn.Module, pairs: Sequence[EncodedPair]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed log-probs of chosen [B], of rejected [B], token-mean NLL of the chosen responses) in one batch."""
    prompts = [p.prompt for p in pairs] * 2
    conts = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    lp = sequence_logprobs(model, prompts, conts)
    sums = lp.sums(len(conts))  # [2B]
    chosen_tokens = lp.row < len(pairs)
    nll = -lp.logp[chosen_tokens].mean()
    return sums[: len(pairs)], sums[len(pairs):], nll


# ---- RLAIF-V pieces (pure) ---------------------------------------------------------------------------------
def parse_lines(text: str) -> list[str]:
    """Non-empty lines without bullets or numbering: '1. A cat.\\n- A mat.\\n\\n' -> ['A cat.', 'A mat.']."""
    lines = [re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip() for line in text.splitlines()]
    return [line for line in lines if line]


def response_score(labels: Sequence[bool]) -> int:
    """-(number of rejected claims): [True, False, False] -> -2 (RLAIF-V `pair_construction.py`)."""
    return -sum(1 for ok in labels if not ok)


def preference_pairs(scores: Sequence[int], min_gap: int = 1, per_prompt: int = 2,
                     rng: random.Random | None = None) -> list[tuple[int, int]]:
    """(chosen, rejected) index pairs of one prompt's responses: every pair whose scores differ by
    >= min_gap is a candidate; `per_prompt` of them are sampled without replacement.

    Example: scores [0, -2, -1, 0], min_gap 1 -> candidates (0,1), (0,2), (2,1), (3,1), (3,2); two sampled.
    """
    candidates = [(i, j) for i in range(len(scores)) for j in range(len(scores)) if scores[i] - scores[j] >= min_gap]
    if len(candidates) <= per_prompt:
        return candidates
    return sorted((rng or random.Random(0)).sample(candidates, per_prompt))


def length_balance(lengths: Sequence[tuple[int, int]]) -> list[bool]:
    """Which pairs to keep so that chosen and rejected answers have about the same mean length.

    Pairs with len(rejected) - len(chosen) <= t are kept; t is searched over the observed
    differences to minimise |mean chosen length - mean rejected length| (ties: keep more pairs).
    Example: (chosen, rejected) lengths (10, 12), (10, 30), (20, 18) -> differences 2, 20, -2;
    t = -2 gives |20 - 18| = 2, t = 2 gives |15 - 15| = 0, t = 20 gives |13.3 - 20| = 6.7 -> t = 2:
    [True, False, True].
    """
    if not lengths:
        return []
    diffs = [r - c for c, r in lengths]
    best: tuple[float, int, int] | None = None  # (imbalance, -kept, threshold)
    for t in sorted(set(diffs)):
        kept = [lc for lc, d in zip(lengths, diffs) if d <= t]
        imbalance = abs(sum(c for c, _ in kept) - sum(r for _, r in kept)) / len(kept)
        key = (round(imbalance, 9), -len(kept), t)
        best = key if best is None or key < best else best
    return [d <= best[2] for d in diffs]


def prompt_question(prompt: RLPrompt) -> str:
    """The text of the prompt's last user turn (media parts left out)."""
    content = prompt.messages[-1]["content"]
    parts = [content] if isinstance(content, str) else [p for p in content if isinstance(p, str)]
    return "\n".join(parts).strip()


def split_claims(question: str, answers: Sequence[str], text_model: TextModel) -> list[list[str]]:
    """Atomic factual claims of each answer (one text-model call per answer, batched)."""
    outputs = text_model([CLAIMS_PROMPT.format(question=question, answer=a) for a in answers])
    return [parse_lines(o) for o in outputs]


def claim_questions(claims: Sequence[str], text_model: TextModel) -> list[str]:
    """One yes/no question per claim (the first line of each completion; the claim itself if empty)."""
    outputs = text_model([QUESTION_PROMPT.format(claim=c) for c in claims]) if claims else []
    return [(parse_lines(o) or [c])[0] for o, c in zip(outputs, claims)]


# ---- default text model and judge: our own model -----------------------------------------------------------
def plain_text(text: str) -> str:
    """Generated text made safe to put in a prompt: the visual span markers the processor reserves
    (`<image>`, `</image>`, `<slice>`, `</slice>`) are removed ('a</image>b' -> 'ab')."""
    for marker in SPAN_MARKERS:
        text = text.replace(marker, "")
    return text


class ModelTextModel:
    """A TextModel backed by our model: each prompt is a text-only user turn, answered greedily in short mode."""

    def __init__(self, engine: Engine, processor: Processor, max_new_tokens: int = 256):
        self.engine, self.processor, self.max_new_tokens = engine, processor, max_new_tokens

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        if not prompts:
            return []
        samples = [self.processor.encode([{"role": "user", "content": plain_text(p)}]) for p in prompts]
        params = SamplingParams(max_new_tokens=self.max_new_tokens, temperature=0.0)
        return [r.text for r in generate_rollouts(self.engine, samples, ["short"] * len(samples), params)]


class ModelJudge:
    """A Judge backed by our model: the image(s) of the prompt + the question, short mode; the answer is
    'yes' iff P(yes) + P(Yes) > P(no) + P(No) for the first answer token (RLAIF-V `minicpmv_autocheck.py`)."""

    def __init__(self, model: nn.Module, processor: Processor, max_slice_nums: int | None = None):
        self.model, self.processor, self.max_slice_nums = model, processor, max_slice_nums
        tok = processor.tokenizer
        self.yes = sorted({tok.encode(w)[0] for w in ("yes", "Yes")})
        self.no = sorted({tok.encode(w)[0] for w in ("no", "No")})
        if set(self.yes) & set(self.no):
            raise ValueError(f"the tokenizer gives 'yes' and 'no' the same first token ({self.yes}, {self.no})")

    @torch.no_grad()
    def __call__(self, prompt: RLPrompt, questions: Sequence[str]) -> list[bool]:
        if not questions:
            return []
        media = [p for m in prompt.messages if m["role"] == "user" and not isinstance(m["content"], str)
                 for p in m["content"] if not isinstance(p, str)]
        convs = [[{"role": "user", "content": [*media, plain_text(q) + JUDGE_SUFFIX]}] for q in questions]
        batch = self.processor(convs, max_slice_nums=self.max_slice_nums).to(next(self.model.parameters()).device)
        vision = None  # the image is the same for every question: encode it once
        if batch.pixel_values[0]:
            vision = self.model.vision_per_item(batch.pixel_values[:1], batch.tgt_sizes[:1], batch.temporal_ids[:1])
        logits = self.model(batch.input_ids, batch.attention_mask, image_bounds=batch.image_bounds,
                            vision_embeds=None if vision is None else vision * len(questions),
                            num_logits_to_keep=1).logits[:, -1].float()  # [Q, V]
        probs = logits.softmax(-1)
        return (probs[:, self.yes].sum(-1) > probs[:, self.no].sum(-1)).tolist()


# ---- the pipeline ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairConfig:
    """RLAIF-V pair construction settings (2.x report: 10 samples at high temperature; 2 pairs per prompt)."""

    samples_per_prompt: int = 10
    temperature: float = 1.0
    max_new_tokens: int = 512
    mode: str = "short"  # template of the sampled responses
    min_gap: int = 1
    pairs_per_prompt: int = 2
    max_slice_nums: int | None = None
    seed: int = 0


def build_pairs(prompts: Sequence[RLPrompt], engine: Engine, processor: Processor, text_model: TextModel,
                judge: Judge, cfg: PairConfig = PairConfig()) -> list[dict[str, Any]]:
    """Preference records (see the module docstring) for `prompts`, length-balanced over all of them."""
    rng = random.Random(cfg.seed)
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, n=cfg.samples_per_prompt,
                            seed=cfg.seed)
    samples = [encode_prompt(processor, p, cfg.mode, cfg.max_slice_nums) for p in prompts]
    rollouts = generate_rollouts(engine, samples, [cfg.mode] * len(samples), params)
    records, lengths = [], []
    for g, prompt in enumerate(prompts):
        texts = [PREFILL[cfg.mode] + r.text for r in rollouts if r.group == g]
        answers = [rewards.split_answer(t)[1] for t in texts]
        scores = score_responses(prompt, answers, text_model, judge)
        for i, j in preference_pairs(scores, cfg.min_gap, cfg.pairs_per_prompt, rng):
            records.append(pair_record(prompt, _as_response(texts[i], cfg.mode), _as_response(texts[j], cfg.mode),
                                       scores[i], scores[j]))
            lengths.append((len(answers[i].split()), len(answers[j].split())))
    return [r for r, keep in zip(records, length_balance(lengths)) if keep]


def score_responses(prompt: RLPrompt, answers: Sequence[str], text_model: TextModel, judge: Judge) -> list[int]:
    """-(rejected claims) per answer; one text-model call for the claims of all answers, one for all
    their questions, one judge call for all questions."""
    claims = split_claims(prompt_question(prompt), answers, text_model)
    verdicts = judge(prompt, claim_questions([c for cs in claims for c in cs], text_model))
    scores, at = [], 0
    for cs in claims:
        scores.append(response_score(verdicts[at:at + len(cs)]))
        at += len(cs)
    return scores


def _as_response(assistant_text: str, mode: str) -> str:
    """The assistant text as a pair file stores it: short mode without its (empty) think block."""
    return rewards.split_answer(assistant_text)[1] if mode == "short" else assistant_text


def pair_record(prompt: RLPrompt, chosen: str, rejected: str, chosen_score: int, rejected_score: int) -> dict[str, Any]:
    """The prompt's record cut after its last user turn, media paths made absolute, plus the pair."""
    record = {k: _absolute(v, prompt.base_dir) if k in ("image", "video", "images", "videos") else v
              for k, v in prompt.record.items()}
    key = "conversations" if "conversations" in record else "messages"
    turns = list(record[key])
    while turns and turns[-1].get("role") == "assistant":
        turns.pop()
    record[key] = turns
    return {**record, "chosen": chosen, "rejected": rejected, "chosen_score": chosen_score,
            "rejected_score": rejected_score}


def _absolute(spec: Any, base_dir: Path) -> Any:
    """Media spec with every relative path made absolute (str, list, {tag: spec}, {'path' | 'frames': ...})."""
    if isinstance(spec, str):
        return str((base_dir / spec).resolve())
    if isinstance(spec, list):
        return [_absolute(s, base_dir) for s in spec]
    if isinstance(spec, dict):
        return {k: _absolute(v, base_dir) if k in ("path", "frames") or str(k).startswith("<") else v
                for k, v in spec.items()}
    return spec
