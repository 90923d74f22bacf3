"""What the VLMEvalKit and lmms-eval adapters share: the official settings for any dataset name,
media parts, and one `ModelRunner` that generates (the official `chat()` path) and scores continuations.

The settings and prompt texts are those of `minicpmv.eval.prompts` (VLMEvalKit's `MiniCPM_V_4_5`
class, ecosystem spec §3a); the kits name many more datasets than the runner knows, so the
adapters decide long CoT / CoT prompt / upsizing from the official lists of names:
  * long chain of thought (thinking, sampled at temperature 0.7, up to 8192 new tokens) on MMMU,
    MathVista, MMVet, MMBench, HallusionBench, MMStar, MathVision, MathVerse, DynaMath, LogicVista;
  * the step-by-step prompt ('Answer: ...') on those and on OCRBench and ChartQA;
  * random upsizing of images below 1344x1344 on the long-CoT sets and AI2D, OCRBench, ChartQA, TextVQA.
Names match case-insensitively, ignoring `_`/`-`, as substrings: VLMEvalKit's `MMBench_DEV_EN` and
lmms-eval's `mmbench_en_dev` both contain `mmbench`.
"""

from __future__ import annotations

import importlib
import os
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from minicpmv.chat import THINK_PREFILL, sample_to_request, split_thinking, vision_cache_for
from minicpmv.errors import InputError
from minicpmv.eval.prompts import MAX_INPUT_TOKENS, BenchmarkSpec, RunSettings, official_settings
from minicpmv.inference.engine import Engine
from minicpmv.inference.types import SamplingParams
from minicpmv.processor.processor import EncodedSample, Processor
from minicpmv.processor.video import RECIPE_MAX_GROUPS, Video

LONG_COT_DATASETS = ("MMMU", "MathVista", "MMVet", "MMBench", "HallusionBench", "MMStar", "MathVision",
                     "MathVerse_MINI", "MathVerse_MINI_Vision_Only", "DynaMath", "LogicVista")
COT_DATASETS = ("MMMU", "MathVista", "MMBench", "HallusionBench", "MMStar", "OCRBench", "ChartQA", "MathVision",
                "MathVerse_MINI", "MathVerse_MINI_Vision_Only", "DynaMath", "LogicVista")
UPSIZE_DATASETS = ("AI2D", "OCRBench", "ChartQA", "TextVQA")  # besides the long-CoT sets
VIDEO_MAX_INP_LENGTH = 16384  # chat()'s default: the recipe's 180 groups x 64 tokens need > 8192
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".flv", ".m4v", ".mpeg", ".mpg")


# ---- official per-dataset settings ---------------------------------------------------------------------
def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def dataset_in(dataset: str | None, names: Sequence[str]) -> bool:
    """Whether `dataset` contains one of `names` (case and `_`/`-` ignored), like VLMEvalKit's `listinstr`.

    Example: dataset_in('mmbench_en_dev', ('MMBench',)) -> True; dataset_in(None, ...) -> False.
    """
    return dataset is not None and any(_squash(n) in _squash(dataset) for n in names)


def dataset_settings(dataset: str | None, thinking: bool | None = None, *, seed: int = 0,
                     max_new_tokens: int | None = None) -> RunSettings:
    """`minicpmv.eval.prompts.official_settings` for any kit dataset name (`thinking` None = the official rule).

    Examples: 'MMStar_MINI' -> thinking (temperature 0.7, 8192 tokens, prefill 'I'), CoT prompt, upsizing;
    'OCRBench' -> 3-beam search, 2048 tokens, CoT prompt, upsizing; 'TextVQA_VAL' -> beams, 1024, upsizing;
    'MMStar' with thinking=False -> beams, 2048 tokens, CoT prompt.
    """
    long_cot = dataset_in(dataset, LONG_COT_DATASETS)
    spec = BenchmarkSpec(dataset or "unnamed", "vqa", "vqa_accuracy", long_cot=long_cot,
                         cot_prompt=dataset_in(dataset, COT_DATASETS),
                         upsize=long_cot or dataset_in(dataset, UPSIZE_DATASETS))
    think = "auto" if thinking is None else ("on" if thinking else "off")
    return official_settings(spec, think, seed=seed, max_new_tokens=max_new_tokens)


def kit_base(module: str, attr: str, stand_in: type) -> tuple[type, bool]:
    """(the kit's base class `module.attr`, True) when the kit imports, else (`stand_in`, False).

    A kit that is not installed falls back silently; one that is installed but fails to import (a
    missing dependency of its own) falls back with a warning naming the error.
    Example: kit_base('lmms_eval.api.model', 'lmms', LocalLmms) -> (lmms, True) with lmms-eval installed.
    """
    try:
        return getattr(importlib.import_module(module), attr), True
    except ModuleNotFoundError as e:
        if e.name is not None and (module == e.name or module.startswith(e.name + ".")):
            return stand_in, False  # the kit itself is absent
        error: Exception = e
    except Exception as e:  # noqa: BLE001 - any failure inside the kit's import
        error = e
    warnings.warn(f"{module} is installed but does not import ({type(error).__name__}: {error}); minicpmv's adapter "
                  f"uses its local stand-in base class {stand_in.__name__}", stacklevel=2)
    return stand_in, False


# ---- media -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoSettings:
    """How a video file is sampled (the official recipe, architecture spec §5.1).

    fps:        frames sampled per second (recipe choose_fps; the official example uses 5)
    packing:    frames per 64-token group; None = automatic (1..3, the recipe); up to 6 forced
    max_groups: at most this many groups (the recipe's 180)
    """

    fps: float = 5
    packing: int | None = None
    max_groups: int = RECIPE_MAX_GROUPS


def is_video_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike)) and Path(value).suffix.lower() in VIDEO_SUFFIXES


def media_part(value: Any, video: VideoSettings, name: str) -> Any:
    """A content part for the processor from an evaluation kit's visual item.

    PIL images and numpy arrays pass through; a path ending in a video suffix becomes a `Video`
    sampled with `video`; any other path is an image file; a `Video` passes through. Example:
    'clip.mp4' -> Video(path='clip.mp4', fps=5); 'img/1.jpg' -> {'type': 'image', 'image': 'img/1.jpg'}.
    """
    if isinstance(value, (Image.Image, np.ndarray, Video)):
        return value
    if is_video_path(value):
        return Video(path=os.fspath(value), fps=video.fps, packing=video.packing, max_groups=video.max_groups)
    if isinstance(value, (str, os.PathLike)):
        return {"type": "image", "image": os.fspath(value)}
    raise InputError(f"{name}: a visual of type {type(value).__name__} is not supported; pass a PIL image, an "
                     f"image path or a video path ({', '.join(VIDEO_SUFFIXES)}); audio is not supported")


def has_video(parts: Sequence[Any]) -> bool:
    return any(isinstance(p, Video) for p in parts)


# ---- running the model ---------------------------------------------------------------------------------
@dataclass
class Prompt:
    """One conversation to run.

    messages:        processor messages ({'role', 'content': str | parts}), ending with a user turn
    enable_thinking: thinking template (the prompt ends with `<think>\\n`)
    think_prefill:   text the reasoning starts with (thinking only), e.g. 'I' as the official evaluation
    system_prompt:   optional system message
    max_length:      refuse prompts longer than this many tokens (InputError; never truncated)
    """

    messages: list[dict[str, Any]]
    enable_thinking: bool = False
    think_prefill: str = ""
    system_prompt: str = ""
    max_length: int | None = MAX_INPUT_TOKENS


@dataclass
class Generated:
    """A finished generation: `text` as the model wrote it (the think prefill included), its reasoning
    and answer parts, why it stopped, and token counts."""

    text: str
    reasoning: str
    answer: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class ContinuationScore:
    """Teacher-forced score of a continuation: sum of its tokens' log-probs, and whether every token is
    the argmax (greedy decoding would produce it)."""

    logprob: float
    is_greedy: bool
    num_tokens: int


def add_think_prefill(sample: EncodedSample, tokenizer, prefill: str) -> EncodedSample:
    """A thinking prompt whose reasoning already starts with `prefill` (the official evaluation patches
    its template to end with '<think>\\nI'). The suffix '<think>\\n' is re-tokenised together with the
    prefill, exactly as a template ending in '<think>\\nI' would be."""
    suffix = tokenizer.encode(THINK_PREFILL)
    ids = sample.input_ids
    if ids[-len(suffix):] != suffix:
        raise ValueError(f"prompt does not end with the thinking suffix {suffix}: {ids[-len(suffix):]}")
    return replace(sample, input_ids=ids[: -len(suffix)] + tokenizer.encode(THINK_PREFILL + prefill))


class ModelRunner:
    """A model and its processor, with one engine sharing chat()'s vision cache for this model.

    `generate` runs prompts through the batched engine with the given SamplingParams (the official
    chat() settings come from `official_settings` / `minicpmv.chat.official_params`); `score` returns
    teacher-forced log-probs of continuations after prompts (lmms-eval `loglikelihood`).
    """

    def __init__(self, model, processor: Processor, max_batch_size: int = 8):
        if max_batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {max_batch_size}")
        self.model, self.processor = model, processor
        self.tokenizer = processor.tokenizer
        self.vision_cache = vision_cache_for(model)
        self.max_batch_size = max_batch_size
        self.engine = Engine(model, self.tokenizer, vision_cache=self.vision_cache, max_batch_size=max_batch_size)

    @classmethod
    def load(cls, path: str | Path | None, device: str | None = None, dtype: str | torch.dtype | None = None,
             max_batch_size: int = 8) -> "ModelRunner":
        """`minicpmv.load(path, device, dtype)`; dtype may be a name ('bfloat16', 'float32', 'auto')."""
        import minicpmv

        model, processor = minicpmv.load(path, device=device, dtype=parse_dtype(dtype))
        return cls(model, processor, max_batch_size)

    def encode(self, prompt: Prompt, index: int = 0) -> EncodedSample:
        sample = self.processor.encode(prompt.messages, enable_thinking=prompt.enable_thinking,
                                       system_prompt=prompt.system_prompt, max_length=prompt.max_length,
                                       sample_index=index)
        if prompt.enable_thinking and prompt.think_prefill:
            sample = add_think_prefill(sample, self.tokenizer, prompt.think_prefill)
        return sample

    def generate(self, prompts: Sequence[Prompt], params: Sequence[SamplingParams]) -> list[Generated]:
        """One `Generated` per prompt; the engine batches up to max_batch_size rows at a time."""
        samples = [self.encode(p, i) for i, p in enumerate(prompts)]
        outputs = self.engine.generate([sample_to_request(s, p) for s, p in zip(samples, params)])
        results = []
        for prompt, sample, out in zip(prompts, samples, outputs):
            c = out.completions[0]
            prefill = prompt.think_prefill if prompt.enable_thinking else ""
            text = prefill + c.text
            reasoning, answer = split_thinking(text, prompt.enable_thinking)
            results.append(Generated(text, reasoning, answer, c.finish_reason, len(sample.input_ids), c.num_generated))
        return results

    def score(self, prompts: Sequence[EncodedSample], continuations: Sequence[Sequence[int]]) -> list[ContinuationScore]:
        """`continuation_scores` in batches of max_batch_size rows (vision through the vision cache)."""
        out: list[ContinuationScore] = []
        for s in range(0, len(prompts), self.max_batch_size):
            out += continuation_scores(self.model, prompts[s:s + self.max_batch_size],
                                       continuations[s:s + self.max_batch_size], self.vision_cache)
        return out


@torch.inference_mode()
def continuation_scores(model, prompts: Sequence[EncodedSample], continuations: Sequence[Sequence[int]],
                        vision_cache=None) -> list[ContinuationScore]:
    """Sum of log p(continuation token | prompt, earlier continuation tokens) per row, and whether each
    continuation is what greedy decoding would produce, in one right-padded forward pass.

    Row b is prompts[b].input_ids + continuations[b]; the logits at position t score token t + 1, and
    are computed only at the scored positions. Vision features of a prompt object shared by several
    rows (the choices of one question) are computed once. Example: prompt [p0, p1, p2], continuation
    [c0, c1] -> logprob = log softmax(logits[2])[c0] + log softmax(logits[3])[c1]. An empty continuation
    scores 0.0 and counts as greedy.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    device = next(model.parameters()).device
    rows = [list(p.input_ids) + list(c) for p, c in zip(prompts, continuations)]
    ids = torch.zeros((len(rows), max(len(r) for r in rows)), dtype=torch.long)  # [B, T]; padding is masked
    mask = torch.zeros_like(ids)  # [B, T]
    where_b, where_t, targets = [], [], []
    for b, (row, prompt) in enumerate(zip(rows, prompts)):
        ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
        for t in range(len(prompt.input_ids), len(row)):
            where_b.append(b)
            where_t.append(t - 1)  # the position before a token predicts it
            targets.append(row[t])
    scores = [ContinuationScore(0.0, True, 0) for _ in rows]
    if not targets:
        return scores
    embeds = model.embed(ids.to(device), image_bounds=[p.image_bounds for p in prompts],
                         vision_embeds=_vision(model, prompts, vision_cache))  # [B, T, D]
    hidden = model.llm(embeds, attention_mask=mask.to(device))  # [B, T, D]
    picked = hidden[torch.tensor(where_b, device=device), torch.tensor(where_t, device=device)]  # [N, D]
    logits = model.llm.logits(picked).float()  # [N, V]
    target = torch.tensor(targets, dtype=torch.long, device=device)  # [N]
    logp = (logits.gather(1, target[:, None])[:, 0] - logits.logsumexp(-1)).tolist()  # [N]
    greedy = (logits.argmax(-1) == target).tolist()  # [N]
    for b, lp, g in zip(where_b, logp, greedy):
        s = scores[b]
        scores[b] = ContinuationScore(s.logprob + lp, s.is_greedy and g, s.num_tokens + 1)
    return scores


def _vision(model, prompts: Sequence[EncodedSample], vision_cache) -> list[torch.Tensor | None]:
    """Per row the resampler output [G, Q, D] of its prompt (None without media), once per prompt object."""
    unique = {id(p): p for p in prompts if len(p.pixel_values)}
    if not unique:
        return [None] * len(prompts)
    items = list(unique.values())
    pixels, sizes, groups = [p.pixel_values for p in items], [p.tgt_sizes for p in items], [p.temporal_ids for p in items]
    if vision_cache is not None:
        encoded = vision_cache.encode(model, pixels, sizes, groups)
    else:
        device = next(model.parameters()).device
        encoded = model.vision_per_item([[s.to(device) for s in item] for item in pixels], sizes, groups)
    by_id = dict(zip(unique, encoded))
    return [by_id.get(id(p)) for p in prompts]


# ---- small parsers -------------------------------------------------------------------------------------
_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}


def parse_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """None / 'auto' -> None (the best dtype for the device); names like 'bfloat16' -> torch dtypes."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if str(value).lower() == "auto":
        return None
    if str(value).lower() not in _DTYPES:
        raise InputError(f"dtype {value!r} is not known; use one of auto, {', '.join(sorted(_DTYPES))}")
    return _DTYPES[str(value).lower()]


def parse_thinking(value: Any) -> bool | None:
    """True / False force thinking; None or 'auto' follow the per-dataset rule (strings from command lines too)."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("auto", "none", ""):
        return None
    if text in ("true", "on", "1", "yes"):
        return True
    if text in ("false", "off", "0", "no"):
        return False
    raise InputError(f"thinking={value!r}: use True, False or 'auto' (the official per-dataset rule)")


def parse_positive_int(value: Any, what: str) -> int:
    """An int >= 1 from an int or a numeric string (command-line model arguments)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if isinstance(value, bool) or number < 1 or (isinstance(value, float) and value != number):
        raise InputError(f"{what} must be an integer >= 1, got {value!r}")
    return number
