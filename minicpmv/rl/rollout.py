"""Rollouts for RL: prompts -> sampled responses through the batched engine -> token log-probs of
those responses under the policy by teacher forcing (plus the RLPR reference scoring and a greedy
evaluation per mode).

Prompt data is the fine-tune format (`minicpmv.data.datasets`): the last assistant turn of a
record is the reference answer, everything before it is the prompt. A prompt is rendered in its
mode: long = thinking template (the prompt ends with `<think>\\n`), short = the empty think block
`<think>\\n\\n</think>\\n\\n` (both come from the processor's `enable_thinking`).

All groups of a step go to the engine at once (`Engine.generate`): each prompt is prefilled once
and its cache row repeated `n` times, and every row decodes in one batch. A sequence that ends
with a stop id gets `<|im_end|>` appended to its token ids (the engine drops stop ids), so the
policy is also trained on ending its turn; a stop on `<|endoftext|>` is recorded as `<|im_end|>`.

vLLM rollouts (issue 7, item 4): `minicpmv.rl.vllm_rollout` makes the same `Rollout`s with vLLM
serving the current weights (`--rollout-backend vllm`, CUDA + vLLM only); log-probs are still
recomputed here by teacher forcing, so the loss never depends on the generator's numerics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from minicpmv.chat import sample_to_request
from minicpmv.data.datasets import RecordFile, record_to_messages
from minicpmv.errors import InputError
from minicpmv.inference.engine import Engine
from minicpmv.inference.types import SamplingParams
from minicpmv.processor.chat_template import EMPTY_THINK
from minicpmv.processor.processor import EncodedSample, Processor
from minicpmv.processor.tokenizer import Tokenizer
from minicpmv.rl import rewards

PREFILL = {"long": "<think>\n", "short": EMPTY_THINK}  # what the template puts before the response


# ---- prompts ------------------------------------------------------------------------------------------
@dataclass
class RLPrompt:
    """messages: processor messages ending with the user turn (media loaded); reference: the answer
    of the record's last assistant turn ('' when it has none); record/base_dir: the raw record and
    the folder its relative media paths start from."""

    messages: list[dict[str, Any]]
    reference: str
    name: str
    record: dict[str, Any]
    base_dir: Path


class PromptSet:
    """Random access to the prompts of one or more record files (records are read when asked for)."""

    def __init__(self, files: Sequence[str | Path], need_reference: bool = True):
        if not files:
            raise InputError("no prompt files given; pass at least one .json or .jsonl file")
        self.files = [RecordFile(f) for f in files]
        self.need_reference = need_reference
        self._index = [(k, i) for k, f in enumerate(self.files) for i in range(len(f))]

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> RLPrompt:
        k, i = self._index[index]
        file = self.files[k]
        record = file.read(i)
        where = f"{file.path.name} record {i}"
        turns = record.get("conversations") or record.get("messages") if isinstance(record, dict) else None
        ends_with_user = isinstance(turns, list) and turns and isinstance(turns[-1], dict) and turns[-1].get("role") == "user"
        if ends_with_user and self.need_reference:
            raise InputError(f"{where}: RL prompts need a reference answer; end the record with an assistant turn")
        if ends_with_user:  # a bare prompt: validate it with a placeholder answer that is dropped again
            key = "conversations" if "conversations" in record else "messages"
            record = {**record, key: [*turns, {"role": "assistant", "content": "-"}]}
        messages = record_to_messages(record, file.base_dir, where)
        reference = "" if ends_with_user else str(messages[-1]["content"]).strip()
        return RLPrompt(messages[:-1], reference, where, record, file.base_dir)


def encode_prompt(processor: Processor, prompt: RLPrompt, mode: str, max_slice_nums: int | None = None) -> EncodedSample:
    """The prompt rendered for generation in `mode` ('long' = thinking template, 'short' = empty think)."""
    if mode not in PREFILL:
        raise ValueError(f"mode {mode!r}; use 'long' or 'short'")
    return processor.encode(prompt.messages, enable_thinking=mode == "long", max_slice_nums=max_slice_nums)


# ---- rollouts -----------------------------------------------------------------------------------------
@dataclass
class Rollout:
    """One sampled response. `prompt` is shared by the rollouts of a group; `group` is its index in the step."""

    prompt: EncodedSample
    mode: str
    response_ids: list[int]  # generated ids, `<|im_end|>` appended when the model ended its turn
    text: str  # decoded response, without the template prefill
    finish_reason: str  # 'stop' | 'length'
    group: int
    sampler_logprobs: list[float] | None = None  # the generator's log-probs of response_ids[:k] (vLLM), else None

    @property
    def assistant_text(self) -> str:
        """Prefill + response: the text the format reward and the answer split look at."""
        return PREFILL[self.mode] + self.text


def generate_rollouts(
    engine: Engine, prompts: Sequence[EncodedSample], modes: Sequence[str], params: SamplingParams
) -> list[Rollout]:
    """`params.n` rollouts per prompt from one batched `engine.generate` call, grouped in prompt order."""
    outputs = engine.generate([sample_to_request(p, params) for p in prompts])
    end = engine.tokenizer.im_end_id
    rollouts = []
    for g, (prompt, mode, out) in enumerate(zip(prompts, modes, outputs)):
        for c in out.completions:
            ids = list(c.token_ids) + ([end] if c.finish_reason == "stop" else [])
            rollouts.append(Rollout(prompt, mode, ids, c.text, c.finish_reason, g))
    return rollouts


# ---- teacher forcing ----------------------------------------------------------------------------------
@dataclass
class TokenLogprobs:
    """Log-probs of N scored tokens of several sequences, flattened: logp float[N], row int64[N]
    (which sequence each token belongs to, tokens in order), entropy float[N] or None."""

    logp: torch.Tensor
    row: torch.Tensor
    entropy: torch.Tensor | None = None

    def select(self, rows: Sequence[int]) -> "TokenLogprobs":
        """The tokens of sequences `rows`, renumbered 0..len(rows)-1 in that order."""
        picks = [torch.nonzero(self.row == r).flatten() for r in rows]
        idx = torch.cat(picks) if picks else torch.zeros(0, dtype=torch.long)
        new_row = torch.cat([torch.full((len(p),), k, dtype=torch.long) for k, p in enumerate(picks)]) if picks else idx
        return TokenLogprobs(self.logp[idx], new_row.to(self.row.device),
                             None if self.entropy is None else self.entropy[idx])

    def sums(self, n_rows: int) -> torch.Tensor:
        """Summed log-prob per sequence: float[n_rows] (differentiable)."""
        return torch.zeros(n_rows, dtype=self.logp.dtype, device=self.logp.device).index_add(0, self.row, self.logp)

    def per_row(self, n_rows: int) -> list[list[float]]:
        values, rows = self.logp.detach().cpu().tolist(), self.row.cpu().tolist()
        out: list[list[float]] = [[] for _ in range(n_rows)]
        for v, r in zip(values, rows):
            out[r].append(v)
        return out


def sequence_logprobs(
    model: nn.Module,
    prompts: Sequence[EncodedSample],
    continuations: Sequence[Sequence[int]],
    score_from: Sequence[int] | None = None,
    with_entropy: bool = False,
) -> TokenLogprobs:
    """Teacher-forced log-probs of continuation tokens after their prompts, in one right-padded batch.

    Row b is prompts[b].input_ids + continuations[b]; tokens continuations[b][score_from[b]:] are
    scored (default: all). The vision features of each distinct prompt object are computed once
    and shared by its rows (a GRPO group shares one prompt). Logits are computed only at the scored
    positions. Differentiable unless called under no_grad.
    """
    starts = list(score_from) if score_from is not None else [0] * len(prompts)
    device = next(model.parameters()).device
    rows = [list(p.input_ids) + list(c) for p, c in zip(prompts, continuations)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), 0, dtype=torch.long)  # [B, T]; padding is masked out
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, T]
    where_b, where_t, targets = [], [], []
    for b, (row, prompt, start) in enumerate(zip(rows, prompts, starts)):
        ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
        for t in range(len(prompt.input_ids) + start, len(row)):
            where_b.append(b)
            where_t.append(t - 1)  # the position before a token predicts it
            targets.append(row[t])
    embeds = model.embed(ids.to(device), image_bounds=[p.image_bounds for p in prompts],
                         vision_embeds=_shared_vision(model, prompts, device))  # [B, T, D]
    hidden = model.llm(embeds, attention_mask=mask.to(device))  # [B, T, D]
    picked = hidden[torch.tensor(where_b, device=device), torch.tensor(where_t, device=device)]  # [N, D]
    logits = model.llm.logits(picked).float()  # [N, V]
    target = torch.tensor(targets, dtype=torch.long, device=device)
    logp = logits.gather(1, target[:, None])[:, 0] - logits.logsumexp(-1)  # [N]
    entropy = None
    if with_entropy:
        logp_all = logits.log_softmax(-1)  # [N, V]
        entropy = -(logp_all.exp() * logp_all).sum(-1)  # [N]
    return TokenLogprobs(logp, torch.tensor(where_b, dtype=torch.long, device=device), entropy)


def _shared_vision(model: nn.Module, prompts: Sequence[EncodedSample], device) -> list[torch.Tensor | None]:
    """Per row the resampler output [G, Q, D] of its prompt (None without media), once per prompt object."""
    unique = {id(p): p for p in prompts if len(p.pixel_values)}
    if not unique:
        return [None] * len(prompts)
    items = list(unique.values())
    encoded = model.vision_per_item([[s.to(device) for s in p.pixel_values] for p in items],
                                    [p.tgt_sizes for p in items], [p.temporal_ids for p in items])
    by_id = {key: e for key, e in zip(unique, encoded)}
    return [by_id.get(id(p)) for p in prompts]


def rollout_logprobs(model: nn.Module, rollouts: Sequence[Rollout], with_entropy: bool = False) -> TokenLogprobs:
    """Log-probs of every response token of `rollouts` (row i = rollout i)."""
    return sequence_logprobs(model, [r.prompt for r in rollouts], [r.response_ids for r in rollouts],
                             with_entropy=with_entropy)


# ---- RLPR ---------------------------------------------------------------------------------------------
@torch.no_grad()
def rlpr_scores(model: nn.Module, tokenizer: Tokenizer, rollouts: Sequence[Rollout], reference: str) -> list[float]:
    """RLPR r̂ of each long-mode rollout of one group (training spec §5.5).

    For a rollout z ‖ `</think>` ‖ y, the reference y* replaces y: the policy scores y* teacher-forced
    after prompt ‖ z ‖ `</think>\\n\\n`; the baseline r' scores y* after prompt ‖ `\\n</think>\\n\\n`
    (an empty think block: no reasoning). Both run in one batch with the current policy (RLPR caches
    r' from the initial policy; recomputing it costs one row per group). A rollout without
    `</think>` has no answer slot and scores 0.
    """
    ref_ids = tokenizer.encode(reference)
    if not ref_ids:
        raise ValueError("RLPR needs a non-empty reference answer")
    end, gap = tokenizer.think_end_id, tokenizer.encode("\n\n")
    scored = [r for r in rollouts if end in r.response_ids]
    if not scored:
        return [0.0] * len(rollouts)
    prefixes = [r.response_ids[: r.response_ids.index(end) + 1] + gap for r in scored]
    baseline = tokenizer.encode("\n</think>\n\n")
    prompts = [r.prompt for r in scored] + [scored[0].prompt]
    conts = [p + ref_ids for p in prefixes] + [baseline + ref_ids]
    starts = [len(p) for p in prefixes] + [len(baseline)]
    per_row = sequence_logprobs(model, prompts, conts, starts).per_row(len(conts))
    score = {id(r): rewards.rlpr_reward(lp, per_row[-1]) for r, lp in zip(scored, per_row)}
    return [score.get(id(r), 0.0) for r in rollouts]


# ---- evaluation ---------------------------------------------------------------------------------------
def evaluate(
    engine: Engine, processor: Processor, prompts: Sequence[RLPrompt], mode: str, max_new_tokens: int,
    max_slice_nums: int | None = None,
) -> dict[str, float]:
    """Greedy decoding of every prompt in `mode`: 'accuracy' (rule verifier on the answer part),
    'format' (share with the mode's structure) and 'length' (mean generated tokens)."""
    samples = [encode_prompt(processor, p, mode, max_slice_nums) for p in prompts]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    rollouts = generate_rollouts(engine, samples, [mode] * len(samples), params)
    correct = [rewards.verify(rewards.split_answer(r.assistant_text)[1], p.reference) for r, p in zip(rollouts, prompts)]
    formatted = [rewards.format_reward(r.assistant_text, mode) == 0.0 for r in rollouts]
    n = max(len(rollouts), 1)
    return {"accuracy": sum(correct) / n, "format": sum(formatted) / n,
            "length": sum(len(r.response_ids) for r in rollouts) / n}
