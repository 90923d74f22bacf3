"""lmms-eval adapter: `MiniCPMVLmms`, an `lmms_eval.api.model.lmms` running this implementation.

lmms-eval ("simple" model interface) hands the model lists of `Instance`s whose `args` are:
  generate_until:             (context, gen_kwargs, doc_to_visual, doc_id, task, split)
  loglikelihood:              (context, continuation or doc_to_target, doc_to_visual, doc_id, task, split),
                              or (context, continuation) for unconditional scores
  generate_until_multi_round: (context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split)
and the documents in `self.task_dict[task][split][doc_id]`. Visuals are PIL images or file paths;
a video path is sampled with the official recipe and packed into 3D groups.

Prompts: the context becomes one user turn (visuals first, or at its `<image>` marks when their
count matches) in the official chat template. `generate_until` decodes greedily unless gen_kwargs
ask otherwise, stopping at `until`; with thinking on, the official thinking sampling runs with at
least `thinking_max_new_tokens` and `until` applies to the answer after `</think>`.
`loglikelihood` scores the continuation (leading whitespace removed: it starts the assistant turn)
after the non-thinking prompt: sum of its tokens' log-probs and whether greedy decoding gives it.

Registered for lmms-eval through the `lmms_eval.models` entry-point group (pyproject.toml) as
`--model minicpmv`. Without lmms-eval installed the base class is `LocalLmms`, a stand-in with the
same call shapes; with it installed the class subclasses the real `lmms` (the registry checks that).
"""

from __future__ import annotations

import abc
import warnings
from dataclasses import replace
from typing import Any, Mapping, Sequence

import torch
from tqdm import tqdm

from minicpmv.errors import InputError
from minicpmv.eval.adapters.common import (
    LONG_COT_DATASETS, VIDEO_MAX_INP_LENGTH, ModelRunner, Prompt, VideoSettings, dataset_in, has_video, kit_base,
    media_part, parse_positive_int, parse_thinking,
)
from minicpmv.eval.prompts import MAX_INPUT_TOKENS
from minicpmv.inference.types import SamplingParams
from minicpmv.processor.chat_template import EMPTY_THINK
from minicpmv.processor.processor import EncodedSample

IMAGE_MARK = "<image>"  # lmms-eval contexts may mark where visuals go
MAX_ROUNDS = 64  # generate_until_multi_round guard against a doc_to_text that never ends


class _NoCache:
    def add_partial(self, attr, req, res) -> None:
        pass


class LocalLmms(abc.ABC):
    """Stand-in for `lmms_eval.api.model.lmms` when lmms-eval is not installed (same call shapes)."""

    is_simple: bool = True

    def __init__(self) -> None:
        self._rank, self._world_size = 0, 1
        self.cache_hook = _NoCache()
        self.task_dict: dict = {}

    @abc.abstractmethod
    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probs, whether greedy decoding produces it) per request.

        Rows are scored a batch at a time, so only one batch of encoded prompts is held in memory; the
        choices of one question share one encoded prompt (and, through the vision cache, one encoding).
        """
        results: list[tuple[float, bool]] = []
        prompts: list[EncodedSample] = []
        continuations: list[list[int]] = []
        encoded: dict[tuple, EncodedSample] = {}
        for i, req in enumerate(tqdm(requests, desc="minicpmv loglikelihood", disable=self.rank != 0 or len(requests) < 64)):
            key, context, target, visuals = self._scoring_request(req.args)
            if key not in encoded:
                encoded = {key: self._scoring_prompt(context, visuals(), f"request {i}")}  # the previous question is done
            prompts.append(encoded[key])
            continuations.append(self.runner.tokenizer.encode(target.lstrip()))
            if len(prompts) == self.runner.max_batch_size or i == len(requests) - 1:
                results += [(s.logprob, s.is_greedy) for s in self.runner.score(prompts, continuations)]
                prompts, continuations = [], []
        for req, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", (req.args[0], req.args[1]), result)
        return results

    def _scoring_request(self, args: Sequence[Any]) -> tuple[tuple, str, str, Any]:
        """(key of the prompt, context, continuation text, a function giving the visuals) of one request."""
        if len(args) == 2:  # an unconditional request: (context, continuation)
            return (args[0],), args[0], str(args[1]), lambda: []
        context, target, doc_to_visual, doc_id, task, split = args
        doc = self.task_dict[task][split][doc_id]
        target = target if isinstance(target, str) else target(doc)
        return (context, task, split, doc_id), context, str(target), lambda: _flatten(doc_to_visual(doc))

    def generate_until_multi_round(self, requests) -> list: ...

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """'k1=v1,k2=v2' -> cls(k1=v1, k2=v2, **additional_config) (values: true/false, ints, floats, strings)."""
        args = dict(_parse_arg(a) for a in arg_string.split(",") if a.strip())
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**args, **extra)

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    def set_cache_hook(self, cache_hook) -> None:
        self.cache_hook = cache_hook


def _parse_arg(item: str) -> tuple[str, Any]:
    key, _, text = item.partition("=")
    if text.lower() in ("true", "false"):
        return key.strip(), text.lower() == "true"
    for kind in (int, float):
        try:
            return key.strip(), kind(text)
        except ValueError:
            pass
    return key.strip(), text


LmmsBase, HAVE_LMMS_EVAL = kit_base("lmms_eval.api.model", "lmms", LocalLmms)

_KNOWN_GEN_KWARGS = ("until", "max_new_tokens", "temperature", "do_sample", "top_p", "top_k", "num_beams",
                     "repetition_penalty", "min_new_tokens", "seed")


def sampling_from_gen_kwargs(gen_kwargs: Mapping[str, Any] | None, default_max_new_tokens: int,
                             ) -> tuple[SamplingParams, tuple[str, ...]]:
    """lmms-eval gen_kwargs -> (SamplingParams, stop strings). Unknown keys are ignored with a warning.

    Greedy unless do_sample is true or temperature > 0 (as lmms-eval's reference models); do_sample
    without a temperature samples at 1.0. `until` may be a string or a list of strings. Example:
    {'until': ['\\n\\n'], 'max_new_tokens': 16, 'temperature': 0} -> greedy, 16 tokens, stops ('\\n\\n',).
    """
    kw = dict(gen_kwargs or {})
    unknown = sorted(set(kw) - set(_KNOWN_GEN_KWARGS))
    if unknown:
        warnings.warn(f"gen_kwargs {unknown} are not used by minicpmv (known: {', '.join(_KNOWN_GEN_KWARGS)})",
                      stacklevel=3)
    until = kw.get("until") or ()
    until = (until,) if isinstance(until, str) else until
    if not isinstance(until, (list, tuple)) or not all(isinstance(u, str) for u in until):
        raise InputError(f"gen_kwargs['until'] must be a string or a list of strings, got {kw.get('until')!r}")
    temperature = kw.get("temperature")
    do_sample = kw.get("do_sample")
    do_sample = bool(temperature) if do_sample is None else bool(do_sample)
    temperature = (1.0 if temperature is None else float(temperature)) if do_sample else 0.0
    params = SamplingParams(
        max_new_tokens=parse_positive_int(kw.get("max_new_tokens") or default_max_new_tokens, "max_new_tokens"),
        min_new_tokens=int(kw.get("min_new_tokens") or 0),
        temperature=temperature,
        top_p=1.0 if kw.get("top_p") is None else float(kw["top_p"]),
        top_k=int(kw.get("top_k") or 0),
        num_beams=int(kw.get("num_beams") or 1),
        repetition_penalty=float(kw.get("repetition_penalty") or 1.0),
        seed=None if kw.get("seed") is None else int(kw["seed"]),
    )
    return params, tuple(u for u in until if u)


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` up to the earliest stop string ('Paris.\\nQ: x', ['\\nQ:'] -> 'Paris.')."""
    cut = min((i for s in stops if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def context_parts(context: str, visuals: Sequence[Any], video: VideoSettings, where: str) -> list[Any]:
    """User-turn content from an lmms-eval context and its visuals.

    When the context holds exactly one `<image>` mark per visual, each visual goes at its mark;
    otherwise marks are removed and the visuals go first (the official chat() order). Example:
    ('Left <image> right <image> same?', [a, b]) -> ['Left', a, 'right', b, 'same?'].
    """
    if not isinstance(context, str):
        raise InputError(f"{where}: the context must be a string, got {type(context).__name__}")
    parts = [media_part(v, video, f"{where} visual {k}") for k, v in enumerate(visuals)]
    pieces = context.split(IMAGE_MARK)
    if parts and len(pieces) - 1 == len(parts):
        content: list[Any] = []
        for text, part in zip(pieces, parts + [None]):
            if text.strip():
                content.append(text.strip())
            if part is not None:
                content.append(part)
        return content
    text = context.replace(IMAGE_MARK, "").strip()
    return parts + ([text] if text else [])


def _flatten(visuals: Any) -> list[Any]:
    if visuals is None:
        return []
    if isinstance(visuals, (list, tuple)):
        return [v for item in visuals for v in _flatten(item)]
    return [visuals]


class MiniCPMVLmms(LmmsBase):
    """MiniCPM-V 4.5 (this implementation) for lmms-eval (`--model minicpmv --model_args pretrained=...`).

    pretrained:               a checkpoint folder (None / 'demo' = the embedded demo model)
    device / dtype:           where and how to load ('cuda', 'cpu'; 'bfloat16', 'float32', 'auto')
    batch_size:               requests run together (engine rows; beams count as rows)
    thinking:                 False (default), True, or 'auto' = on for the official long-CoT sets
    thinking_max_new_tokens:  the least token budget in thinking mode (a task's budget is for the answer)
    max_new_tokens:           budget when gen_kwargs give none
    video_fps / video_packing / video_max_groups: video sampling (official recipe defaults)
    max_length:               refuse longer prompts (default 8192, 16384 with a video)
    seed:                     seeds sampled generations (thinking mode)
    model / processor:        an already loaded pair (skips loading)
    """

    is_simple = True

    def __init__(self, pretrained: str | None = None, device: str | None = None, dtype: str | None = None,
                 batch_size: int | str = 1, max_batch_size: int | None = None, thinking: bool | str = False,
                 thinking_max_new_tokens: int = 8192, max_new_tokens: int = 1024, video_fps: float = 5,
                 video_packing: int | None = None, video_max_groups: int = 180, max_length: int | None = None,
                 seed: int = 0, model=None, processor=None, **unknown: Any):
        super().__init__()
        if unknown:
            raise InputError(f"unknown model_args {sorted(unknown)}; known: pretrained, device, dtype, batch_size, "
                             "thinking, thinking_max_new_tokens, max_new_tokens, video_fps, video_packing, "
                             "video_max_groups, max_length, seed")
        if (model is None) != (processor is None):
            raise InputError("pass both model= and processor= (an already loaded pair), or neither")
        self.batch_size = parse_positive_int(batch_size, "batch_size")
        rows = max(self.batch_size, 3)  # room for a 3-beam request
        self.runner = ModelRunner(model, processor, rows) if model is not None else ModelRunner.load(
            pretrained, device, dtype, rows)
        self.thinking = parse_thinking(thinking)
        self.thinking_max_new_tokens = parse_positive_int(thinking_max_new_tokens, "thinking_max_new_tokens")
        self.max_new_tokens = parse_positive_int(max_new_tokens, "max_new_tokens")
        self.video = VideoSettings(float(video_fps), None if video_packing is None else int(video_packing),
                                   int(video_max_groups))
        self.max_length = None if max_length is None else parse_positive_int(max_length, "max_length")
        self.seed = int(seed)

    # ---- lmms-eval API ------------------------------------------------------------------------------
    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        """One string per request: the answer, cut at the first of gen_kwargs['until']."""
        results: list[str] = []
        for start in tqdm(range(0, len(requests), self.batch_size), desc="minicpmv generate_until",
                          disable=self.rank != 0 or len(requests) <= self.batch_size):
            chunk = requests[start:start + self.batch_size]
            jobs = [self._generation_job(req.args[0], req.args[1], self._visuals(req.args[2:6]), req.args[4])
                    for req in chunk]
            outs = self.runner.generate([j[0] for j in jobs], [j[1] for j in jobs])
            for req, (prompt, _, stops), out in zip(chunk, jobs, outs):
                text = cut_at_stops(self._returned_text(out, prompt), stops)
                results.append(text)
                self.cache_hook.add_partial("generate_until", (req.args[0], req.args[1]), text)
        return results

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probs, whether greedy decoding produces it) per request."""
        prompts: list[EncodedSample] = []
        continuations: list[list[int]] = []
        encoded: dict[tuple, EncodedSample] = {}  # the choices of one question share one prompt (and its vision)
        for i, req in enumerate(requests):
            args = req.args
            if len(args) == 2:
                context, target, visuals, key = args[0], args[1], [], (args[0],)
            else:
                context, target, doc_to_visual, doc_id, task, split = args
                doc = self.task_dict[task][split][doc_id]
                target = target if isinstance(target, str) else target(doc)
                key = (context, task, split, doc_id)
                visuals = _flatten(doc_to_visual(doc)) if key not in encoded else []
            if key not in encoded:
                encoded[key] = self._scoring_prompt(context, visuals, f"request {i}")
            prompts.append(encoded[key])
            continuations.append(self.runner.tokenizer.encode(str(target).lstrip()))
        scores = self.runner.score(prompts, continuations)
        results = [(s.logprob, s.is_greedy) for s in scores]
        for req, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", (req.args[0], req.args[1]), result)
        return results

    def generate_until_multi_round(self, requests: Sequence[Any]) -> list[list[str]]:
        """Per request the answers of every round; round r > 0 takes its visuals and context from
        doc_to_text(doc, previous_output=..., round_idx=r, previous_round_info=...), which also says when to stop."""
        results = []
        for req in requests:
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id]
            visuals, outputs, info = _flatten(doc_to_visual(doc)), [], None
            for round_idx in range(MAX_ROUNDS + 1):
                if round_idx == MAX_ROUNDS:
                    raise InputError(f"task {task} doc {doc_id}: doc_to_text did not end the dialogue in {MAX_ROUNDS} rounds")
                if round_idx > 0:
                    visuals, context, done, outputs, info = doc_to_text(
                        doc, previous_output=list(outputs), round_idx=round_idx, previous_round_info=info)
                    if done:
                        break
                    visuals, outputs = _flatten(visuals), list(outputs)
                prompt, params, stops = self._generation_job(context, gen_kwargs, visuals, task)
                out = self.runner.generate([prompt], [params])[0]
                outputs.append(cut_at_stops(self._returned_text(out, prompt), stops))
            results.append(list(outputs))
        return results

    # ---- steps ---------------------------------------------------------------------------------------
    def _visuals(self, args: Sequence[Any]) -> list[Any]:
        doc_to_visual, doc_id, task, split = args
        return _flatten(doc_to_visual(self.task_dict[task][split][doc_id]))

    def thinking_for(self, task: str | None) -> bool:
        """The constructor's choice, or with 'auto' the official long-CoT rule on the task name."""
        return dataset_in(task, LONG_COT_DATASETS) if self.thinking is None else self.thinking

    def _generation_job(self, context: str, gen_kwargs: Mapping[str, Any] | None, visuals: Sequence[Any],
                        task: str | None) -> tuple[Prompt, SamplingParams, tuple[str, ...]]:
        """(Prompt, SamplingParams, stop strings) of one generation request."""
        params, stops = sampling_from_gen_kwargs(gen_kwargs, self.max_new_tokens)
        thinking = self.thinking_for(task)
        content = context_parts(context, visuals, self.video, f"task {task}")
        prompt = Prompt([{"role": "user", "content": content}], thinking, "", "", self._budget(content))
        if thinking:  # official thinking sampling; `until` applies to the answer, after the reasoning
            budget = max(params.max_new_tokens, self.thinking_max_new_tokens)
            return prompt, SamplingParams.for_mode(True, max_new_tokens=budget, seed=self.seed), stops
        if stops and params.num_beams == 1:  # the engine stops early; beams are cut afterwards
            params = replace(params, stop=stops)
        return prompt, params, stops

    def _scoring_prompt(self, context: str, visuals: Sequence[Any], where: str) -> EncodedSample:
        """The non-thinking prompt a continuation is scored after; an empty context with no visuals is
        the bare assistant turn (an unconditional score)."""
        if not context.strip() and not visuals:
            ids = self.runner.tokenizer.encode("<|im_start|>assistant\n" + EMPTY_THINK)
            return EncodedSample("", "", ids, torch.zeros((0, 2), dtype=torch.long), [],
                                 torch.zeros((0, 2), dtype=torch.int32), [])
        content = context_parts(context, visuals, self.video, where)
        return self.runner.encode(Prompt([{"role": "user", "content": content}], max_length=self._budget(content)))

    def _budget(self, content: Sequence[Any]) -> int:
        if self.max_length is not None:
            return self.max_length
        return VIDEO_MAX_INP_LENGTH if has_video(content) else MAX_INPUT_TOKENS

    @staticmethod
    def _returned_text(out, prompt: Prompt) -> str:
        """The answer (thinking: after `</think>`, or all of it when the reasoning never closed)."""
        return out.answer if (out.answer or not prompt.enable_thinking) else out.text
