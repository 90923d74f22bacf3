"""Chat on top of the engine: the official-compatible `chat()`, `chat_detailed()` and `ChatService`.

`chat(model, image=None, msgs=None, tokenizer=None, processor=None, ...)` takes the official
argument names and order (architecture spec §6.3), so `model.chat(image=None, msgs=msgs,
tokenizer=...)` code keeps working; `chat(model, msgs)` with the messages first works too. It
returns the official strings; `chat_detailed` returns `ChatResult`s with reasoning and answer apart.

`ChatService(model, processor)` is what the CLI and the server use: one engine running in a
background thread, so concurrent `stream` / `complete` / `generate` calls are batched together
(a new request joins at the next decode step), with cancellation when a caller stops reading.

Differences from the reference `chat()`, on purpose: a generated `!` (id 0) is kept (the reference
deletes every id 0 from its output); prompts longer than `max_inp_length` raise InputError instead
of being cut from the right; images already seen are not re-encoded (vision cache, per model);
unknown keyword arguments raise a warning instead of being dropped silently.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import warnings
import weakref
from collections import OrderedDict
from copy import deepcopy
from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Mapping, Sequence

import torch

from minicpmv.errors import InputError
from minicpmv.inference.engine import Completion, Engine, EngineLoop, Request, TokenEvent, VisionInputs
from minicpmv.inference.types import ChatResult, MediaOptions, SamplingParams, StreamEvent, Usage
from minicpmv.inference.vision_cache import VisionCache
from minicpmv.processor.chat_template import EMPTY_THINK
from minicpmv.processor.processor import EncodedSample, Processor
from minicpmv.processor.tokenizer import Tokenizer

THINK_END = "</think>"
THINK_PREFILL = "<think>\n"  # the end of a thinking-mode prompt; the official chat() returns it with the text


# ---- thinking: reasoning vs answer ------------------------------------------------------------------


def split_thinking(text: str, enable_thinking: bool) -> tuple[str, str]:
    """(reasoning, answer) of a generated text, both stripped.

    A thinking-mode prompt ends with `<think>\\n`, so the model writes its reasoning, `</think>`,
    then the answer. Example: 'Two shapes.\\n</think>\\n\\nThere are 2.' -> ('Two shapes.',
    'There are 2.'); without `</think>` (cut by max_new_tokens) all of it is reasoning. In
    non-thinking mode the prompt already closed the think block: everything is answer.
    """
    if not enable_thinking:
        return "", text.strip()
    reasoning, marker, answer = text.partition(THINK_END)
    return reasoning.strip(), answer.strip() if marker else ""


class ThinkingSplitter:
    """Streaming version of `split_thinking`: the pieces of each kind concatenate to exactly its result.

    Text is held back while it could be the start of `</think>`, and trailing whitespace is held
    until more text follows (leading whitespace of each part is dropped), so nothing has to be
    taken back. Example (thinking): feed('Hm') -> [('reasoning', 'Hm')]; feed(' \\n</thi') -> [];
    feed('nk>\\n\\nYes') -> [('answer', 'Yes')]; finish() -> [].
    """

    def __init__(self, enable_thinking: bool):
        self.kind = "reasoning" if enable_thinking else "answer"
        self._held = ""
        self._started = False  # the current part has emitted something (so keep inner whitespace)

    def feed(self, text: str) -> list[tuple[str, str]]:
        self._held += text
        out: list[tuple[str, str]] = []
        if self.kind == "reasoning" and THINK_END in self._held:
            before, _, self._held = self._held.partition(THINK_END)
            out += self._emit(before.rstrip())
            self.kind, self._started = "answer", False
        marker = _partial_suffix(self._held, THINK_END) if self.kind == "reasoning" else 0
        before = self._held[: len(self._held) - marker]
        keep = marker + len(before) - len(before.rstrip())  # a possible '</think>' start and the whitespace before it
        ready, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep :]
        return out + self._emit(ready)

    def finish(self) -> list[tuple[str, str]]:
        rest, self._held = self._held.rstrip(), ""
        return self._emit(rest)

    def _emit(self, text: str) -> list[tuple[str, str]]:
        if not self._started:
            text = text.lstrip()
        if not text:
            return []
        self._started = True
        return [(self.kind, text)]


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker` ('ab</th' -> 4)."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


# ---- requests ----------------------------------------------------------------------------------------


def sample_to_request(sample: EncodedSample, params: SamplingParams, features: torch.Tensor | None = None) -> Request:
    """A processor `EncodedSample` (one unpadded conversation) -> an engine `Request`."""
    vision = None
    if len(sample.image_bounds):
        vision = VisionInputs(
            image_bounds=sample.image_bounds, pixel_values=list(sample.pixel_values), tgt_sizes=sample.tgt_sizes,
            temporal_ids=sample.temporal_ids, features=features,
        )
    return Request(list(sample.input_ids), params, vision)


def chat_result(completion: Completion, enable_thinking: bool, prompt: Usage) -> ChatResult:
    reasoning, answer = split_thinking(completion.text, enable_thinking)
    usage = replace(prompt, completion_tokens=completion.num_generated)
    return ChatResult(completion.text, reasoning, answer, completion.token_ids, completion.finish_reason, usage)


def prompt_usage(sample: EncodedSample) -> Usage:
    bounds = sample.image_bounds
    visual = int((bounds[:, 1] - bounds[:, 0]).sum()) if len(bounds) else 0
    return Usage(prompt_tokens=len(sample.input_ids), visual_tokens=visual)


# ---- the official chat() ------------------------------------------------------------------------------

_VISION_CACHES: "weakref.WeakKeyDictionary[Any, VisionCache]" = weakref.WeakKeyDictionary()
_OFFICIAL_ARGS = ("image", "msgs", "tokenizer", "processor", "vision_hidden_states")


def vision_cache_for(model, max_bytes: int = 1 << 30) -> VisionCache:
    """The vision cache `chat()` keeps for `model` (dropped with the model): a later turn about the
    same image or video reuses its encoding."""
    cache = _VISION_CACHES.get(model)
    if cache is None:
        cache = _VISION_CACHES[model] = VisionCache(max_bytes)
    return cache


def official_params(
    enable_thinking: bool, sampling: bool, max_new_tokens: int, min_new_tokens: int, overrides: Mapping[str, Any]
) -> SamplingParams:
    """The generation settings of the official `chat()` (spec §6.3), then `overrides` (its **kwargs).

    As in the reference, kwargs may only change keys its settings dict already holds:
    sampling: temperature, do_sample (+ top_p, top_k, repetition_penalty when not thinking);
    beam search (sampling=False): num_beams, repetition_penalty. Others are ignored (with a warning
    here). Example: sampling=True, enable_thinking=True, top_p=0.5 -> top_p stays 1.0, warned.
    """
    if sampling:
        allowed = {"temperature", "do_sample"} | (set() if enable_thinking else {"top_p", "top_k", "repetition_penalty"})
    else:
        allowed = {"num_beams", "repetition_penalty"}
    ignored = sorted(set(overrides) - allowed)
    if ignored:
        warnings.warn(
            f"chat() ignores {ignored} here (as the official chat() does); it accepts {sorted(allowed)} "
            f"with sampling={sampling}, enable_thinking={enable_thinking}",
            stacklevel=3,
        )
    used = {k: v for k, v in overrides.items() if k in allowed}
    do_sample = used.pop("do_sample", True)
    params = SamplingParams.for_mode(
        enable_thinking, sampling, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, **used
    )
    return replace(params, temperature=0.0) if sampling and not do_sample else params


def resolve_processor(model, processor: Any, tokenizer: Any) -> Processor:
    """The processor to use: `processor`, or a `Processor` passed as tokenizer (official code passes
    the processor's tokenizer there), or one built from our `Tokenizer` and the model config."""
    if isinstance(processor, Processor):
        return processor
    if isinstance(tokenizer, Processor):
        return tokenizer
    if isinstance(tokenizer, Tokenizer):
        from minicpmv.config import ProcessorConfig

        c = model.config
        cfg = ProcessorConfig(max_slice_nums=c.max_slice_nums, scale_resolution=c.scale_resolution,
                              patch_size=c.patch_size, image_feature_size=c.query_num, slice_mode=c.slice_mode)
        return Processor(tokenizer, cfg)
    raise InputError(
        "chat() needs processor=minicpmv.Processor.from_pretrained(<model folder>) (or tokenizer= a "
        f"minicpmv Tokenizer); got processor={type(processor).__name__}, tokenizer={type(tokenizer).__name__}. "
        "A transformers tokenizer cannot be used: this package does not depend on transformers"
    )


def official_conversations(image: Any, msgs: Any) -> tuple[bool, list[list[dict]]]:
    """(batched, conversations) the way the reference reads `image` and `msgs`.

    msgs: a list of messages, a JSON string of one, or a list of such (a batch; then image must
    be None). `image` goes before the text of the first message when that content is a string.
    """
    if isinstance(msgs, str):
        msgs = json.loads(msgs)
    if not isinstance(msgs, (list, tuple)) or not msgs:
        raise InputError("msgs must be a non-empty list of {'role', 'content'} messages (or a list of such lists), "
                         f"got {msgs!r:.80}")
    batched = isinstance(msgs[0], (list, tuple, str))
    if batched and image is not None:
        raise InputError("with a batch of conversations pass image=None and put each image inside its msgs")
    convs = [json.loads(m) if isinstance(m, str) else m for m in msgs] if batched else [msgs]
    convs = [[dict(m) if isinstance(m, Mapping) else m for m in conv] for conv in convs]  # never edit the caller's dicts
    if image is not None and isinstance(convs[0][0], dict) and isinstance(convs[0][0].get("content"), str):
        convs[0][0]["content"] = [image, convs[0][0]["content"]]
    return batched, convs


def _official_run(model, image, msgs, tokenizer, processor, vision_hidden_states, max_new_tokens, min_new_tokens,
                  sampling, max_inp_length, system_prompt, max_slice_nums, use_image_id, temporal_ids,
                  enable_thinking, kwargs) -> tuple[bool, Engine, list[Request], list[Usage]]:
    """Shared first half of chat()/chat_detailed(): conversations -> engine requests."""
    if msgs is None and isinstance(image, (list, tuple, str)):  # chat(model, msgs): messages given first
        image, msgs = None, image
    processor = resolve_processor(model, processor, tokenizer)
    batched, convs = official_conversations(image, msgs)
    params = official_params(enable_thinking, sampling, max_new_tokens, min_new_tokens, kwargs)
    tids = temporal_ids if batched else [temporal_ids]
    if tids is not None and len(tids) != len(convs):
        raise InputError(f"temporal_ids: one entry (list of groups or None) per conversation; {len(tids)} for {len(convs)}")
    if vision_hidden_states is not None and len(vision_hidden_states) != len(convs):
        raise InputError(f"vision_hidden_states: one tensor per conversation; {len(vision_hidden_states)} for {len(convs)}")
    requests, usages = [], []
    for b, conv in enumerate(convs):
        sample = processor.encode(
            conv, enable_thinking=enable_thinking, system_prompt=system_prompt, max_slice_nums=max_slice_nums,
            use_image_id=use_image_id, temporal_ids=None if tids is None else tids[b], max_length=max_inp_length,
            sample_index=b,
        )
        features = None if vision_hidden_states is None else vision_hidden_states[b]
        requests.append(sample_to_request(sample, params, features))
        usages.append(prompt_usage(sample))
    rows = sum(max(params.n, params.num_beams) for _ in requests)
    engine = Engine(model, processor.tokenizer, vision_cache=vision_cache_for(model), max_batch_size=max(32, rows))
    return batched, engine, requests, usages


def chat(model, image=None, msgs=None, tokenizer=None, processor=None, vision_hidden_states=None,
         max_new_tokens: int = 2048, min_new_tokens: int = 0, sampling: bool = True, max_inp_length: int = 16384,
         system_prompt: str = "", stream: bool = False, max_slice_nums: int | None = None,
         use_image_id: bool | None = None, temporal_ids=None, enable_thinking: bool = False, **kwargs):
    """The official `MiniCPMV.chat()`: returns the answer string (a list of strings for a batch of msgs),
    or with stream=True a generator of text pieces.

    Like the reference, thinking mode returns '<think>\\n' + the generated text (reasoning,
    '</think>', answer): the prompt's `<think>\\n` echoed. `chat_detailed` gives them apart.
    sampling=True samples (temperature 0.7, ...; seed it with `torch.manual_seed`); sampling=False
    is beam search with 3 beams and repetition penalty 1.2. A generated '!' is kept.
    """
    batched, engine, requests, _ = _official_run(
        model, image, msgs, tokenizer, processor, vision_hidden_states, max_new_tokens, min_new_tokens, sampling,
        max_inp_length, system_prompt, max_slice_nums, use_image_id, temporal_ids, enable_thinking, kwargs)
    prefix = THINK_PREFILL if enable_thinking else ""
    if stream:
        if not sampling or batched:
            raise InputError("stream=True works with sampling=True and one conversation (as the official chat())")
        return _official_stream(engine, requests[0], prefix)
    texts = [prefix + out.completions[0].text.strip() for out in engine.generate(requests)]
    return texts if batched else texts[0]


def _official_stream(engine: Engine, request: Request, prefix: str) -> Iterator[str]:
    rid = engine.add_request(request)
    if prefix:
        yield prefix
    try:
        while engine.has_work:
            for event in engine.step():
                if event.request_id == rid and event.text:
                    yield event.text
    finally:
        engine.cancel(rid)  # the caller stopped reading early: free the rows


def chat_detailed(model, image=None, msgs=None, tokenizer=None, processor=None, vision_hidden_states=None,
                  max_new_tokens: int = 2048, min_new_tokens: int = 0, sampling: bool = True,
                  max_inp_length: int = 16384, system_prompt: str = "", max_slice_nums: int | None = None,
                  use_image_id: bool | None = None, temporal_ids=None, enable_thinking: bool = False,
                  **kwargs) -> ChatResult | list[ChatResult]:
    """`chat()` with the same arguments (no streaming) returning `ChatResult`s: raw text (no echoed
    '<think>\\n'), reasoning and answer apart, token ids, finish reason and token counts."""
    batched, engine, requests, usages = _official_run(
        model, image, msgs, tokenizer, processor, vision_hidden_states, max_new_tokens, min_new_tokens, sampling,
        max_inp_length, system_prompt, max_slice_nums, use_image_id, temporal_ids, enable_thinking, kwargs)
    outs = engine.generate(requests)
    results = [chat_result(out.completions[0], enable_thinking, usage) for out, usage in zip(outs, usages)]
    return results if batched else results[0]


# ---- the service used by the CLI and the server ------------------------------------------------------


class ChatService:
    """Conversations in, `ChatResult`s or `StreamEvent`s out, for many concurrent callers.

    One `EngineLoop` thread runs the model; `stream`/`complete` (async) and `generate` (blocking)
    submit to it, so concurrent calls share decode steps. Pre-processing (image slicing, video
    decoding) runs in the caller's thread (a worker thread for the async methods), never in the
    engine thread. A stream that is closed before its end cancels its request.

    messages: [{'role', 'content': str | list of parts}] as `Processor` takes them (typed dict parts
    included); `MediaOptions` fps/packing/max_groups fill in video dict parts that do not set them.
    """

    def __init__(self, model, processor: Processor, *, max_batch_size: int = 32, vision_cache_bytes: int = 1 << 30,
                 max_prompt_tokens: int | None = None, model_name: str | None = None):
        self.model, self.processor = model, processor
        self.engine = Engine(model, processor.tokenizer, vision_cache=VisionCache(vision_cache_bytes),
                             max_batch_size=max_batch_size)
        self.loop = EngineLoop(self.engine)
        self.max_prompt_tokens = max_prompt_tokens
        self.model_name = model_name or Path(model.config.name_or_path or "minicpmv").name
        self._counted: OrderedDict[tuple, tuple[Any, EncodedSample]] = OrderedDict()  # see count_tokens
        self._lock = threading.Lock()

    # ---- preparing requests -------------------------------------------------------------------------
    def encode(self, messages: Sequence[Mapping[str, Any]], enable_thinking: bool = False,
               media: MediaOptions = MediaOptions(), system_prompt: str = "") -> EncodedSample:
        """The processor's view of one conversation (reusing the one `count_tokens` just made)."""
        key = (id(messages), media, system_prompt)
        with self._lock:
            hit = self._counted.pop(key, None)
        if hit is not None and hit[0] is messages:
            return with_thinking(hit[1], self.processor.tokenizer) if enable_thinking else hit[1]
        return self.processor.encode(
            _with_video_defaults(messages, media), enable_thinking=enable_thinking, system_prompt=system_prompt,
            max_slice_nums=media.max_slice_nums, use_image_id=media.use_image_id, max_length=self.max_prompt_tokens,
        )

    def count_tokens(self, messages: Sequence[Mapping[str, Any]], media: MediaOptions = MediaOptions(),
                     system_prompt: str = "") -> Usage:
        """Prompt and visual token counts of a conversation (non-thinking prompt; the thinking one is 2 tokens shorter).

        The encoded conversation is kept for the next `stream`/`complete`/`generate` call with the
        same messages object, so the server does not load and slice its media twice.
        """
        sample = self.encode(messages, False, media, system_prompt)
        with self._lock:
            self._counted[(id(messages), media, system_prompt)] = (messages, sample)
            while len(self._counted) > 8:
                self._counted.popitem(last=False)
        return prompt_usage(sample)

    def _submit(self, messages, params, enable_thinking, media, system_prompt, callback) -> tuple[int, Usage]:
        sample = self.encode(messages, enable_thinking, media, system_prompt)
        rid = self.loop.submit(sample_to_request(sample, params or SamplingParams.for_mode(enable_thinking)), callback)
        return rid, prompt_usage(sample)

    # ---- running them -------------------------------------------------------------------------------
    async def stream(self, messages, params: SamplingParams | None = None, *, enable_thinking: bool = False,
                     media: MediaOptions = MediaOptions(), system_prompt: str = "") -> AsyncIterator[StreamEvent]:
        """StreamEvents of the request's n completions as they are generated (reasoning/answer kinds);
        each completion ends with a finished event carrying its Usage. Input errors raise InputError
        before the first event. Closing the iterator early cancels the request."""
        aio = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()

        def deliver(event):
            aio.call_soon_threadsafe(inbox.put_nowait, event)

        submitting = asyncio.ensure_future(
            asyncio.to_thread(self._submit, messages, params, enable_thinking, media, system_prompt, deliver))
        try:
            rid, usage = await asyncio.shield(submitting)
        except asyncio.CancelledError:  # the caller left during pre-processing: cancel once it is submitted
            submitting.add_done_callback(lambda t: t.cancelled() or t.exception() or self.loop.cancel(t.result()[0]))
            raise
        events = _Events(params.n if params else 1, enable_thinking, usage)
        try:
            while not events.done:
                item = await inbox.get()
                if isinstance(item, BaseException):
                    raise item
                for out in events.convert(item):
                    yield out
        finally:
            if not events.done:
                self.loop.cancel(rid)

    async def complete(self, messages, params: SamplingParams | None = None, *, enable_thinking: bool = False,
                       media: MediaOptions = MediaOptions(), system_prompt: str = "") -> list[ChatResult]:
        """The request's n completions once finished (a cancelled await cancels the request)."""
        agen = self.stream(messages, params, enable_thinking=enable_thinking, media=media, system_prompt=system_prompt)
        results: dict[int, ChatResult] = {}
        try:
            async for event in agen:
                if event.finished:
                    results[event.index] = event.result
        finally:
            await agen.aclose()
        return [results[i] for i in sorted(results)]

    def generate(self, messages, params: SamplingParams | None = None, enable_thinking: bool = False,
                 media: MediaOptions = MediaOptions(), system_prompt: str = "") -> list[ChatResult]:
        """Blocking `complete`: the n ChatResults of one conversation (batched with concurrent calls)."""
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        rid, usage = self._submit(messages, params, enable_thinking, media, system_prompt, inbox.put)
        events = _Events(params.n if params else 1, enable_thinking, usage)
        results: dict[int, ChatResult] = {}
        try:
            while not events.done:
                item = inbox.get()
                if isinstance(item, BaseException):
                    raise item
                results.update({e.index: e.result for e in events.convert(item) if e.finished})
        finally:
            if not events.done:
                self.loop.cancel(rid)
        return [results[i] for i in sorted(results)]

    def close(self, cancel_running: bool = False, timeout: float | None = None) -> None:
        """Stop the engine thread after finishing (or cancelling) the requests in flight."""
        self.loop.close(cancel_running, timeout)


class _Events:
    """Turns one request's engine TokenEvents into StreamEvents (and ChatResults at the end)."""

    def __init__(self, n: int, enable_thinking: bool, usage: Usage):
        self.enable_thinking, self.usage = enable_thinking, usage
        self.splitters = [ThinkingSplitter(enable_thinking) for _ in range(n)]
        self.open = n

    @property
    def done(self) -> bool:
        return self.open == 0

    def convert(self, event: TokenEvent) -> list[StreamEvent]:
        splitter = self.splitters[event.index]
        out = [StreamEvent(event.index, kind, text) for kind, text in splitter.feed(event.text)]
        if event.finished:
            out += [StreamEvent(event.index, kind, text) for kind, text in splitter.finish()]
            result = chat_result(event.completion, self.enable_thinking, self.usage)
            out.append(StreamEvent(event.index, splitter.kind, "", True, event.finish_reason, result.usage, result))
            self.open -= 1
        return out


def with_thinking(sample: EncodedSample, tokenizer: Tokenizer) -> EncodedSample:
    """The thinking-mode version of a non-thinking prompt: its generation suffix
    `<think>\n\n</think>\n\n` becomes `<think>\n` (added tokens split the text, so the ids before
    the suffix are the same either way; tested against encoding with enable_thinking=True)."""
    off, on = tokenizer.encode(EMPTY_THINK), tokenizer.encode(THINK_PREFILL)
    ids = sample.input_ids
    if ids[-len(off):] != off:
        raise ValueError(f"prompt does not end with the non-thinking generation suffix {off}: {ids[-len(off):]}")
    return replace(sample, input_ids=ids[: -len(off)] + on)


def _with_video_defaults(messages: Sequence[Mapping[str, Any]], media: MediaOptions) -> Sequence[Mapping[str, Any]]:
    """Fill MediaOptions fps/packing/max_groups into typed video parts ({'type': 'video', ...}) lacking them."""
    defaults = {k: v for k, v in (("fps", media.fps), ("packing", media.packing), ("max_groups", media.max_groups))
                if v is not None}
    if not defaults:
        return messages
    out = []
    for msg in messages:
        content = msg.get("content") if isinstance(msg, Mapping) else None
        if isinstance(content, list):
            parts = [{**defaults, **p} if isinstance(p, Mapping) and p.get("type") == "video" else p for p in content]
            msg = {**msg, "content": parts}
        out.append(msg)
    return out
