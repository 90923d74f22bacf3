"""The generation engine: token ids and vision inputs in, tokens and text deltas out.

It never sees chat text. A `Request` is a tokenized prompt (plus, per prompt, the processor's pixel
slices and visual spans, or ready vision features) and its `SamplingParams`.

How a step works (`Engine.step`):
1. Decode: every running row feeds the token it chose last step through the LLM with the shared,
   preallocated KV cache (one position per row), giving next-token logits [B, V].
2. Admit: waiting requests are prefilled together as one left-padded batch (different numbers of
   images or video groups are fine: each prompt brings its own spans); only the last position's
   logits are computed. A request with `n` samples or `num_beams` beams is prefilled once and its
   cache row repeated.
3. Merge: the newcomers' cache rows join the running batch. Both parts are right-aligned to a
   common length by extra left padding; positions come from the attention mask (count of real
   tokens before a token), and padded keys are masked out, so a row's result does not depend on who
   it shares the batch with (up to float rounding). Requests therefore join at the next step
   (dynamic batching) and get the same greedy tokens as alone (tested).
4. Choose: sampling rows go through `sampling.py` (per-row parameters, per-request seeded
   generators); a beam request updates its beams (HF beam search) and reorders its cache rows.
5. Emit and retire: text is detokenised incrementally (never half a UTF-8 character), stop
   strings are held back until they cannot match any more, finished rows are removed from the
   cache (`KVCache.select`) so they stop costing compute, and leading all-padding columns are cut.

`EngineLoop` runs `step()` in one background thread for concurrent callers (the chat service and
the server); `Engine.generate` is the synchronous path.
"""

from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from minicpmv.errors import InputError
from minicpmv.inference import sampling
from minicpmv.inference.types import SamplingParams
from minicpmv.inference.vision_cache import VisionCache
from minicpmv.model.kv_cache import KVCache
from minicpmv.processor.tokenizer import IncrementalDecoder


@dataclass
class VisionInputs:
    """One prompt's visual inputs, positions relative to the UNPADDED prompt.

    pixel_values: float[3, H, W] slices; tgt_sizes int[n_slices, 2]; temporal_ids: groups (None =
    one `[-1]` group per slice); image_bounds int64[n_spans, 2] (start, end) of each 64-row span;
    features: ready resampler outputs [n_spans, Q, D] (then no pixels are needed).
    """

    image_bounds: torch.Tensor
    pixel_values: list[torch.Tensor] = field(default_factory=list)
    tgt_sizes: torch.Tensor | None = None
    temporal_ids: list[list[int]] | None = None
    features: torch.Tensor | None = None

    @property
    def num_visual_tokens(self) -> int:
        b = torch.as_tensor(self.image_bounds).reshape(-1, 2)
        return int((b[:, 1] - b[:, 0]).sum())


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    vision: VisionInputs | None = None


@dataclass
class TokenEvent:
    """Output of one step for one sequence. `text` is the newly completed text (may be '')."""

    request_id: int
    index: int  # which of the request's n sequences
    token_id: int | None  # None on events that carry no new token (flush, beam result, cancel)
    text: str
    finished: bool = False
    finish_reason: str | None = None  # 'stop' | 'length' | 'cancelled'
    completion: "Completion | None" = None  # the whole sequence, on its finished event


@dataclass
class Completion:
    token_ids: list[int]  # generated ids, without the stop token
    text: str  # their text, cut before a stop string
    finish_reason: str
    num_generated: int  # tokens the model produced, the stop token included


@dataclass
class RequestOutput:
    request_id: int
    completions: list[Completion]
    prompt_tokens: int
    visual_tokens: int


# ---- stop strings -------------------------------------------------------------------------------


def scan_stop_strings(pending: str, stops: tuple[str, ...]) -> tuple[int | None, int]:
    """Where `pending` (decoded, not yet emitted text) hits a stop string, and how much is safe to emit.

    Returns (cut, safe): `cut` = index of the earliest stop string in `pending` (None if none);
    `safe` = how many leading characters can be emitted now: everything except the longest suffix
    that could still grow into a stop string. Example with stops ('END',): 'abc E' -> (None, 4)
    ('E' is held back), 'abc EN' -> (None, 4), 'abc END!' -> (4, 4) (the text ends as 'abc ').
    """
    hits = [i for s in stops if (i := pending.find(s)) >= 0]
    if hits:
        return min(hits), min(hits)
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(pending)), hold, -1):
            if pending.endswith(s[:k]):
                hold = k
                break
    return None, len(pending) - hold


# ---- validation ---------------------------------------------------------------------------------


def check_request(req: Request, vocab_size: int, max_positions: int) -> None:
    """Raise InputError (naming the field and the fix) for a request the engine cannot run."""
    p, n_prompt = req.params, len(req.prompt_ids)
    if n_prompt == 0:
        raise InputError("the prompt is empty: a request needs at least one token id")
    bad = [t for t in req.prompt_ids if not 0 <= t < vocab_size]
    if bad:
        raise InputError(f"prompt ids {bad[:5]} are outside the vocabulary 0..{vocab_size - 1}")
    rules = [
        (p.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {p.max_new_tokens}"),
        (0 <= p.min_new_tokens <= p.max_new_tokens,
         f"min_new_tokens {p.min_new_tokens} must be in 0..max_new_tokens {p.max_new_tokens}"),
        (p.temperature >= 0, f"temperature must be >= 0 (0 = greedy), got {p.temperature}"),
        (0 < p.top_p <= 1, f"top_p must be in (0, 1], got {p.top_p}"),
        (p.top_k >= 0, f"top_k must be >= 0 (0 = off), got {p.top_k}"),
        (0 <= p.min_p <= 1, f"min_p must be in [0, 1], got {p.min_p}"),
        (p.repetition_penalty > 0, f"repetition_penalty must be > 0 (1 = off), got {p.repetition_penalty}"),
        (p.num_beams >= 1, f"num_beams must be >= 1, got {p.num_beams}"),
        (p.n >= 1, f"n must be >= 1, got {p.n}"),
        (p.num_beams == 1 or p.n <= p.num_beams,
         f"n {p.n} > num_beams {p.num_beams}: beam search returns at most num_beams sequences"),
        (p.num_beams == 1 or not p.stop, "stop strings are not supported with beam search; use stop_token_ids or sampling"),
        (all(isinstance(s, str) and s for s in p.stop), f"stop strings must be non-empty strings, got {list(p.stop)}"),
        (all(0 <= t < vocab_size for t in p.stop_token_ids),
         f"stop_token_ids {list(p.stop_token_ids)} outside 0..{vocab_size - 1}"),
        (n_prompt + p.max_new_tokens <= max_positions,
         f"prompt of {n_prompt} tokens + max_new_tokens {p.max_new_tokens} exceeds the model's {max_positions} "
         "positions; shorten the input or lower max_new_tokens"),
    ]
    for ok, message in rules:
        if not ok:
            raise InputError(message)
    if req.vision is not None:
        _check_vision(req.vision, n_prompt)


def _check_vision(v: VisionInputs, n_prompt: int) -> None:
    bounds = torch.as_tensor(v.image_bounds).reshape(-1, 2)
    if len(bounds) and (int(bounds.min()) < 0 or int(bounds.max()) > n_prompt):
        raise InputError(f"image_bounds {bounds.tolist()} fall outside the prompt of {n_prompt} tokens")
    if v.features is not None:
        groups = v.features.shape[0]
    else:
        groups = len(v.temporal_ids) if v.temporal_ids else len(v.pixel_values)
    if groups != len(bounds):
        raise InputError(
            f"{len(bounds)} visual spans in the prompt but {groups} vision groups; prompt ids and pixel "
            "inputs must come from the same processor call"
        )


# ---- per-request state ----------------------------------------------------------------------------


@dataclass
class _Sequence:
    """One of a sampling request's n output sequences (one cache row)."""

    index: int
    decoder: IncrementalDecoder
    token_ids: list[int] = field(default_factory=list)
    text: str = ""  # emitted so far
    pending: str = ""  # decoded but held back: it could be the start of a stop string
    num_generated: int = 0
    finish_reason: str | None = None


@dataclass
class _Beams:
    """Beam-search state of one request (HF `generate` semantics, see `Engine._beam_step`)."""

    scores: torch.Tensor  # float32[K] running sums of processed log-probs
    tokens: list[list[int]]  # running hypotheses (generated ids)
    finished: list[tuple[float, list[int], str]] = field(default_factory=list)  # (score, ids, reason), best first
    improvable: bool = True
    done: bool = False

    @classmethod
    def start(cls, k: int, device) -> "_Beams":
        # Only beam 0 is live at first: all K rows hold the same prompt.
        scores = torch.full((k,), -1e9, dtype=torch.float32, device=device)
        scores[0] = 0.0
        return cls(scores=scores, tokens=[[] for _ in range(k)])


class _Live:
    """A request in flight: its sequences (sampling) or beams, generator, counters."""

    def __init__(self, rid: int, req: Request, default_stops: tuple[int, ...], tokenizer, device):
        self.id, self.request, self.params = rid, req, req.params
        self.stop_ids = tuple(dict.fromkeys(default_stops + tuple(req.params.stop_token_ids)))
        self.steps = 0  # tokens chosen so far (per sequence)
        self.tokenizer = tokenizer
        self.generator = None
        if req.params.temperature > 0 and req.params.num_beams == 1:
            # No seed: draw one from torch's global RNG, so `torch.manual_seed(s)` before a call makes
            # it reproducible, as with HF generate.
            seed = req.params.seed if req.params.seed is not None else int(torch.randint(0, 2**62, (1,)))
            self.generator = torch.Generator(device=device).manual_seed(seed)
        beams = req.params.num_beams > 1
        self.beams = _Beams.start(req.params.num_beams, device) if beams else None
        self.seqs = [] if beams else [_Sequence(i, IncrementalDecoder(tokenizer)) for i in range(req.params.n)]
        self.completions: list[Completion] = []
        self.prompt_tokens = len(req.prompt_ids)
        self.visual_tokens = req.vision.num_visual_tokens if req.vision is not None else 0

    @property
    def num_rows(self) -> int:
        return self.params.num_beams if self.beams is not None else self.params.n

    @property
    def finished(self) -> bool:
        if self.beams is not None:
            return self.beams.done
        return all(s.finish_reason is not None for s in self.seqs)

    def output(self) -> RequestOutput:
        if self.beams is None:
            self.completions = [_completion(s) for s in self.seqs]
        return RequestOutput(self.id, self.completions, self.prompt_tokens, self.visual_tokens)


def _completion(seq: _Sequence) -> Completion:
    return Completion(list(seq.token_ids), seq.text, seq.finish_reason or "cancelled", seq.num_generated)


# ---- the engine -----------------------------------------------------------------------------------


def decode_logits(model, last: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None,
                  cache: KVCache) -> torch.Tensor:
    """One decode step written for `torch.compile`: logits float32[B, V] after feeding last int64[B].

    The same maths as `model(last[:, None], attention_mask=..., cache=cache)` in `Engine._decode`,
    without its data-dependent branches (so the whole step is one graph): positions int64[B, 1] are
    the counts of real tokens before the new one (left padding aware), and `mask` is the ready boolean
    key mask [B, 1, 1, S] (None when no key is padding). Example: row mask [0, 1, 1, 1] (one left pad,
    the last column is the new token) -> position 2, the padded key masked out.
    """
    embeds = model.llm.embed(last[:, None])  # [B, 1, D]
    hidden = model.llm(embeds, position_ids=positions, attention_mask=mask, cache=cache)  # [B, 1, D]
    return model.llm.logits(hidden[:, -1]).float()  # [B, V]


class Engine:
    """Batched prefill + incremental decode over a preallocated KV cache, with dynamic batching.

    model: a `MiniCPMV` (or anything with its `forward`/`encode_vision`/`config`); tokenizer: a
    `minicpmv.processor.tokenizer.Tokenizer` (stop ids, pad id, bytes of each id for streaming).
    Not thread-safe: one thread calls `add_request` / `cancel` / `step` (see `EngineLoop`).
    """

    def __init__(self, model, tokenizer, *, vision_cache: VisionCache | None = None, max_batch_size: int = 32,
                 compile_decode: bool = False, compile_backend: str = "inductor"):
        """compile_decode: run the decode step through `torch.compile` (`decode_logits`, whole graph,
        dynamic shapes; off by default: the first steps pay the compile, tens of seconds on a CPU).
        compile_backend: the torch.compile backend ('inductor'; 'aot_eager' traces without codegen)."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self._compiled_decode = None
        if compile_decode:
            self._compiled_decode = torch.compile(decode_logits, dynamic=True, fullgraph=True, backend=compile_backend)
        self.model, self.tokenizer = model, tokenizer
        self.vision_cache = vision_cache
        self.max_batch_size = max_batch_size
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.llm_cfg = model.config.llm
        self.stop_ids = tuple(tokenizer.stop_ids)
        self._ids = itertools.count()
        self._waiting: list[_Live] = []
        self._running: dict[int, _Live] = {}
        self._rows: list[tuple[_Live, int]] = []  # cache row -> (request, sequence or beam slot)
        self._cache: KVCache | None = None
        self._mask: torch.Tensor | None = None  # int64[B, max_len]: 1 = real token in the cache
        self._seen: torch.Tensor | None = None  # bool[B, V]: ids the repetition penalty covers
        self._last: torch.Tensor | None = None  # int64[B]: the token each row feeds next step

    # ---- public API ---------------------------------------------------------------------------
    def add_request(self, req: Request, request_id: int | None = None) -> int:
        """Queue a request (validated now, InputError on bad input); it joins at the next step."""
        check_request(req, self.llm_cfg.vocab_size, self.llm_cfg.max_position_embeddings)
        rid = next(self._ids) if request_id is None else request_id
        self._waiting.append(_Live(rid, req, self.stop_ids, self.tokenizer, self.device))
        return rid

    @property
    def has_work(self) -> bool:
        return bool(self._waiting or self._rows)

    @property
    def num_rows(self) -> int:
        """Sequences (cache rows) decoding right now."""
        return len(self._rows)

    def step(self) -> list[TokenEvent]:
        """One decode step for every running row, after admitting waiting requests (see module doc)."""
        with torch.inference_mode():
            logits = self._decode() if self._rows else None  # [B_running, V]
            admitted = self._admit()
            if admitted:
                new_logits = self._prefill_and_merge(admitted)  # [B_new, V]
                logits = new_logits if logits is None else torch.cat([logits, new_logits])
            if logits is None:
                return []
            tokens = self._choose(logits)  # [B]
            return self._advance(tokens)

    def cancel(self, request_id: int) -> list[TokenEvent]:
        """Stop a request now (waiting or running); returns its 'cancelled' events ([] if unknown/done)."""
        live = next((l for l in self._waiting if l.id == request_id), None)
        if live is not None:
            self._waiting.remove(live)
        else:
            live = self._running.pop(request_id, None)
            if live is None:
                return []
            self._keep_rows([i for i, (l, _) in enumerate(self._rows) if l is not live])
        events = []
        for index in range(live.params.n):
            seq = live.seqs[index] if live.beams is None else None
            if seq is not None and seq.finish_reason is not None:
                continue
            done = Completion([], "", "cancelled", 0)
            if seq is not None:
                seq.finish_reason = "cancelled"
                done = _completion(seq)
            events.append(TokenEvent(live.id, index, None, "", True, "cancelled", done))
        return events

    def generate(self, requests: list[Request]) -> list[RequestOutput]:
        """Run `requests` to completion (prefilled together as one batch); outputs in input order.

        Requests added before (with `add_request`) are stepped too, but their events are not returned.
        """
        for r in requests:  # all or none: a bad request must not leave the others queued
            check_request(r, self.llm_cfg.vocab_size, self.llm_cfg.max_position_embeddings)
        ids = [self.add_request(r) for r in requests]
        lives = {l.id: l for l in self._waiting if l.id in set(ids)}
        while any(not lives[i].finished for i in ids):
            self.step()
        return [lives[i].output() for i in ids]

    # ---- prefill, decode, merge -----------------------------------------------------------------
    def _admit(self) -> list[_Live]:
        """Waiting requests that fit next to the running rows (the first one always, if idle)."""
        admitted, rows = [], len(self._rows)
        while self._waiting and (rows + self._waiting[0].num_rows <= self.max_batch_size or rows == 0):
            live = self._waiting.pop(0)
            admitted.append(live)
            rows += live.num_rows
        return admitted

    def _decode(self) -> torch.Tensor:
        """Feed each row's last token: logits float32[B, V] for the next position."""
        t = self._cache.length
        self._mask[:, t] = 1
        mask = self._mask[:, : t + 1]  # [B, S]
        if self._compiled_decode is not None:
            # No padded key in the batch (e.g. batch 1): no mask, so SDPA may pick its flash kernel.
            padded = None if bool(mask.all()) else mask.bool()[:, None, None, :]  # [B, 1, 1, S]
            return self._compiled_decode(self.model, self._last, mask.sum(-1, keepdim=True) - 1, padded, self._cache)
        out = self.model(self._last[:, None], attention_mask=mask, cache=self._cache, num_logits_to_keep=1)
        return out.logits[:, -1].float()  # [B, V]

    def _prefill_and_merge(self, lives: list[_Live]) -> torch.Tensor:
        """Prefill `lives` as one left-padded batch, join their rows to the running batch; their logits [B_new, V]."""
        lengths = [len(l.request.prompt_ids) for l in lives]
        t = max(lengths)
        ids = torch.full((len(lives), t), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros(len(lives), t, dtype=torch.long)
        bounds = []
        for b, (live, n) in enumerate(zip(lives, lengths)):
            ids[b, t - n :] = torch.tensor(live.request.prompt_ids)
            mask[b, t - n :] = 1
            v = live.request.vision
            spans = torch.as_tensor(v.image_bounds).reshape(-1, 2) if v is not None else torch.zeros(0, 2, dtype=torch.long)
            bounds.append(spans + (t - n))  # shifted by the left padding
            self._running[live.id] = live  # from here on an error reaches this request (EngineLoop, abort_all)
        cache = KVCache.allocate(self.llm_cfg, len(lives), t, self.dtype, self.device)
        out = self.model(
            ids.to(self.device), attention_mask=mask.to(self.device), image_bounds=bounds,
            vision_embeds=self._vision_features(lives), cache=cache, num_logits_to_keep=1,
        )
        logits = out.logits[:, -1].float()  # [B_new, V]
        expand = torch.tensor([b for b, live in enumerate(lives) for _ in range(live.num_rows)])  # one row per sequence/beam
        if len(expand) != len(lives):
            cache, mask, logits = cache.select(expand.to(self.device)), mask[expand], logits[expand.to(logits.device)]
        seen = torch.zeros(len(expand), self.llm_cfg.vocab_size, dtype=torch.bool, device=self.device)
        rows = [(live, slot) for live in lives for slot in range(live.num_rows)]
        for r, (live, _) in enumerate(rows):
            if live.params.penalize_prompt:
                seen[r, torch.tensor(live.request.prompt_ids, device=self.device)] = True
        self._merge(cache, mask.to(self.device), seen, rows)
        return logits

    def _vision_features(self, lives: list[_Live]) -> list[torch.Tensor | None]:
        """Per request [G, Q, D] (ready features, or encoded through the vision cache) or None."""
        feats: list[torch.Tensor | None] = [None] * len(lives)
        todo = []
        for b, live in enumerate(lives):
            v = live.request.vision
            if v is not None and v.features is not None:
                feats[b] = v.features.to(self.device, self.dtype)
            elif v is not None and v.pixel_values:
                todo.append(b)
        if not todo:
            return feats
        pixels = [lives[b].request.vision.pixel_values for b in todo]
        sizes = [lives[b].request.vision.tgt_sizes for b in todo]
        groups = [lives[b].request.vision.temporal_ids for b in todo]
        if self.vision_cache is not None:
            encoded = self.vision_cache.encode(self.model, pixels, sizes, groups)
        else:
            on_device = [[s.to(self.device) for s in item] for item in pixels]
            encoded = self.model.vision_per_item(on_device, sizes, groups)
        for b, e in zip(todo, encoded):
            feats[b] = e
        return feats

    def _merge(self, cache: KVCache, mask: torch.Tensor, seen: torch.Tensor, rows: list[tuple[_Live, int]]) -> None:
        """Join new rows to the running batch, right-aligned to a common length, in a cache big enough
        for every row's remaining token budget."""
        old = self._cache
        n_old, l_old = (old.batch_size, old.length) if old is not None else (0, 0)
        length = max(l_old, cache.length)
        budget = max(l.params.max_new_tokens - l.steps for l, _ in self._rows + rows)
        big = KVCache.allocate(self.llm_cfg, n_old + len(rows), length + budget, self.dtype, self.device)
        big_mask = torch.zeros(n_old + len(rows), length + budget, dtype=torch.long, device=self.device)
        for part, part_mask, first in ((old, self._mask, 0), (cache, mask, n_old)):
            if part is None:
                continue
            n, s = part.batch_size, part.length
            big.k[:, first : first + n, :, length - s : length] = part.k[:, :, :, :s]
            big.v[:, first : first + n, :, length - s : length] = part.v[:, :, :, :s]
            big_mask[first : first + n, length - s : length] = part_mask[:, :s]
        big.length = length
        last = torch.zeros(len(rows), dtype=torch.long, device=self.device)
        self._cache, self._mask = big, big_mask
        self._seen = seen if self._seen is None else torch.cat([self._seen, seen])
        self._last = last if self._last is None else torch.cat([self._last, last])
        self._rows = self._rows + rows

    def _keep_rows(self, keep: list[int]) -> None:
        """Drop every other row from the batch (and its cache), then cut all-padding leading columns."""
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._rows, self._cache, self._mask, self._seen, self._last = [], None, None, None, None
            return
        idx = torch.tensor(keep, device=self.device)
        self._cache = self._cache.select(idx)
        self._mask, self._seen, self._last = self._mask[idx], self._seen[idx], self._last[idx]
        self._rows = [self._rows[i] for i in keep]
        used = self._mask[:, : self._cache.length].any(0)  # [S]: column holds a real token of some row
        first = int(used.int().argmax())
        if first > 0:
            c = self._cache
            self._cache = KVCache(c.k[:, :, :, first:], c.v[:, :, :, first:], c.length - first)
            self._mask = self._mask[:, first:]

    # ---- choosing tokens --------------------------------------------------------------------------
    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        """Next token of every row: int64[B] (beam requests also reorder their rows here)."""
        sample_rows = [i for i, (live, _) in enumerate(self._rows) if live.beams is None]
        if len(sample_rows) == len(self._rows):
            return self._sample_rows(sample_rows, logits)
        tokens = torch.zeros(len(self._rows), dtype=torch.long, device=self.device)
        if sample_rows:
            idx = torch.tensor(sample_rows, device=self.device)
            tokens[idx] = self._sample_rows(sample_rows, logits[idx])
        beam_lives = {id(live): live for live, _ in self._rows if live.beams is not None}
        for live in beam_lives.values():
            rows = [i for i, (l, _) in enumerate(self._rows) if l is live]
            idx = torch.tensor(rows, device=self.device)
            tokens[idx] = self._beam_step(live, rows, logits[idx])
        return tokens

    def _processed_scores(self, rows: list[int], scores: torch.Tensor) -> torch.Tensor:
        """Repetition penalty, then the min_new_tokens ban on stop ids (HF logits processors)."""
        lives = [self._rows[i][0] for i in rows]
        penalty = torch.tensor([l.params.repetition_penalty for l in lives], device=scores.device)
        if bool((penalty != 1).any()):
            scores = sampling.apply_repetition_penalty(scores, self._seen[torch.tensor(rows, device=self.device)], penalty)
        young = [l.steps < l.params.min_new_tokens for l in lives]
        for stops in {l.stop_ids for l, y in zip(lives, young) if y}:
            ban = torch.tensor([y and l.stop_ids == stops for l, y in zip(lives, young)], device=scores.device)
            scores = sampling.ban_tokens(scores, torch.tensor(stops, device=scores.device), ban)
        return scores

    def _sample_rows(self, rows: list[int], logits: torch.Tensor) -> torch.Tensor:
        """Greedy (temperature 0) or sampled token for each sampling row: int64[len(rows)]."""
        scores = self._processed_scores(rows, logits)
        lives = [self._rows[i][0] for i in rows]
        if all(l.params.temperature == 0 for l in lives):
            return sampling.greedy(scores)
        greedy = torch.tensor([l.params.temperature == 0 for l in lives], device=scores.device)
        out = torch.zeros(len(rows), dtype=torch.long, device=scores.device)
        if bool(greedy.any()):
            out[greedy] = sampling.greedy(scores[greedy])
        hot = [l for l in lives if l.params.temperature > 0]
        if hot:
            def param(name, dtype=torch.float32):
                return torch.tensor([getattr(l.params, name) for l in hot], dtype=dtype, device=scores.device)

            out[~greedy] = sampling.sample(
                scores[~greedy], param("temperature"), param("top_k", torch.long), param("top_p"),
                param("min_p"), [l.generator for l in hot],
            )
        return out

    def _beam_step(self, live: _Live, rows: list[int], logits: torch.Tensor) -> torch.Tensor:
        """One HF beam-search step for one request: K rows of logits -> K next tokens.

        Scores are log-softmax values, then repetition penalty / min_new_tokens (HF applies its
        processors to log-probs in beam search), plus each beam's running sum. The best
        max(2, 1 + #stop ids) * K continuations are ranked: those ending in a stop id or at
        max_new_tokens and ranked in the top K become finished hypotheses scored
        sum / length ** length_penalty (length includes the stop token); the best K others run on.
        The request ends when no running beam can beat the worst of K finished hypotheses
        (HF's early_stopping=False heuristic) or every candidate finished.
        """
        b, p, k = live.beams, live.params, live.params.num_beams
        logp = self._processed_scores(rows, torch.log_softmax(logits, dim=-1))  # [K, V]
        vocab = logp.shape[-1]
        total = (logp + b.scores[:, None]).reshape(-1)  # [K*V]
        top, flat = total.topk(min(max(2, 1 + len(live.stop_ids)) * k, total.numel()))
        src, tok = (flat // vocab).tolist(), (flat % vocab).tolist()
        ended = [t in live.stop_ids or live.steps + 1 >= p.max_new_tokens for t in tok]
        self._beam_collect_finished(live, top.tolist(), src, tok, ended)
        keep = (top + torch.tensor(ended, device=top.device).float() * -1e9).topk(k).indices.tolist()
        b.scores = top[keep] + torch.tensor([ended[j] for j in keep], device=top.device).float() * -1e9
        b.tokens = [b.tokens[src[j]] + [tok[j]] for j in keep]
        worst = min(s for s, _, _ in b.finished) if len(b.finished) == k else -1e9
        b.improvable = b.improvable and float(b.scores[0]) / (live.steps + 1) ** p.length_penalty > worst
        b.done = not b.improvable or all(ended)
        source = torch.tensor([rows[src[j]] for j in keep], device=self.device)
        target = torch.tensor(rows, device=self.device)
        self._cache.k[:, target] = self._cache.k[:, source]  # beams continue from their parents' cache rows
        self._cache.v[:, target] = self._cache.v[:, source]
        self._seen[target] = self._seen[source]
        return torch.tensor([tok[j] for j in keep], device=self.device)

    def _beam_collect_finished(
        self, live: _Live, top: list[float], src: list[int], tok: list[int], ended: list[bool]
    ) -> None:
        """Add candidates ranked < K that ended to the K best finished hypotheses (while improvable)."""
        b, p, k = live.beams, live.params, live.params.num_beams
        if not b.improvable:
            return
        length = live.steps + 1
        for rank, (score, s, t, e) in enumerate(zip(top, src, tok, ended)):
            if e and rank < k:
                ids = b.tokens[s] + ([] if t in live.stop_ids else [t])
                reason = "stop" if t in live.stop_ids else "length"
                b.finished.append((score / length**p.length_penalty, ids, reason))
        b.finished = sorted(b.finished, key=lambda f: -f[0])[:k]

    # ---- emitting and retiring --------------------------------------------------------------------
    def _advance(self, tokens: torch.Tensor) -> list[TokenEvent]:
        """Record each row's token, emit text, retire finished rows; the events of this step."""
        events, keep = [], []
        for i, ((live, slot), token) in enumerate(zip(self._rows, tokens.tolist())):
            if live.beams is None:
                events.append(self._append(live, live.seqs[slot], token))
                if live.seqs[slot].finish_reason is None:
                    keep.append(i)
            elif not live.beams.done:
                keep.append(i)
        lives = list({id(l): l for l, _ in self._rows}.values())
        for live in lives:
            live.steps += 1
            if live.beams is not None and live.beams.done:
                events.extend(self._finish_beams(live))
            if live.finished:
                self._running.pop(live.id, None)
        self._seen[torch.arange(len(tokens), device=self.device), tokens] = True
        self._last = tokens
        self._keep_rows(keep)
        return events

    def _append(self, live: _Live, seq: _Sequence, token: int) -> TokenEvent:
        """Add one sampled token to a sequence: detokenise, check stops and length, emit safe text."""
        p = live.params
        seq.num_generated += 1
        reason = None
        if token in live.stop_ids:
            reason = "stop"
        else:
            seq.token_ids.append(token)
            seq.pending += seq.decoder.add(token)
            if len(seq.token_ids) >= p.max_new_tokens:
                reason = "length"
        if reason is not None:
            seq.pending += seq.decoder.flush()
        cut, safe = (None, len(seq.pending))
        if p.stop and len(seq.token_ids) >= p.min_new_tokens:
            cut, safe = scan_stop_strings(seq.pending, p.stop)
        if cut is not None:
            reason = "stop"
        elif reason is not None:
            safe = len(seq.pending)
        text, seq.pending = seq.pending[:safe], ("" if reason else seq.pending[safe:])
        seq.text += text
        seq.finish_reason = reason
        done = None if reason is None else _completion(seq)
        return TokenEvent(live.id, seq.index, token, text, finished=done is not None, finish_reason=reason, completion=done)

    def _finish_beams(self, live: _Live) -> list[TokenEvent]:
        """The n best finished hypotheses become the request's completions (one event each)."""
        events = []
        for index, (_, ids, reason) in enumerate(live.beams.finished[: live.params.n]):
            decoder = IncrementalDecoder(self.tokenizer)
            text = decoder.add_many(ids) + decoder.flush()
            live.completions.append(Completion(ids, text, reason, len(ids) + (reason == "stop")))
            events.append(TokenEvent(live.id, index, None, text, True, reason, live.completions[-1]))
        return events

    def abort_all(self) -> list[int]:
        """Drop every waiting and running request (after an internal error); their ids."""
        ids = [l.id for l in self._waiting] + list(self._running)
        self._waiting, self._running = [], {}
        self._keep_rows([])
        return ids


# ---- background loop ------------------------------------------------------------------------------

EventCallback = Callable[["TokenEvent | BaseException"], None]


class EngineLoop:
    """Runs `engine.step()` in one background thread while there is work (dynamic batching).

    `submit` and `cancel` may be called from any thread; each request's events go to its callback,
    called from the loop thread (keep it short: e.g. `loop.call_soon_threadsafe(queue.put_nowait, e)`).
    After a request's last event (finished=True for each of its sequences) the callback is dropped.
    If a step raises, every request in flight receives the exception and the loop carries on.
    """

    def __init__(self, engine: Engine, name: str = "minicpmv-engine"):
        self.engine = engine
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._callbacks: dict[int, EventCallback] = {}
        self._open: dict[int, int] = {}  # request id -> sequences not finished yet
        self._ids = itertools.count()
        self._wake = threading.Event()
        self._closing: bool | None = None  # None = open; else "cancel running requests?"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, request: Request, on_event: EventCallback) -> int:
        """Validate (InputError now, in the caller's thread) and queue a request; its id."""
        if self._closing is not None:
            raise RuntimeError("the engine loop is shut down; no new requests are accepted")
        cfg = self.engine.llm_cfg
        check_request(request, cfg.vocab_size, cfg.max_position_embeddings)
        rid = next(self._ids)
        self._inbox.put(("add", rid, request, on_event))
        self._wake.set()
        return rid

    def cancel(self, request_id: int) -> None:
        """Cancel a request (no-op when it already finished); its callback gets 'cancelled' events."""
        self._inbox.put(("cancel", request_id, None, None))
        self._wake.set()

    def close(self, cancel_running: bool = False, timeout: float | None = None) -> None:
        """Stop accepting requests; finish (or cancel) those in flight; join the thread."""
        self._closing = cancel_running
        self._wake.set()
        self._thread.join(timeout)

    @property
    def pending(self) -> int:
        """Requests submitted and not finished."""
        return len(self._open) + self._inbox.qsize()

    def _run(self) -> None:
        while True:
            self._wake.clear()
            self._drain()
            if self._closing is not None and (self._closing or not self.engine.has_work):
                for rid in list(self._open):
                    self._dispatch(self.engine.cancel(rid))
                return
            if not self.engine.has_work:
                self._wake.wait()
                continue
            try:
                self._dispatch(self.engine.step())
            except Exception as error:  # noqa: BLE001 - forwarded to every caller, the loop survives
                for rid in self.engine.abort_all():
                    self._fail(rid, error)

    def _drain(self) -> None:
        while True:
            try:
                kind, rid, request, callback = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                self._callbacks[rid] = callback
                self._open[rid] = request.params.n
                try:
                    self.engine.add_request(request, request_id=rid)
                except Exception as error:  # noqa: BLE001
                    self._fail(rid, error)
            else:
                self._dispatch(self.engine.cancel(rid))

    def _dispatch(self, events: list[TokenEvent]) -> None:
        for event in events:
            callback = self._callbacks.get(event.request_id)
            if callback is None:
                continue
            try:
                callback(event)
            except Exception:  # noqa: BLE001 - a caller that cannot take events any more: stop its request
                self._callbacks.pop(event.request_id, None)
                self._open.pop(event.request_id, None)
                self.engine.cancel(event.request_id)
                continue
            if event.finished:
                self._open[event.request_id] -= 1
                if self._open[event.request_id] == 0:
                    del self._open[event.request_id], self._callbacks[event.request_id]

    def _fail(self, rid: int, error: BaseException) -> None:
        callback = self._callbacks.pop(rid, None)
        self._open.pop(rid, None)
        if callback is not None:
            callback(error)
