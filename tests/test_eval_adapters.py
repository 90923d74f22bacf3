"""VLMEvalKit and lmms-eval adapters (minicpmv.eval.adapters) with the embedded demo model.

The kits' call shapes are reproduced by fakes (VLMEvalKit messages and TSV rows, lmms-eval
Instances, task_dict, doc_to_visual / doc_to_text callables); where lmms-eval is installed the same
calls also run against its real base class, Instance type and model registry. Answers are compared
with the official `chat()` path, and log-likelihoods with a direct forward pass of the model.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

import minicpmv
from minicpmv import InputError, Video
from minicpmv.chat import chat
from minicpmv.eval.adapters import LMMS_EVAL_CLASS_PATH, lmms_eval
from minicpmv.eval.adapters.common import dataset_settings
from minicpmv.eval.adapters.lmms_eval import MiniCPMVLmms, context_parts, cut_at_stops, sampling_from_gen_kwargs
from minicpmv.eval.adapters.vlmeval import MiniCPMV, build_question, dataset_type, extract_answer
from minicpmv.eval.prompts import SHORT_ANSWER_COT, VQA_INSTRUCTION
from minicpmv.chat import sample_to_request
from minicpmv.inference.engine import Engine
from minicpmv.inference.types import SamplingParams

ROOT = Path(__file__).resolve().parents[1]
VIDEO = ROOT / "examples" / "moving_square.mp4"  # 6 frames at 5 fps
SHAPES = ROOT / "examples" / "shapes.png"
TOKENS = 4  # new tokens per generation: enough to compare outputs, cheap on CPU


@pytest.fixture(scope="module")
def demo():
    model, processor = minicpmv.load(device="cpu", dtype=torch.float32)
    return model, processor


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("adapter_images")
    out = {}
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        image = Image.new("RGB", (96, 80), "white")
        ImageDraw.Draw(image).ellipse((20, 12, 76, 68), fill=colour)
        image.save(folder / f"{name}.png")
        out[name] = folder / f"{name}.png"
    return out


@pytest.fixture(scope="module")
def vlm(demo):
    model, processor = demo
    return MiniCPMV(model=model, processor=processor, max_new_tokens=TOKENS)


@pytest.fixture(scope="module")
def lmm(demo):
    model, processor = demo
    return MiniCPMVLmms(model=model, processor=processor, batch_size=4, max_new_tokens=TOKENS,
                        thinking_max_new_tokens=TOKENS)


def official_chat(demo, content, **kwargs) -> str:
    model, processor = demo
    return chat(model, msgs=[{"role": "user", "content": content}], processor=processor, sampling=False,
                max_new_tokens=TOKENS, **kwargs)


# ---- VLMEvalKit ---------------------------------------------------------------------------------------
def test_vlmeval_single_image_text_and_two_images_match_official_chat(vlm, demo, images):
    red, blue = str(images["red"]), str(images["blue"])
    one = vlm.generate_inner([dict(type="image", value=red), dict(type="text", value="What colour is the circle?")])
    assert one == official_chat(demo, [Image.open(red), "What colour is the circle?"])
    two = vlm.generate_inner([dict(type="image", value=red), dict(type="image", value=blue),
                              dict(type="text", value="Are the circles the same colour?")])
    assert two == official_chat(demo, [Image.open(red), Image.open(blue), "Are the circles the same colour?"])
    text = vlm.generate_inner([dict(type="text", value="Say hello.")])
    assert text == official_chat(demo, ["Say hello."])
    model, processor = demo  # multi-turn (VLMEvalKit's chat -> chat_inner) against the official chat() on the same turns
    turns = [dict(role="user", content=[dict(type="image", value=red), dict(type="text", value="What is it?")]),
             dict(role="assistant", content=[dict(type="text", value="A circle.")]),
             dict(role="user", content=[dict(type="text", value="What colour?")])]
    reference = chat(model, msgs=[{"role": "user", "content": [Image.open(red), "What is it?"]},
                                  {"role": "assistant", "content": "A circle."}, {"role": "user", "content": "What colour?"}],
                     processor=processor, sampling=False, max_new_tokens=TOKENS)
    assert vlm.chat_inner(turns) == reference


def test_vlmeval_video_uses_recipe_sampling_and_3d_packing(demo):
    model, processor = demo
    packed = MiniCPMV(model=model, processor=processor, max_new_tokens=TOKENS, video_packing=3)
    message = [dict(type="video", value=str(VIDEO)), dict(type="text", value="Which way does the square move?")]
    prompt, _ = packed.prepare(message, "Video-MME")
    video = prompt.messages[0]["content"][0]
    assert isinstance(video, Video) and (video.fps, video.packing) == (5.0, 3)
    sample = packed.runner.encode(prompt)
    assert [len(g) for g in sample.temporal_ids] == [3, 3]  # 6 sampled frames -> two 3-frame groups
    assert len(sample.image_bounds) == 2  # one 64-token span per group
    assert sample.temporal_ids[0][0] < sample.temporal_ids[1][0]  # ids grow with time (0.1 s units)
    answer = packed.generate_inner(message, "Video-MME")
    assert answer == official_chat(demo, [Video(VIDEO, fps=5, packing=3), "Which way does the square move?"])
    assert not packed.use_custom_prompt("Video-MME")  # video sets keep the kit's own prompt


def test_vlmeval_thinking_follows_dataset_rule_and_constructor(demo, vlm):
    model, processor = demo
    tok = processor.tokenizer
    message = [dict(type="image", value=str(SHAPES)), dict(type="text", value="How many shapes?")]
    prompt, settings = vlm.prepare(message, "MMStar")  # a long-CoT set: thinking, 'I' prefill, sampled
    assert settings.thinking and prompt.enable_thinking and prompt.think_prefill == "I"
    assert vlm.runner.encode(prompt).input_ids[-len(tok.encode("<think>\nI")):] == tok.encode("<think>\nI")
    params = vlm.params(settings)
    assert (params.temperature, params.num_beams, params.seed) == (0.7, 1, 0)
    first = vlm.generate_inner(message, "MMStar")
    assert first == vlm.generate_inner(message, "MMStar")  # seeded: the same item samples the same way
    prompt, settings = vlm.prepare(message, "TextVQA_VAL")  # not a reasoning set: beam search, no thinking
    assert not prompt.enable_thinking and vlm.params(settings).num_beams == 3
    off = MiniCPMV(model=model, processor=processor, thinking=False, max_new_tokens=TOKENS)
    prompt, settings = off.prepare(message, "MMStar")  # still the CoT set's budget and upsizing, without thinking
    assert not prompt.enable_thinking and settings.sampling.num_beams == 3 and settings.upsize
    on = MiniCPMV(model=model, processor=processor, thinking="on", max_new_tokens=TOKENS, return_reasoning=True)
    raw = on.generate_inner(message, None)
    assert on.prepare(message, None)[0].enable_thinking and raw.startswith("<think>\nI")


def _b64_png(path: Path) -> str:
    buf = io.BytesIO()
    Image.open(path).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_vlmeval_build_prompt_from_tsv_rows(demo, images, tmp_path):
    model, processor = demo
    kit = MiniCPMV(model=model, processor=processor, max_new_tokens=TOKENS)

    def dump_image(line):  # VLMEvalKit's dataset.dump_image: base64 column -> files, their paths
        path = tmp_path / f"{line['index']}.png"
        path.write_bytes(base64.b64decode(line["image"]))
        return [str(path)]

    kit.set_dump_image(dump_image)
    row = {"index": 3, "image": _b64_png(images["red"]), "question": "What colour is the circle?",
           "A": "red", "B": "blue", "C": float("nan"), "hint": float("nan")}
    assert kit.use_custom_prompt("AI2D_TEST") and dataset_type("AI2D_TEST") == "MCQ"
    message = kit.build_prompt(row, "AI2D_TEST")
    assert [m["type"] for m in message] == ["image", "text"]
    assert message[1]["value"] == ("Question: What colour is the circle?\nOptions:\nA. red\nB. blue\n"
                                   "\nAnswer with the option's letter from the given choices directly.")
    prompt, _ = kit.prepare(message, "AI2D_TEST")  # AI2D upsizes small images, the same way every run
    upsized = prompt.messages[0]["content"][0].size
    assert upsized[0] > 96 and upsized == kit.prepare(message, "AI2D_TEST")[0].messages[0]["content"][0].size
    assert isinstance(kit.generate(message, "AI2D_TEST"), str)
    vqa = kit.build_prompt({**row, "question": "What is drawn?"}, "TextVQA_VAL")
    assert [m["value"] for m in vqa if m["type"] == "text"] == [VQA_INSTRUCTION, "What is drawn?"]
    yes_no = kit.build_prompt({**row, "question": "Is it red?"}, "HallusionBench")  # CoT set in 4.5
    assert yes_no[-1]["value"] == SHORT_ANSWER_COT + "Is it red?"


def test_vlmeval_prompt_texts_and_answer_extraction():
    row = {"question": "Q?", "A": "x", "B": "y", "hint": "look"}
    instruction, text = build_question(row, "MMStar", "MCQ", cot=True)
    assert instruction == "" and text.endswith("look\nQ?\nA. x\nB. y\n") and "Answer: selected option" in text
    assert build_question({"question": "Q?"}, "MMMU_DEV_VAL", "MCQ", cot=False)[0] == ""  # MMMU inlines it
    assert build_question({"question": "Q?"}, "MMVet", "VQA", cot=False) == ("Answer this question in detail.", "Q?")
    assert extract_answer("Reasoning. Answer: A then Answer: C.", "MMStar", "MCQ", cot=True) == "C"
    assert extract_answer("So.\nAnswer: 12 apples", "ChartQA_TEST", "VQA", cot=True) == "12 apples"
    assert extract_answer("Answer: 12", "OCRBench", "VQA", cot=True) == "Answer: 12"  # OCRBench keeps its text
    assert extract_answer("Answer: B", "AI2D_TEST", "MCQ", cot=False) == "Answer: B"
    assert (dataset_type("MMBench_DEV_EN_V11"), dataset_type("MME"), dataset_type("MMBench-Video")) == ("MCQ", "Y/N", "Video")
    s = dataset_settings("OCRBench")
    assert (s.thinking, s.cot_prompt, s.upsize, s.sampling.num_beams, s.sampling.max_new_tokens) == (False, True, True, 3, 2048)


def test_vlmeval_bad_input_names_the_problem(vlm):
    with pytest.raises(InputError, match="not a video file path"):
        vlm.generate_inner([dict(type="video", value="frames.txt")])
    with pytest.raises(InputError, match="'audio' is not supported"):
        vlm.generate_inner([dict(type="audio", value="a.wav")])
    with pytest.raises(InputError, match="non-empty list"):
        vlm.generate_inner([])
    with pytest.raises(InputError, match="set_dump_image"):
        MiniCPMV(model=vlm.runner.model, processor=vlm.runner.processor).build_prompt({"question": "q"}, "AI2D")


# ---- lmms-eval ------------------------------------------------------------------------------------------
@dataclass
class FakeInstance:
    """lmms-eval's Instance as the model sees it: `args` is the arguments tuple."""

    request_type: str
    arguments: tuple
    idx: int = 0
    metadata: dict = field(default_factory=lambda: {"task": "t", "doc_id": 0, "repeats": 1})

    @property
    def args(self) -> tuple:
        return self.arguments


def _docs(images) -> list[dict]:
    return [
        {"visuals": [Image.open(images["red"])], "question": "What colour is the circle?"},
        {"visuals": [Image.open(images["red"]), Image.open(images["blue"])], "question": "Same colour?"},
        {"visuals": [str(VIDEO)], "question": "Which way does the square move?"},
        {"visuals": [], "question": "Say hello."},
    ]


def _visuals(doc):
    return doc["visuals"]


def _greedy(demo, content, max_new_tokens=TOKENS) -> str:
    """Plain engine greedy decoding of one user turn (what generate_until's defaults mean)."""
    model, processor = demo
    sample = processor.encode([{"role": "user", "content": content}])
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    return Engine(model, processor.tokenizer).generate([sample_to_request(sample, params)])[0].completions[0].text.strip()


def test_lmms_generate_until_image_images_video_text(lmm, demo, images):
    docs = _docs(images)
    lmm.task_dict = {"toy": {"test": docs}}
    requests = [FakeInstance(request_type="generate_until", idx=0, metadata={"task": "toy", "doc_id": i, "repeats": 1},
                              arguments=(d["question"], {"max_new_tokens": TOKENS, "temperature": 0}, _visuals, i,
                                         "toy", "test")) for i, d in enumerate(docs)]
    batched = lmm.generate_until(requests)  # one engine batch; each answer as if alone
    contents = [[*d["visuals"], d["question"]] for d in docs]
    contents[2] = [Video(str(VIDEO), fps=5), docs[2]["question"]]  # a video path is sampled by the recipe
    assert batched == [_greedy(demo, c) for c in contents]


def test_lmms_until_stops_generation(lmm, images):
    lmm.task_dict = {"toy": {"test": _docs(images)}}

    def ask(gen_kwargs):
        return lmm.generate_until([FakeInstance("generate_until", ("Describe the image.", gen_kwargs, _visuals, 0,
                                                                   "toy", "test"))])[0]

    full = ask({"max_new_tokens": TOKENS})  # the demo model's pre-training prompt: a caption of several characters
    assert len(full) >= 2
    stop = full[1]
    assert ask({"max_new_tokens": TOKENS, "until": [stop]}) == full.split(stop)[0]  # the engine stops there
    beams = ask({"max_new_tokens": TOKENS, "num_beams": 2})
    assert ask({"max_new_tokens": TOKENS, "num_beams": 2, "until": beams[-1]}) == beams.split(beams[-1])[0]
    assert cut_at_stops("Paris.\nQ: next", ["\nQ:", "xyz"]) == "Paris."


def _direct_logprob(demo, content, continuation: str) -> tuple[float, bool]:
    """log p(continuation | prompt) from one plain forward pass of the whole sequence."""
    model, processor = demo
    sample = processor.encode([{"role": "user", "content": content}])
    cont = processor.tokenizer.encode(continuation)
    ids = torch.tensor([list(sample.input_ids) + cont])
    with torch.no_grad():
        logits = model(ids, pixel_values=[sample.pixel_values], tgt_sizes=[sample.tgt_sizes],
                       temporal_ids=[sample.temporal_ids], image_bounds=[sample.image_bounds]).logits[0].float()
    logp = logits.log_softmax(-1)  # [T, V]
    start = len(sample.input_ids)
    positions = range(start - 1, start - 1 + len(cont))
    total = sum(float(logp[t, c]) for t, c in zip(positions, cont))
    greedy = all(int(logits[t].argmax()) == c for t, c in zip(positions, cont))
    return total, greedy


def test_lmms_loglikelihood_ranks_choices_like_the_model(lmm, demo, images):
    doc = {"visuals": [Image.open(images["red"])]}
    lmm.task_dict = {"mcq": {"test": [doc]}}
    context = "What colour is the circle?"
    best = _greedy(demo, [doc["visuals"][0], context], max_new_tokens=1)  # a choice greedy decoding gives
    choices = [" red", " blue", " green", " yellow", " " + best]
    requests = [FakeInstance(request_type="loglikelihood", idx=i, metadata={"task": "mcq", "doc_id": 0, "repeats": 1},
                              arguments=(context, c, _visuals, 0, "mcq", "test")) for i, c in enumerate(choices)]
    scores = lmm.loglikelihood(requests)
    direct = [_direct_logprob(demo, [doc["visuals"][0], context], c.strip()) for c in choices]
    for (lp, greedy), (lp_ref, greedy_ref) in zip(scores, direct):
        assert lp == pytest.approx(lp_ref, abs=2e-3) and greedy == greedy_ref
    assert max(range(4), key=lambda k: scores[k][0]) == max(range(4), key=lambda k: direct[k][0])
    assert scores[-1][1] and scores[-1][0] == pytest.approx(max(lp for lp, _ in scores), abs=1e-4)  # greedy wins
    # doc_to_target callables and the unconditional (context, continuation) form
    by_target = lmm.loglikelihood([FakeInstance("loglikelihood", (context, lambda d: " red", _visuals, 0, "mcq", "test"))])
    assert by_target[0][0] == pytest.approx(scores[0][0], abs=1e-4) and by_target[0][1] == scores[0][1]
    unconditional = lmm.loglikelihood([FakeInstance("loglikelihood", ("", " red"))])
    assert unconditional[0][0] < 0 and unconditional[0][0] != pytest.approx(scores[0][0])


def test_lmms_thinking_modes(demo, images):
    model, processor = demo
    auto = MiniCPMVLmms(model=model, processor=processor, thinking="auto", max_new_tokens=TOKENS,
                        thinking_max_new_tokens=TOKENS)
    assert auto.thinking_for("mmstar") and auto.thinking_for("mmbench_en_dev") and not auto.thinking_for("textvqa_val")
    prompt, params, stops = auto._generation_job("How many?", {"until": ["\n"], "max_new_tokens": 2}, [], "mmstar")
    assert prompt.enable_thinking and params.temperature == 0.7 and params.seed == 0
    assert params.max_new_tokens == TOKENS and params.stop == () and stops == ("\n",)  # until: after the reasoning
    prompt, params, _ = auto._generation_job("How many?", {"until": ["\n"]}, [], "textvqa_val")
    assert not prompt.enable_thinking and params.temperature == 0 and params.stop == ("\n",)
    auto.task_dict = {"mmstar": {"val": _docs(images)}}
    request = FakeInstance("generate_until", ("How many circles?", {}, _visuals, 0, "mmstar", "val"))
    first = auto.generate_until([request])
    assert first == auto.generate_until([request])  # seeded sampling


def test_lmms_multi_round(lmm, images):
    lmm.task_dict = {"dialog": {"test": _docs(images)}}
    seen = []

    def doc_to_text(doc, previous_output, round_idx, previous_round_info):
        seen.append((round_idx, list(previous_output), previous_round_info))
        done = round_idx == 3
        return doc["visuals"], f"Round {round_idx}: and now?", done, previous_output, {"round": round_idx}

    request = FakeInstance("generate_until_multi_round",
                           ("What colour is the circle?", {"max_new_tokens": TOKENS}, _visuals, doc_to_text, 0, "dialog", "test"))
    (rounds,) = lmm.generate_until_multi_round([request])
    assert len(rounds) == 3 and all(isinstance(r, str) for r in rounds)
    assert [s[0] for s in seen] == [1, 2, 3] and seen[1][1] == rounds[:2] and seen[2][2] == {"round": 2}


def test_lmms_inputs_and_arguments():
    params, stops = sampling_from_gen_kwargs({"until": "\n\n", "max_new_tokens": 16, "temperature": 0}, 1024)
    assert (params.temperature, params.max_new_tokens, stops) == (0.0, 16, ("\n\n",))
    params, _ = sampling_from_gen_kwargs({"do_sample": True, "top_p": 0.9}, 1024)
    assert (params.temperature, params.top_p, params.max_new_tokens) == (1.0, 0.9, 1024)
    with pytest.warns(UserWarning, match="image_aspect_ratio"):
        sampling_from_gen_kwargs({"image_aspect_ratio": "pad"}, 8)
    with pytest.raises(InputError, match="until"):
        sampling_from_gen_kwargs({"until": 3}, 8)
    a, b = Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8))
    assert context_parts("Left <image> right <image> same?", [a, b], lmms_eval.VideoSettings(), "t") == \
        ["Left", a, "right", b, "same?"]
    assert context_parts("<image>\nWhat?", [a, b], lmms_eval.VideoSettings(), "t") == [a, b, "What?"]
    with pytest.raises(InputError, match="audio"):
        context_parts("Listen", [{"array": [0.0], "sampling_rate": 16000}], lmms_eval.VideoSettings(), "t")
    with pytest.raises(InputError, match="unknown model_args"):
        MiniCPMVLmms(model=object(), processor=object(), colour="red")


def test_stand_in_bases_when_the_kits_are_absent(demo, images, monkeypatch):
    """Import fresh copies of both adapter modules with the kits hidden: they fall back to the local
    stand-ins, and the lmms-eval class still answers the fake call shapes."""
    for name in [m for m in sys.modules if m.split(".")[0] in ("lmms_eval", "vlmeval")] + ["lmms_eval", "vlmeval"]:
        monkeypatch.setitem(sys.modules, name, None)
    copies = {}
    for name in ("lmms_eval", "vlmeval"):
        spec = importlib.util.spec_from_file_location(f"_adapter_copy_{name}", ROOT / "minicpmv/eval/adapters" / f"{name}.py")
        copies[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(copies[name])
    assert copies["lmms_eval"].LmmsBase is copies["lmms_eval"].LocalLmms and not copies["lmms_eval"].HAVE_LMMS_EVAL
    assert copies["vlmeval"].BaseModel is copies["vlmeval"].LocalBaseModel and not copies["vlmeval"].HAVE_VLMEVAL
    model, processor = demo
    cls = copies["lmms_eval"].MiniCPMVLmms
    local = cls.create_from_arg_string("thinking=false,max_new_tokens=4", {"model": model, "processor": processor,
                                                                           "batch_size": 2, "device": None})
    assert (local.batch_size, local.max_new_tokens, local.thinking, local.rank, local.world_size) == (2, 4, False, 0, 1)
    local.task_dict = {"toy": {"test": _docs(images)}}
    (text,) = local.generate_until([FakeInstance("generate_until", ("What colour?", {}, _visuals, 0, "toy", "test"))])
    assert text == _greedy(demo, [*_docs(images)[0]["visuals"], "What colour?"])
    ((logprob, _),) = local.loglikelihood([FakeInstance("loglikelihood", ("What colour?", " red", _visuals, 0, "toy", "test"))])
    assert logprob == pytest.approx(_direct_logprob(demo, [*_docs(images)[0]["visuals"], "What colour?"], "red")[0], abs=2e-3)

    class Echo(copies["vlmeval"].LocalBaseModel):  # VLMEvalKit's generate(): normalise, then generate_inner
        def generate_inner(self, message, dataset=None):
            return message, dataset

    red = str(images["red"])
    assert Echo().generate([red, "What colour?", str(VIDEO)], "X") == (
        [dict(type="image", value=red), dict(type="text", value="What colour?"), dict(type="video", value=str(VIDEO))], "X")
    assert Echo().generate("Hi")[0] == [dict(type="text", value="Hi")]
    with pytest.raises(InputError, match="not supported"):
        Echo().generate([dict(type="audio", value="a.wav")])


def test_lmms_entry_point_is_declared():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["lmms_eval.models"]
    assert declared == {"minicpmv": "minicpmv.eval.adapters:lmms_eval_manifest"}
    assert LMMS_EVAL_CLASS_PATH == f"{MiniCPMVLmms.__module__}.{MiniCPMVLmms.__qualname__}"


# ---- the real lmms-eval, where it is installed -----------------------------------------------------------
def _real_lmms():
    return pytest.importorskip("lmms_eval.api.model", reason="lmms-eval is not installed (pip install --no-deps "
                               "lmms-eval pytz loguru, plus transformers, gives its base class and registry)")


def test_real_lmms_eval_base_instances_and_registry(lmm, demo, images):
    api = _real_lmms()
    from importlib.metadata import entry_points

    from lmms_eval.api.instance import Instance

    assert issubclass(MiniCPMVLmms, api.lmms) and MiniCPMVLmms.is_simple
    lmm.task_dict = {"toy": {"test": _docs(images)}}
    meta = {"task": "toy", "doc_id": 0, "repeats": 1}
    (text,) = lmm.generate_until([Instance("generate_until", ("What colour?", {"until": ["\n"]}, _visuals, 0, "toy",
                                                              "test"), 0, meta)])
    assert text == cut_at_stops(_greedy(demo, [*_docs(images)[0]["visuals"], "What colour?"]), ["\n"])
    choices = [Instance("loglikelihood", ("What colour?", c, _visuals, 0, "toy", "test"), i, meta)
               for i, c in enumerate([" red", " blue"])]
    scores = lmm.loglikelihood(choices)
    direct = [_direct_logprob(demo, [*_docs(images)[0]["visuals"], "What colour?"], c) for c in ("red", "blue")]
    assert [s[0] for s in scores] == pytest.approx([d[0] for d in direct], abs=2e-3)
    if not any(ep.name == "minicpmv" for ep in entry_points(group="lmms_eval.models")):
        pytest.skip("the minicpmv package metadata predates its entry point; reinstall with pip install -e .")
    from lmms_eval.models import get_model

    assert get_model("minicpmv") is MiniCPMVLmms and get_model("minicpmv_4_5") is MiniCPMVLmms
    model, processor = demo
    made = get_model("minicpmv").create_from_arg_string("thinking=auto,max_new_tokens=4",
                                                        {"model": model, "processor": processor, "batch_size": 2})
    assert made.thinking is None and made.batch_size == 2


def test_prompt_budget_for_video_is_larger(lmm):
    assert lmm._budget([Video(str(VIDEO))]) == 16384 and lmm._budget(["text"]) == 8192
