"""VLMEvalKit adapter: `MiniCPMV`, a `vlmeval.vlm.base.BaseModel` running this implementation.

VLMEvalKit calls `model.generate(message, dataset)`, which normalises the input and calls
`generate_inner(message, dataset)`; `message` is a list of {'type': 'image' | 'text' | 'video',
'value': path or text}. When `use_custom_prompt(dataset)` is True the kit builds each prompt with
`build_prompt(line, dataset)` from a TSV row (images through `dump_image`, set by `set_dump_image`).
Multi-turn benchmarks call `chat_inner(messages, dataset)`.

The class follows the official `MiniCPM_V_4_5` evaluation settings (`common.dataset_settings`):
per-dataset thinking, chain-of-thought prompts, random upsizing of small images (seeded), 3-beam
search otherwise, 'Answer: X' extraction. Thinking can also be forced on or off. Beyond the
official class it reads videos (`VIDEO_LLM = True`): a video item is sampled with the official
recipe and packed into 3D groups (`minicpmv.processor.video`).

Without VLMEvalKit installed the base class is `LocalBaseModel`, a small stand-in with the same call
shapes (`generate` -> `generate_inner`, `use_custom_prompt`, `build_prompt`, `set_dump_image`,
`dump_image`, `chat` -> `chat_inner`); with it installed the class subclasses the real `BaseModel`.
To run it from VLMEvalKit, `register_vlmeval()` adds it to `vlmeval.config.supported_VLM`
(docs/evaluation.md shows the launcher).
"""

from __future__ import annotations

import functools
import math
import os
import re
import string
from dataclasses import replace
from typing import Any, Mapping, Sequence

import torch

from minicpmv.errors import InputError
from minicpmv.eval.adapters.common import (
    VIDEO_MAX_INP_LENGTH, Generated, ModelRunner, Prompt, VideoSettings, dataset_in, dataset_settings, has_video,
    is_video_path, kit_base, media_part, parse_thinking,
)
from minicpmv.eval.prompts import (
    MAX_INPUT_TOKENS, YES_NO_SUFFIX, RunSettings, build_mcq_prompt, build_vqa_prompt,
    build_yes_no_prompt, row_rng, upsize_image,
)
from minicpmv.inference.types import SamplingParams
from minicpmv.processor.image import load_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class LocalBaseModel:
    """Stand-in for `vlmeval.vlm.base.BaseModel` when VLMEvalKit is not installed (same call shapes)."""

    INTERLEAVE = False
    allowed_types = ["text", "image", "video"]

    def __init__(self):
        self.dump_image_func = None

    def use_custom_prompt(self, dataset):
        return False

    def build_prompt(self, line, dataset):
        raise NotImplementedError

    def set_dump_image(self, dump_image_func):
        self.dump_image_func = dump_image_func

    def dump_image(self, line, dataset):
        return self.dump_image_func(line)

    def generate_inner(self, message, dataset=None):
        raise NotImplementedError

    def preproc_content(self, inputs):
        """str / dict / list of str / list of dicts -> list of {'type', 'value'} dicts (None if not understood).

        A string in a list is an image or video when it names an existing file with such a suffix,
        else text (the kit decides by MIME type).
        """
        if isinstance(inputs, str):
            return [dict(type="text", value=inputs)]
        if isinstance(inputs, dict):
            return [inputs] if "type" in inputs and "value" in inputs else None
        if isinstance(inputs, list) and all(isinstance(x, str) for x in inputs):
            return [dict(type=_kind_of_string(s), value=s) for s in inputs]
        if isinstance(inputs, list) and all(isinstance(x, dict) and "type" in x and "value" in x for x in inputs):
            return inputs
        return None

    def generate(self, message, dataset=None):
        message = self.preproc_content(message)
        if not message:
            raise InputError("message must be a string, a {'type', 'value'} dict, or a list of either")
        bad = [m["type"] for m in message if m["type"] not in self.allowed_types]
        if bad:
            raise InputError(f"message item types {bad} are not supported; use {self.allowed_types}")
        return self.generate_inner(message, dataset)

    def chat(self, messages, dataset=None):
        for msg in messages:
            msg["content"] = self.preproc_content(msg["content"])
        return self.chat_inner(messages, dataset=dataset)


def _kind_of_string(s: str) -> str:
    if os.path.isfile(s):
        if is_video_path(s):
            return "video"
        if s.lower().endswith(IMAGE_SUFFIXES):
            return "image"
    return "text"


BaseModel, HAVE_VLMEVAL = kit_base("vlmeval.vlm.base", "BaseModel", LocalBaseModel)

DETAIL_INSTRUCTION = "Answer this question in detail."  # MMVet's direct prompt (official class)

# Dataset types for names VLMEvalKit's DATASET_TYPE knows, used when the kit is not installed.
_LOCAL_TYPES = {
    "Video": ("Video", "MVBench", "MLVU", "LVBench", "TempCompass"),
    "MCQ": ("MMBench", "MMStar", "AI2D", "SEEDBench", "ScienceQA", "MMMU", "RealWorldQA", "CCBench", "MMT-Bench",
            "BLINK", "MME-RealWorld"),
    "Y/N": ("HallusionBench", "MME", "POPE", "AMBER"),
    "VQA": ("OCRBench", "TextVQA", "DocVQA", "InfoVQA", "ChartQA", "MMVet", "MathVista", "LLaVABench", "OCRVQA"),
}


def dataset_type(dataset: str | None) -> str | None:
    """'MCQ', 'Y/N', 'VQA', 'Video' or None: VLMEvalKit's `DATASET_TYPE` when installed, else a local table.

    Example: 'MMBench_DEV_EN' -> 'MCQ'; 'HallusionBench' -> 'Y/N'; 'OCRBench' -> 'VQA'; 'Video-MME' ->
    'Video'; unknown names -> None. Checked in the table's order, so 'Video-MME' is not taken for 'MME'
    nor 'MME-RealWorld' for a yes/no set.
    """
    if dataset is None:
        return None
    if HAVE_VLMEVAL:
        from vlmeval.dataset import DATASET_TYPE

        return DATASET_TYPE(dataset)
    return next((kind for kind, names in _LOCAL_TYPES.items() if dataset_in(dataset, names)), None)


def _present(line: Any, key: str) -> bool:
    value = line.get(key) if hasattr(line, "get") else None
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def build_question(line: Any, dataset: str, kind: str | None, cot: bool) -> tuple[str, str]:
    """(instruction, prompt) of the official evaluation for one TSV row (a dict or a pandas row); the
    instruction is the first text of the user turn, before the images ('' = none).

    The texts come from `minicpmv.eval.prompts`; this picks the builder the way the official class
    does for any dataset name. MCQ rows list the options from the columns A, B, ... that are present.
    Without CoT: HallusionBench appends ' Yes or No?', OCRBench and VQA sets get the short-answer
    instruction (MMVet: 'Answer this question in detail.', LLaVABench: none), MMMU moves the
    no-options instruction into the prompt. Example (MCQ, no CoT): question 'Colour?', A 'red',
    B 'blue' -> ('', "Question: Colour?\nOptions:\nA. red\nB. blue\n\nAnswer with the option's letter ...").
    """
    question = str(line["question"])
    if kind == "MCQ":
        options = {c: str(line.get(c)) for c in string.ascii_uppercase if _present(line, c)}
        built = build_mcq_prompt(question, options, line.get("hint") if _present(line, "hint") else None, cot)
        if built.instruction and dataset_in(dataset, ("MMMU",)):
            return "", built.instruction + "\n" + built.text
        return built.instruction, built.text
    if cot:
        if kind == "Y/N":
            built = build_yes_no_prompt(question, cot=True)
        elif kind == "VQA":
            built = build_vqa_prompt(question, cot=True, ocrbench=dataset_in(dataset, ("OCRBench",)))
        else:
            return "", question
        return built.instruction, built.text
    if dataset_in(dataset, ("HallusionBench",)):
        built = build_yes_no_prompt(question, suffix=YES_NO_SUFFIX)
    elif dataset_in(dataset, ("OCRBench",)) or (kind == "VQA" and not dataset_in(dataset, ("LLaVABench", "MMVet"))):
        built = build_vqa_prompt(question)
    elif kind == "VQA":
        return (DETAIL_INSTRUCTION if dataset_in(dataset, ("MMVet",)) else ""), question
    else:
        return "", question
    return built.instruction, built.text


def extract_answer(text: str, dataset: str | None, kind: str | None, cot: bool) -> str:
    """The official post-step on CoT datasets: the letter after the last 'Answer:' (MCQ), or the text after
    the first 'Answer:' (Y/N, and VQA except OCRBench / MMVet). Anything else is returned unchanged.

    Example: 'Blue dominates.\\nAnswer: B' (MCQ) -> 'B'; 'So: Answer: 12 apples' (VQA) -> '12 apples'.
    """
    if not cot:
        return text
    if kind == "MCQ":
        letters = re.findall(r"Answer:\s*([A-Ia-i])(?![A-Za-z])", text, re.DOTALL)
        return letters[-1].strip() if letters else text
    if kind == "Y/N" or (kind == "VQA" and not dataset_in(dataset, ("OCRBench", "MMVet"))):
        match = re.search(r"Answer:\s*(.*)\s*$", text, re.DOTALL)
        return match.group(1) if match else text
    return text


class MiniCPMV(BaseModel):
    """MiniCPM-V 4.5 (this implementation) for VLMEvalKit.

    model_path:       a checkpoint folder (or None / 'demo' for the embedded demo model)
    thinking:         None / 'auto' = the official per-dataset rule; True / False force it
    max_new_tokens:   override the per-dataset budget (8192 thinking, 2048 CoT, 1024 otherwise)
    seed:             seeds the upsizing draws (per item, from its content) and sampled generations
    think_prefill:    text the reasoning starts with (None = the official 'I'; '' = none)
    return_reasoning: thinking mode returns '<think>\n' + reasoning + '</think>' + answer, unextracted
    video_fps / video_packing / video_max_groups: video sampling (official recipe defaults)
    max_inp_length:   prompt budget for images and text (8192, official); video_max_inp_length for videos
    model / processor: an already loaded pair (skips loading); device / dtype: for loading
    """

    INSTALL_REQ = False
    INTERLEAVE = True
    VIDEO_LLM = True

    def __init__(self, model_path: str | None = None, *, thinking: bool | str | None = None,
                 max_new_tokens: int | None = None, seed: int = 0, think_prefill: str | None = None,
                 return_reasoning: bool = False, video_fps: float = 5, video_packing: int | None = None,
                 video_max_groups: int = 180, max_inp_length: int = MAX_INPUT_TOKENS,
                 video_max_inp_length: int = VIDEO_MAX_INP_LENGTH, model=None, processor=None,
                 device: str | None = None, dtype: str | torch.dtype | None = None):
        super().__init__()
        if (model is None) != (processor is None):
            raise InputError("pass both model= and processor= (an already loaded pair), or neither")
        self.runner = ModelRunner(model, processor) if model is not None else ModelRunner.load(model_path, device, dtype)
        self.thinking = parse_thinking(thinking)
        self.max_new_tokens = max_new_tokens
        self.seed = int(seed)
        self.think_prefill = think_prefill
        self.return_reasoning = return_reasoning
        self.video = VideoSettings(float(video_fps), video_packing, int(video_max_groups))
        self.max_inp_length, self.video_max_inp_length = int(max_inp_length), int(video_max_inp_length)

    # ---- VLMEvalKit hooks --------------------------------------------------------------------------------
    def use_custom_prompt(self, dataset: str | None) -> bool:
        """Official prompts for image MCQ, Y/N and VQA datasets; video datasets keep the kit's prompts."""
        return dataset_type(dataset) in ("MCQ", "Y/N", "VQA")

    def build_prompt(self, line: Any, dataset: str | None = None) -> list[dict[str, str]]:
        """The official message for one TSV row: [instruction text,] image(s), question text."""
        if self.dump_image_func is None:
            raise InputError("build_prompt needs set_dump_image(dataset.dump_image) first (VLMEvalKit does this)")
        settings = self.settings(dataset)
        instruction, prompt = build_question(line, dataset or "", dataset_type(dataset), settings.cot_prompt)
        paths = self.dump_image(line, dataset)
        paths = paths if isinstance(paths, (list, tuple)) else [paths]
        message = [dict(type="text", value=instruction)] if instruction else []
        message += [dict(type="image", value=p) for p in paths]
        message.append(dict(type="text", value=prompt))
        if HAVE_VLMEVAL and (dataset or "").startswith("MMMU_"):  # images at their '<image k>' marks, as the kit does
            from vlmeval.dataset import MMMUDataset

            message = MMMUDataset.split_MMMU(message)
        return message

    def generate_inner(self, message: Sequence[Mapping[str, Any]], dataset: str | None = None) -> str:
        """One answer for one message (see the class docstring for the settings)."""
        prompt, settings = self.prepare(message, dataset)
        return self.finish(self.runner.generate([prompt], [self.params(settings)])[0], dataset, settings)

    def chat_inner(self, messages: Sequence[Mapping[str, Any]], dataset: str | None = None) -> str:
        """Multi-turn: [{'role': 'user' | 'assistant' | 'system', 'content': [{'type', 'value'}, ...]}, ...]."""
        settings = self.settings(dataset)
        turns, system = [], ""
        for m, msg in enumerate(messages):
            parts = self._parts(msg.get("content") or [], settings, f"turn {m}")
            if msg.get("role") == "system":
                system = "\n".join(p for p in parts if isinstance(p, str))
            else:
                turns.append({"role": msg.get("role"), "content": parts})
        prompt = self._prompt(turns, settings, system)
        return self.finish(self.runner.generate([prompt], [self.params(settings)])[0], dataset, settings)

    # ---- steps ---------------------------------------------------------------------------------------
    def settings(self, dataset: str | None) -> RunSettings:
        return dataset_settings(dataset, self.thinking, seed=self.seed, max_new_tokens=self.max_new_tokens)

    def params(self, settings: RunSettings) -> SamplingParams:
        """The settings' SamplingParams, seeded when sampling (an item samples the same way in every run)."""
        p = settings.sampling
        return p if p.num_beams > 1 or p.temperature == 0 else replace(p, seed=self.seed)

    def prepare(self, message: Sequence[Mapping[str, Any]], dataset: str | None) -> tuple[Prompt, RunSettings]:
        """VLMEvalKit message -> (Prompt, settings). Text items with role 'system' become the system prompt."""
        if isinstance(message, (str, Mapping)) or not message:
            raise InputError(f"message must be a non-empty list of {{'type', 'value'}} dicts, got {message!r:.80}")
        settings = self.settings(dataset)
        system = "\n".join(str(m.get("value")) for m in message if m.get("role") == "system" and m.get("type") == "text")
        parts = self._parts([m for m in message if m.get("role") != "system"], settings, "message")
        return self._prompt([{"role": "user", "content": parts}], settings, system), settings

    def _prompt(self, messages: list[dict], settings: RunSettings, system: str) -> Prompt:
        with_video = any(has_video(m["content"]) for m in messages)
        budget = self.video_max_inp_length if with_video else self.max_inp_length
        prefill = settings.think_prefill if self.think_prefill is None else self.think_prefill
        prefill = prefill if settings.thinking else ""
        return Prompt(messages, settings.thinking, prefill, system, budget)

    def _parts(self, items: Sequence[Mapping[str, Any]], settings: RunSettings, where: str) -> list[Any]:
        """{'type', 'value'} items -> processor parts. On upsizing datasets images are upsized with a
        generator seeded by (seed, the item's values), so an item gets the same draw in every run."""
        rng = row_rng(self.seed, repr([(i.get("type"), str(i.get("value"))) for i in items if isinstance(i, Mapping)]))
        parts: list[Any] = []
        for k, item in enumerate(items):
            name = f"{where} item {k}"
            if not isinstance(item, Mapping) or "type" not in item or "value" not in item:
                raise InputError(f"{name}: expected a {{'type', 'value'}} dict, got {item!r:.80}")
            kind, value = item["type"], item["value"]
            if item.get("role") == "assistant":
                raise InputError(f"{name}: assistant text inside a message is not supported; use chat_inner for turns")
            if kind == "text":
                parts.append(str(value))
            elif kind == "image":
                image = load_image(value, name=name)
                parts.append(upsize_image(image, rng) if settings.upsize else image)
            elif kind == "video":
                if not is_video_path(value):
                    raise InputError(f"{name}: video value {value!r:.80} is not a video file path "
                                     "(suffixes: .mp4, .mkv, .avi, .mov, .webm, ...)")
                parts.append(media_part(value, self.video, name))
            else:
                raise InputError(f"{name}: type {kind!r} is not supported; use 'text', 'image' or 'video'")
        return parts

    def finish(self, out: Generated, dataset: str | None, settings: RunSettings) -> str:
        """The returned string: the answer (thinking: after `</think>`, or all of the text when the
        reasoning never closed), then the official 'Answer: X' extraction on CoT datasets."""
        if self.return_reasoning and settings.thinking:
            return "<think>\n" + out.text
        text = out.answer if (out.answer or not settings.thinking) else out.text
        return extract_answer(text, dataset, dataset_type(dataset), settings.cot_prompt)


def register_vlmeval(name: str = "MiniCPM-V-4_5-minicpmv", **kwargs: Any) -> None:
    """Add `MiniCPMV` (with `kwargs`, e.g. model_path=...) to VLMEvalKit's `supported_VLM` under `name`,
    so `vlmeval.run.main()` in the same process accepts `--model <name>`."""
    if not HAVE_VLMEVAL:
        raise InputError("VLMEvalKit is not importable here; install it (pip install -e . in a clone of "
                         "open-compass/VLMEvalKit) to run its benchmarks with this model")
    from vlmeval.config import supported_VLM

    supported_VLM[name] = functools.partial(MiniCPMV, **kwargs)
