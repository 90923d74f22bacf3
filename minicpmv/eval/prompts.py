"""Per-benchmark evaluation settings and prompt builders: how the published MiniCPM-V 4.5 numbers were produced.

Source: VLMEvalKit's `MiniCPM_V_4_5` model class (ecosystem spec §3a; architecture spec §8). Per benchmark:

  * thinking: long-CoT sets (MMBench, MMStar, HallusionBench, MMMU, MathVista, ...) are answered in
    thinking mode, sampling at temperature 0.7 with up to 8192 new tokens, the assistant turn starting
    with '<think>\\nI' (the reference patches its chat template so); every other run decodes
    deterministically as the official `chat(sampling=False)` does: beam search with 3 beams and
    repetition penalty 1.2, up to 2048 new tokens with a short-CoT prompt and 1024 otherwise;
  * prompt: short-CoT prompts (solve step by step, end with 'Answer: ...') for the reasoning sets, OCRBench
    and ChartQA; direct prompts ('Answer with the option's letter ...', 'Answer the question using a single
    word or phrase.') for the rest;
  * upsizing: images under 1344 x 1344 pixels are enlarged by a random factor (at most to 1344^2 pixels)
    for the long-CoT sets and AI2D, OCRBench, ChartQA, TextVQA;
  * seeds: the reference seeds random / numpy / torch to 0 once; here every row draws from its own
    generator seeded by (seed, row id), so a resumed or --limit run gives each row the same draw.

`BENCHMARKS` holds the settings; `official_settings` resolves them for a run (`--think auto|on|off`);
`build_*_prompt` are pure functions shared with the VLMEvalKit / lmms-eval adapters.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Literal, Mapping

from PIL import Image

from minicpmv.errors import InputError
from minicpmv.inference.types import SamplingParams

Kind = Literal["mcq", "yesno", "vqa", "video"]
Metric = Literal["accuracy", "yesno", "hallusion", "vqa_accuracy", "anls", "relaxed_accuracy", "ocrbench", "videomme"]

UPSIZE_MAX_PIXELS = 1344 * 1344
LONG_COT_PREFILL = "I"  # the reference's long-CoT template ends the prompt with '<think>\nI'
MAX_INPUT_TOKENS = 8192  # the reference's max_inp_length in VLMEvalKit

# Prompt texts of the reference model class (facts, reproduced so scores are comparable).
MCQ_DIRECT_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
NO_OPTIONS_INSTRUCTION = "Carefully read the following question. Answer the question directly."
VQA_INSTRUCTION = "Answer the question using a single word or phrase."
MCQ_COT = ("Carefully read the following multichoice question, solve it step by step and finally pick the option "
           'associated with the correct answer in the format of "Answer: selected option\n\n')
SHORT_ANSWER_COT = ("Read the following question carefully, solve it step by step, and then output the final answer "
                    'in the format of "Answer: single number or single word or phrase".\n\n')
OCRBENCH_COT = "Carefully observe the image and answer the OCR-related questions below. \n\n"
YES_NO_SUFFIX = " Yes or No?"


@dataclass(frozen=True)
class BenchmarkSpec:
    """How one benchmark is asked and scored.

    name:        canonical name; `resolve_benchmark` also accepts VLMEvalKit dataset names starting with it
    kind:        which runner asks it (mcq / yesno / vqa / video)
    metric:      how answers are scored (see minicpmv.eval.scorers)
    long_cot:    thinking mode under --think auto (the reference's long-CoT list)
    cot_prompt:  short-CoT prompt (step by step, 'Answer: ...') instead of the direct one
    upsize:      random upsizing of small images (see `upsize_image`)
    circular:    MCQ rows whose index differs by a multiple of 1e6 are rotations of one question, right
                 only if all are right (VLMEvalKit's CircularEval TSVs for MMBench)
    yes_no_suffix: appended to yes/no questions with the direct prompt
    """

    name: str
    kind: Kind
    metric: Metric
    long_cot: bool = False
    cot_prompt: bool = False
    upsize: bool = False
    circular: bool = False
    yes_no_suffix: str = ""


BENCHMARKS: dict[str, BenchmarkSpec] = {s.name: s for s in (
    BenchmarkSpec("MMBench", "mcq", "accuracy", long_cot=True, cot_prompt=True, upsize=True, circular=True),
    BenchmarkSpec("MMStar", "mcq", "accuracy", long_cot=True, cot_prompt=True, upsize=True),
    BenchmarkSpec("AI2D", "mcq", "accuracy", upsize=True),
    BenchmarkSpec("MCQ", "mcq", "accuracy"),  # any other VLMEvalKit-style multiple-choice TSV
    BenchmarkSpec("HallusionBench", "yesno", "hallusion", long_cot=True, cot_prompt=True, upsize=True,
                  yes_no_suffix=YES_NO_SUFFIX),
    BenchmarkSpec("YesNo", "yesno", "yesno"),  # MME-style sets (their questions already ask for yes or no)
    BenchmarkSpec("OCRBench", "vqa", "ocrbench", cot_prompt=True, upsize=True),
    BenchmarkSpec("TextVQA", "vqa", "vqa_accuracy", upsize=True),
    BenchmarkSpec("DocVQA", "vqa", "anls"),
    BenchmarkSpec("InfoVQA", "vqa", "anls"),
    BenchmarkSpec("ChartQA", "vqa", "relaxed_accuracy", cot_prompt=True, upsize=True),
    BenchmarkSpec("VQA", "vqa", "vqa_accuracy"),  # any other open-answer TSV
    BenchmarkSpec("VideoMME", "video", "videomme"),
)}


def resolve_benchmark(name: str) -> BenchmarkSpec:
    """The spec for a benchmark name: exact (case and '-'/'_' ignored) or the longest known name the given
    one starts with. Examples: 'mmstar' -> MMStar; 'MMBench_DEV_EN_V11' -> MMBench; 'Video-MME' -> VideoMME;
    'AI2D_TEST' -> AI2D."""
    def key(s: str) -> str:
        return s.lower().replace("-", "").replace("_", "")

    given = key(name)
    matches = [s for s in BENCHMARKS.values() if given.startswith(key(s.name))]
    if not matches:
        raise InputError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)} (VLMEvalKit names that start "
                         "with one of these work too, e.g. MMBench_DEV_EN_V11; use MCQ, YesNo or VQA for other sets)")
    return max(matches, key=lambda s: len(s.name))


@dataclass(frozen=True)
class RunSettings:
    """Everything that decides a run's answers; saved next to its results so a resumed run can check them.

    thinking:      thinking mode (reasoning in <think>, then the answer)
    cot_prompt / upsize: as in `BenchmarkSpec`
    sampling:      generation settings; a sampling run gives row k the seed `row_seed(seed, id)`
    think_prefill: text the assistant turn starts with after '<think>\\n' in thinking mode
    max_input_tokens: longer prompts are not run (recorded as errors; the reference cuts them)
    subtitles:     Video-MME: put the subtitles of the sampled frames in the prompt
    video_fps:     frames sampled per second (the official recipe's choose_fps)
    seed:          base seed for upsizing draws and sampling
    """

    benchmark: str
    kind: Kind
    metric: Metric
    thinking: bool
    cot_prompt: bool
    upsize: bool
    circular: bool
    yes_no_suffix: str
    sampling: SamplingParams
    think_prefill: str = ""
    max_input_tokens: int = MAX_INPUT_TOKENS
    subtitles: bool = False
    video_fps: float = 5.0
    seed: int = 0


def official_settings(spec: BenchmarkSpec, think: str = "auto", *, seed: int = 0, max_new_tokens: int | None = None,
                      num_beams: int | None = None, subtitles: bool = False) -> RunSettings:
    """The reference's settings for `spec` (module docstring), with the run's choices applied.

    think: 'auto' (the benchmark's setting), 'on' or 'off'. max_new_tokens / num_beams: override the
    reference's (e.g. a small budget for a quick look; num_beams 1 = greedy, deterministic runs only).
    Example: MMStar, think='auto' -> thinking, temperature 0.7, 8192 tokens, step-by-step prompt, upsizing;
    MMStar, think='off' -> beam search (3 beams, repetition penalty 1.2), 2048 tokens, same prompt.
    """
    if think not in ("auto", "on", "off"):
        raise InputError(f"think must be auto, on or off; got {think!r}")
    if subtitles and spec.kind != "video":
        raise InputError(f"--subtitles applies to video benchmarks; {spec.name} is a {spec.kind} benchmark")
    thinking = spec.long_cot if think == "auto" else think == "on"
    if thinking:
        sampling = SamplingParams.for_mode(True, max_new_tokens=8192)
    else:
        sampling = SamplingParams.for_mode(False, sampling=False, max_new_tokens=2048 if spec.cot_prompt else 1024)
    if max_new_tokens is not None:
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        sampling = replace(sampling, max_new_tokens=max_new_tokens)
    if num_beams is not None:
        if num_beams < 1 or (thinking and num_beams != 1):
            raise InputError(f"num_beams {num_beams}: use >= 1, and only with thinking off (thinking samples)")
        sampling = replace(sampling, num_beams=num_beams)
    return RunSettings(spec.name, spec.kind, spec.metric, thinking, spec.cot_prompt, spec.upsize, spec.circular,
                       spec.yes_no_suffix, sampling, LONG_COT_PREFILL if thinking else "", subtitles=subtitles, seed=seed)


# ---- prompts ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """A user turn's text around its media: `instruction` goes before the images or video ('' = none),
    `text` after them (the reference puts its 'system prompt' as the first text of the user turn)."""

    instruction: str
    text: str


def format_options(options: Mapping[str, str]) -> str:
    """'A. cat\\nB. dog\\n' for {'A': 'cat', 'B': 'dog'} (one line each, in the given order)."""
    return "".join(f"{k}. {v}\n" for k, v in options.items())


def build_mcq_prompt(question: str, options: Mapping[str, str], hint: str | None = None, cot: bool = False) -> Prompt:
    """A multiple-choice prompt in the reference's wording.

    Direct: 'Hint: ...\\n' (when a hint is given) + 'Question: Q\\nOptions:\\nA. cat\\nB. dog\\n' +
    MCQ_DIRECT_SUFFIX; with no options the instruction asks to answer directly.
    Short-CoT: MCQ_COT + 'Hint: ...\\n' + 'Q\\nA. cat\\nB. dog\\n' (SHORT_ANSWER_COT with no options).
    Example: build_mcq_prompt('Which animal?', {'A': 'cat', 'B': 'dog'}).text ==
    "Question: Which animal?\\nOptions:\\nA. cat\\nB. dog\\n\\nAnswer with the option's letter from the given choices directly."
    """
    head = f"Hint: {hint}\n" if hint else ""
    if cot:
        lead = MCQ_COT if options else SHORT_ANSWER_COT
        return Prompt("", lead + head + f"{question}\n" + format_options(options))
    if not options:
        return Prompt(NO_OPTIONS_INSTRUCTION, head + f"Question: {question}\n")
    return Prompt("", head + f"Question: {question}\nOptions:\n" + format_options(options) + MCQ_DIRECT_SUFFIX)


def build_yes_no_prompt(question: str, cot: bool = False, suffix: str = "") -> Prompt:
    """Direct: the question + `suffix` (' Yes or No?' for HallusionBench). Short-CoT: SHORT_ANSWER_COT + question.
    Example: build_yes_no_prompt('Is the sky green?', suffix=YES_NO_SUFFIX).text == 'Is the sky green? Yes or No?'"""
    return Prompt("", SHORT_ANSWER_COT + question) if cot else Prompt("", question + suffix)


def build_vqa_prompt(question: str, cot: bool = False, ocrbench: bool = False) -> Prompt:
    """Direct: instruction VQA_INSTRUCTION before the image, the question after. Short-CoT: OCRBENCH_COT
    (OCRBench) or SHORT_ANSWER_COT + question. Example: build_vqa_prompt('What is written?') ==
    Prompt('Answer the question using a single word or phrase.', 'What is written?')."""
    if cot:
        return Prompt("", (OCRBENCH_COT if ocrbench else SHORT_ANSWER_COT) + question)
    return Prompt(VQA_INSTRUCTION, question)


def build_video_mcq_prompt(question: str, options: Mapping[str, str], subtitles: str | None = None) -> Prompt:
    """Video-MME's official prompt (after the video): subtitles block when given, the instruction naming the
    option letters, the question, one option per line, 'The best answer is:'.

    Example (no subtitles), options {'A': 'left', 'B': 'right'}:
    'Select the best answer to the following multiple-choice question based on the video. Respond with only
    the letter (A or B) of the correct option.\\nWhich way?\\nA. left\\nB. right\\nThe best answer is:'
    """
    letters = list(options)
    named = letters[0] if len(letters) == 1 else ", ".join(letters[:-1]) + ("," if len(letters) > 2 else "") + \
        f" or {letters[-1]}"
    based = "the video and the subtitles" if subtitles is not None else "the video"
    text = (f"Select the best answer to the following multiple-choice question based on {based}. "
            f"Respond with only the letter ({named}) of the correct option.\n{question}\n"
            + "".join(f"{k}. {v}\n" for k, v in options.items()) + "The best answer is:")
    if subtitles is not None:
        text = "This video's subtitles are listed below: \n" + (subtitles or "No subtitles available") + "\n" + text
    return Prompt("", text)


# ---- images -------------------------------------------------------------------------------------------------


def row_rng(seed: int, row_id: str) -> random.Random:
    """The random generator of one row: seeded by text (hash-randomisation-proof), so a row's draw does not
    depend on which rows ran before it. Example: row_rng(0, '17').randint(1, 6) is the same in every run."""
    return random.Random(f"{seed}/{row_id}")


def upsize_image(image: Image.Image, rng: random.Random, max_pixels: int = UPSIZE_MAX_PIXELS) -> Image.Image:
    """The reference's random upsizing: an image with fewer than `max_pixels` pixels is resized to a random
    width between its own and the width that would give `max_pixels` at the same aspect ratio.

    Steps: ratio = sqrt(max_pixels / (w * h)); new_w = randint(w, int(w * ratio)); new_h = int(new_w / w * h).
    Example: 448 x 336 -> ratio 3.46, new width drawn from 448..1551, e.g. 1000 -> 1000 x 750. Images of
    max_pixels or more come back unchanged (the same object).
    """
    w, h = image.size
    if w * h >= max_pixels:
        return image
    ratio = math.sqrt(max_pixels / (w * h))
    new_w = rng.randint(w, int(w * ratio))
    new_h = int(new_w / w * h)
    return image.resize((new_w, new_h))
