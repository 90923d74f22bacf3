"""Typed containers shared by the engine, the chat service, the CLI and the server."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature 0 (or num_beams > 1) means deterministic decoding."""

    max_new_tokens: int = 2048
    min_new_tokens: int = 0  # end-of-sequence ids are banned before this many tokens
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off (HF semantics: divide positive logits, multiply negative)
    stop: tuple[str, ...] = ()  # stop strings (not included in the output)
    stop_token_ids: tuple[int, ...] = ()  # extra stop ids besides <|im_end|> / <|endoftext|>
    seed: int | None = None
    num_beams: int = 1
    n: int = 1  # independent samples per prompt (with beams: the n best finished beams)
    length_penalty: float = 1.0  # beam search: finished score = sum log p / length ** length_penalty
    # The repetition penalty covers the generated ids only, as in the official chat() (HF generate
    # called with inputs_embeds has no prompt ids); True also penalises the prompt's ids (vLLM style).
    penalize_prompt: bool = False

    @classmethod
    def for_mode(cls, enable_thinking: bool, sampling: bool = True, **overrides: Any) -> "SamplingParams":
        """The official `chat()` defaults (architecture spec §6.3), then `overrides`.

        sampling=True:  temperature 0.7; non-thinking adds top_p 0.8, top_k 100, repetition_penalty 1.03;
                        thinking keeps the LLM generation defaults (top_k 50, top_p 1.0).
        sampling=False: beam search with 3 beams and repetition_penalty 1.2.
        """
        if not sampling:
            base = cls(temperature=0.0, num_beams=3, repetition_penalty=1.2)
        elif enable_thinking:
            base = cls(temperature=0.7, top_p=1.0, top_k=50)
        else:
            base = cls(temperature=0.7, top_p=0.8, top_k=100, repetition_penalty=1.03)
        return replace(base, **overrides)


@dataclass(frozen=True)
class MediaOptions:
    """Per-request pre-processing options."""

    max_slice_nums: int | None = None  # None = processor default (9 for images, 1 for video frames)
    use_image_id: bool | None = None
    fps: float | None = None  # video sampling rate (choose_fps)
    packing: int | None = None  # frames per 64-token group for video (1..6)
    max_groups: int | None = None  # cap on video groups


@dataclass
class StreamEvent:
    """One streamed piece of a completion. `kind` tells reasoning (inside <think>) from answer text."""

    index: int  # which of the n completions of the request
    kind: Literal["reasoning", "answer"]
    text: str
    finished: bool = False
    finish_reason: Literal["stop", "length", "cancelled", None] = None
    usage: "Usage | None" = None  # on the finished event: this completion's counts (prompt counts repeat per index)
    result: "ChatResult | None" = None  # on the finished event: the whole completion


@dataclass
class Usage:
    prompt_tokens: int = 0
    visual_tokens: int = 0  # positions of the prompt filled by vision features
    completion_tokens: int = 0


@dataclass
class ChatResult:
    """A finished completion: the raw text plus its reasoning and answer parts."""

    text: str  # raw generated text (reasoning included, as the model wrote it)
    reasoning: str  # text inside <think>...</think> ('' in non-thinking mode)
    answer: str  # text after </think>
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)
