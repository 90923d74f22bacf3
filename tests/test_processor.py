"""Processor: every reference prompt reproduced exactly; message forms, videos, batching, bad input."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REFERENCE_DIR, reference_path
from minicpmv.config import ProcessorConfig
from minicpmv.errors import InputError
from minicpmv.processor import slicing, video
from minicpmv.processor.processor import Processor, expand_image_tags
from minicpmv.processor.tokenizer import Tokenizer
from minicpmv.processor.video import Video


@pytest.fixture(scope="module")
def proc() -> Processor:
    """The tiny model folder: real tokenizer + real preprocessor_config.json."""
    return Processor.from_pretrained(reference_path("tiny_model"))


@pytest.fixture(scope="module")
def tiny_cases() -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(reference_path("tiny_model_cases.json").read_text())["cases"]}


def png(rel: str) -> Image.Image:
    with Image.open(REFERENCE_DIR / rel) as im:
        return im.convert("RGB")


def solid(wh: list[int]) -> Image.Image:
    """processor.json images: only the size matters (slicing depends on it alone)."""
    return Image.new("RGB", tuple(wh), (128, 128, 128))


def check_batch_row(batch, b: int, ref: dict, pad_id: int) -> None:
    """Our row b against a reference item (which pads with id 0 and masks every id 0)."""
    ids, mask = batch.input_ids[b].tolist(), batch.attention_mask[b].tolist()
    assert len(ids) == len(ref["input_ids"])
    pad = mask.count(0)
    assert mask == [0] * pad + [1] * (len(ids) - pad)  # from the lengths, not from the ids
    assert ids[pad:] == ref["input_ids"][pad:] and ids[:pad] == [pad_id] * pad
    assert ref["input_ids"][:pad] == [0] * pad
    assert ref["attention_mask"] == [int(m == 1 and r != 0) for m, r in zip(mask, ref["input_ids"])]
    assert batch.image_bounds[b].tolist() == ref["image_bound"]


def check_visual(batch, b: int, tgt_sizes: list, temporal_ids: list, patch: int = 14) -> None:
    assert batch.tgt_sizes[b].dtype == torch.int32 and batch.tgt_sizes[b].tolist() == tgt_sizes
    assert batch.temporal_ids[b] == temporal_ids
    assert len(batch.pixel_values[b]) == len(tgt_sizes)
    for px, (h, w) in zip(batch.pixel_values[b], tgt_sizes):
        assert px.shape == (3, h * patch, w * patch)
    assert len(batch.image_bounds[b]) == len(temporal_ids)  # one 64-token span per resampler group


# ---- reference prompts -------------------------------------------------------------------------
def test_processor_json_chat_prompts():
    ref = json.loads(reference_path("processor.json").read_text())
    proc = Processor(Tokenizer.from_pretrained(reference_path("tokenizer")), ProcessorConfig.from_hf_dict(ref["processor_params"]))
    assert ref["chat_prompts"]
    for p in ref["chat_prompts"]:
        convs = [
            [{"role": m["role"], "content": [c if isinstance(c, str) else solid(c["image_wh"]) for c in m["content"]]}
             for m in item["messages"]]
            for item in p["items"]
        ]
        flags = dict(enable_thinking=p["enable_thinking"], system_prompt=p["system_prompt"],
                     max_slice_nums=p["max_slice_nums"], use_image_id=p["use_image_id"])
        tids = p["temporal_ids_arg"]
        if p["batched"]:
            batch = proc(convs, temporal_ids=None if tids is None else [tids] * len(convs), **flags)
        else:
            assert len(convs) == 1
            batch = proc(convs[0], temporal_ids=tids, **flags)
        for b, (conv, item) in enumerate(zip(convs, p["items"])):
            sample = proc.encode(conv, temporal_ids=tids, **flags)
            assert sample.chat_text == item["chat_template_text"], p["name"]
            assert sample.final_text == item["final_text"], p["name"]
            check_batch_row(batch, b, item, proc.tokenizer.pad_id)
            check_visual(batch, b, item["tgt_sizes_hw"], item["temporal_ids"])
            assert len(batch.pixel_values[b]) == item["num_pixel_value_slices"]


def case_messages(case: dict) -> list[dict]:
    """Tiny-case input with images as path parts (loaded by the processor like user files)."""
    return [
        {"role": m["role"], "content": [c if isinstance(c, str) else {"type": "image", "image": str(REFERENCE_DIR / c["image"])}
                                        for c in m["content"]]}
        for m in case["input"]["msgs"]
    ]


def case_flags(case: dict) -> dict:
    i = case["input"]
    return dict(enable_thinking=i["enable_thinking"], system_prompt=i["system_prompt"], max_slice_nums=i["max_slice_nums"],
                use_image_id=i["use_image_id"], temporal_ids=i["temporal_ids"], max_length=i["max_inp_length"])


def test_tiny_model_case_prompts(proc, tiny_cases):
    assert tiny_cases
    for name, case in tiny_cases.items():
        msgs, flags = case_messages(case), case_flags(case)
        sample = proc.encode(msgs, **flags)
        assert sample.chat_text == case["chat_template_text"], name
        assert sample.final_text == case["final_text"], name
        batch = proc(msgs, **flags)
        assert batch.input_ids[0].tolist() == case["input_ids"] and len(case["input_ids"]) == case["seq_len"]
        assert batch.attention_mask[0].tolist() == [1] * case["seq_len"]
        assert batch.image_bounds[0].tolist() == case["image_bound"], name
        check_visual(batch, 0, case["tgt_sizes"], case["temporal_ids"])
        assert len(batch.pixel_values[0]) == case["num_vit_slices"] and len(batch.temporal_ids[0]) == case["resampler_groups"]


def video_cases(tiny_cases: dict) -> list[dict]:
    cases = [c for c in tiny_cases.values() if c["input"]["temporal_ids"] is not None]
    if not cases:
        pytest.skip("no video case in this reference set")
    return cases


def test_packed_video_pixel_order_is_group_slice_frame(proc, tiny_cases):
    for case in video_cases(tiny_cases):
        flags = case_flags(case)
        frames = [png(c["image"]) for c in case["input"]["msgs"][0]["content"] if not isinstance(c, str)]
        batch = proc(case_messages(case), **flags)
        done = [proc.process_image(f, flags["max_slice_nums"]) for f in frames]
        expected, start = [], 0
        for group in flags["temporal_ids"]:
            members = done[start:start + len(group)]
            start += len(group)
            expected += [m.pixel_values[s] for s in range(len(members[0].pixel_values)) for m in members]
        assert len(expected) == len(batch.pixel_values[0])
        assert all(torch.equal(a, b) for a, b in zip(batch.pixel_values[0], expected)), case["name"]


def test_video_object_equals_the_low_level_form(proc, tiny_cases):
    """A Video with frames + temporal_ids gives the reference video prompt (frames get no image id)."""
    checked = 0
    for case in video_cases(tiny_cases):
        flags = case_flags(case)
        content = case["input"]["msgs"][0]["content"]
        is_frame = [not isinstance(c, str) for c in content]
        first, n = is_frame.index(True), sum(is_frame)
        if flags["use_image_id"] is not False or len(case["input"]["msgs"]) > 1 or not all(is_frame[first:first + n]):
            continue  # only the contiguous-frames, no-image-id form has a Video equivalent
        video_part = Video(frames=[png(c["image"]) for c in content[first:first + n]], temporal_ids=flags["temporal_ids"])
        msgs = [{"role": "user", "content": [*content[:first], video_part, *content[first + n:]]}]
        msn = flags["max_slice_nums"]
        batch = proc(msgs, max_slice_nums=None if msn == 1 else msn, enable_thinking=flags["enable_thinking"],
                     system_prompt=flags["system_prompt"])  # video frames default to 1 slice
        assert batch.input_ids[0].tolist() == case["input_ids"], case["name"]
        assert batch.image_bounds[0].tolist() == case["image_bound"]
        check_visual(batch, 0, case["tgt_sizes"], case["temporal_ids"])
        checked += 1
    if not checked:
        pytest.skip("no video case with contiguous frames and use_image_id=False in this reference set")


def write_mp4(path: Path, n_frames: int = 20, fps: int = 10) -> None:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_video_dict_part_from_a_file(proc, tmp_path):
    path = tmp_path / "clip.mp4"
    write_mp4(path)
    decoded = video.load_video(Video(path=str(path), fps=5))
    msgs = [{"role": "user", "content": [{"type": "video", "path": str(path), "fps": 5}, {"type": "text", "text": "What?"}]}]
    sample = proc.encode(msgs)
    n = len(decoded.frames)
    assert sample.chat_text.count("(<image>./</image>)") == n
    assert sample.temporal_ids == decoded.temporal_ids and len(sample.pixel_values) == n  # 1 slice per frame
    assert "<image_id>" not in sample.final_text and len(sample.image_bounds) == len(decoded.temporal_ids)


def test_images_and_video_mixed(proc, tiny_cases):
    case = video_cases(tiny_cases)[0]
    frames = [png(c["image"]) for c in case["input"]["msgs"][0]["content"] if not isinstance(c, str)]
    groups = case["input"]["temporal_ids"]
    a, b = solid([640, 480]), solid([448, 448])
    msgs = [{"role": "user", "content": [a, Video(frames=frames, temporal_ids=groups), b, "Compare."]}]
    sample = proc.encode(msgs)
    pa, pb = proc.process_image(a), proc.process_image(b)
    frame_ph = slicing.image_placeholder(proc.process_image(frames[0], 1).grid, None)
    expected = "\n".join(
        [slicing.image_placeholder(pa.grid, 0), *[frame_ph] * len(groups), slicing.image_placeholder(pb.grid, 1), "Compare."]
    )
    assert sample.final_text == "<|im_start|>user\n" + expected + "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    n_a, n_b = len(pa.pixel_values), len(pb.pixel_values)
    assert sample.temporal_ids == [[-1]] * n_a + [list(g) for g in groups] + [[-1]] * n_b
    assert len(sample.pixel_values) == n_a + len(frames) + n_b
    assert len(sample.image_bounds) == len(sample.temporal_ids)


def test_message_forms_agree(proc):
    image = solid([640, 480])
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    official = [{"role": "user", "content": [image, "What is it?"]}]
    typed = [{"role": "user", "content": [{"type": "image", "image": buf.getvalue()}, {"type": "text", "text": "What is it?"}]}]
    array = [{"role": "user", "content": [np.asarray(image), "What is it?"]}]
    first = proc(official)
    for other in (proc(typed), proc(array)):
        assert torch.equal(first.input_ids, other.input_ids)
        assert all(torch.equal(x, y) for x, y in zip(first.pixel_values[0], other.pixel_values[0]))
    text_only = proc([{"role": "user", "content": "Hi"}])
    assert text_only.pixel_values == [[]] and text_only.tgt_sizes[0].shape == (0, 2) and text_only.image_bounds[0].shape == (0, 2)


def test_left_padding_with_pad_token(proc):
    short = [{"role": "user", "content": "Hi!"}]
    long = [{"role": "user", "content": [solid([448, 448]), "Describe the picture, please!"]}]
    batch = proc([short, long])
    alone = [proc(short), proc(long)]
    width = batch.input_ids.shape[1]
    assert width == alone[1].input_ids.shape[1]
    pad = width - alone[0].input_ids.shape[1]
    assert batch.input_ids[0, :pad].tolist() == [proc.tokenizer.pad_id] * pad
    assert torch.equal(batch.input_ids[0, pad:], alone[0].input_ids[0])
    assert batch.attention_mask[0].tolist() == [0] * pad + [1] * (width - pad)
    assert 0 in batch.input_ids[0].tolist()  # '!' (id 0) is an ordinary, visible token here
    assert batch.attention_mask[1].tolist() == [1] * width
    assert torch.equal(batch.image_bounds[1], alone[1].image_bounds[0])
    batch_rev = proc([long, short])
    assert torch.equal(batch_rev.image_bounds[0], alone[1].image_bounds[0])
    assert batch.labels is None and "labels" not in batch.keys()


def test_image_ids_restart_per_conversation(proc):
    conv = [{"role": "user", "content": [solid([448, 448]), solid([448, 448]), "Two."]}]
    batch_texts = [proc.encode(c, sample_index=i).final_text for i, c in enumerate([conv, conv])]
    for text in batch_texts:
        assert "<image_id>0</image_id>" in text and "<image_id>1</image_id>" in text and "<image_id>2" not in text
    assert "<image_id>" not in proc.encode(conv, use_image_id=False).final_text


def test_max_length(proc):
    msgs = [{"role": "user", "content": [solid([448, 448]), "Hi"]}]
    n = proc(msgs).input_ids.shape[1]
    assert proc(msgs, max_length=n).input_ids.shape[1] == n
    with pytest.raises(InputError, match=rf"conversation 0 is {n} tokens long \(64 of them in 1 visual spans\), above max_length={n - 1}"):
        proc(msgs, max_length=n - 1)


def test_from_pretrained_checks_config_agreement(tmp_path):
    src = reference_path("tiny_model")
    for name in ("tokenizer.json", "config.json"):
        (tmp_path / name).symlink_to(src / name)
    pre = json.loads((src / "preprocessor_config.json").read_text())
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**pre, "image_feature_size": 32}))
    with pytest.raises(ValueError, match="query_num vs image_feature_size"):
        Processor.from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    assert Processor.from_pretrained(tmp_path).cfg.image_feature_size == 32  # config.json is optional
    shutil.rmtree(tmp_path)
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        Processor.from_pretrained(tmp_path)


def test_sample_video_delegates(proc):
    assert proc.sample_video(300, 30.0) == video.sample_video(300, 30.0, choose_fps=5)
    assert proc.sample_video(1800, 30.0, choose_fps=5, force_packing=2).packing == 2


def test_expand_image_tags_positions():
    tag = "(<image>./</image>)"
    text = f"A\n{tag} x \n{tag}\n{tag}\nB"
    out = expand_image_tags(text, ["P", None, "Q"])  # the chunk before the skipped tag is stripped
    assert out.text == "A\nPx\nQ\nB"
    assert out.placeholders == [(2, 3), (5, 6)]
    assert len(out.position) == len(text) + 1 and out.position[-1] == len(out.text)
    assert all(a <= b for a, b in zip(out.position, out.position[1:]))
    assert [out.text[out.position[text.index(c)]] for c in "AxB"] == ["A", "x", "B"]
    assert out.position[text.index(tag)] == 2  # a tag maps to the start of its placeholder
    with pytest.raises(ValueError, match="1 image tags but 2 placeholders"):
        expand_image_tags(tag, ["P", "Q"])


# ---- bad input ---------------------------------------------------------------------------------
def img() -> Image.Image:
    return solid([64, 64])


BAD = [
    ([], {}, "non-empty list"),
    ({"role": "user", "content": "x"}, {}, "non-empty list"),
    ([{"role": "assistant", "content": "x"}], {}, "message 0 is from 'assistant'.*start with a user"),
    ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "x"}], {}, "message 1 is from 'assistant'"),
    ([{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}], {}, "message 1 has role 'bot'"),
    ([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}], {}, "message 1: a system message may only come first"),
    ([{"role": "system", "content": "s"}, {"role": "user", "content": "x"}], {"system_prompt": "t"}, "not together with system_prompt"),
    ([{"role": "user", "content": ""}], {}, "message 0 \\(user\\) has empty content"),
    ([{"role": "user", "content": []}], {}, "message 0 content must be a string or a non-empty list"),
    ([{"role": "user", "content": [42]}], {}, "message 0 part 0: a content part of type int"),
    ([{"role": "user", "content": [{"type": "audio"}]}], {}, "message 0 part 0: dict part"),
    ([{"role": "user", "content": [{"type": "video", "fps": 5}]}], {}, "part 0: a video part needs 'path'"),
    ([{"role": "user", "content": ["see (<image>./</image>)"]}], {}, "part 0: the text contains '<image>'"),
    ([{"role": "user", "content": ["</slice> trick"]}], {}, "the text contains '</slice>'"),
    ([{"role": "user", "content": "x"}], {"system_prompt": "<image>"}, "system_prompt: the text contains"),
    ([{"role": "user", "content": [img(), img(), "x"]}], {"temporal_ids": [[0, 1, 2]]}, "cover 3 frames in 1 groups, but there are 2"),
    ([{"role": "user", "content": [img(), "x"]}], {"temporal_ids": [[0], []]}, "non-empty lists of ints"),
    ([{"role": "user", "content": [Video(frames=[img()], temporal_ids=[[0]]), "x"]}], {"temporal_ids": [[0]]}, "cannot be combined with Video"),
    ([{"role": "user", "content": [Video(frames=[img(), img()], temporal_ids=[[0]]), "x"]}], {}, "message 0 part 0: temporal_ids"),
    ([{"role": "user", "content": [img(), "x"]}], {"max_slice_nums": 0}, "max_slice_nums must be an int >= 1"),
    ([{"role": "user", "content": [{"type": "image", "image": b"not an image"}, "x"]}], {}, "message 0 part 0"),
    ([[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]], {"temporal_ids": [None]}, "one entry"),
    ([[{"role": "user", "content": "a"}], [{"role": "robot", "content": "b"}]], {}, "conversation 1 message 0 has role"),
]


@pytest.mark.parametrize("msgs, kwargs, match", BAD)
def test_bad_input_names_the_item(proc, msgs, kwargs, match):
    with pytest.raises(InputError, match=match):
        proc(msgs, **kwargs)


def test_frames_of_a_group_must_share_a_grid(proc):
    frames = [solid([640, 480]), solid([448, 448])]
    with pytest.raises(InputError, match="group 0: frame 1 is cut into grid None but frame 0 into"):
        proc([{"role": "user", "content": [Video(frames=frames, temporal_ids=[[0, 1]]), "x"]}], max_slice_nums=9)


def test_threads_and_repeated_frames_give_the_serial_result(proc):
    rng = np.random.default_rng(0)
    a, b, c = (Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) for _ in range(3))
    msgs = [{"role": "user", "content": [Video(frames=[a, a, b], temporal_ids=[[0, 1], [2]]), c, "x"]}]
    serial = Processor(proc.tokenizer, proc.cfg, num_threads=1)
    threaded = Processor(proc.tokenizer, proc.cfg, num_threads=4)
    one, many = serial(msgs), threaded(msgs)
    assert torch.equal(one.input_ids, many.input_ids) and one.temporal_ids == many.temporal_ids
    assert len(one.pixel_values[0]) == len(many.pixel_values[0]) == 3 + len(proc.process_image(c).pixel_values)
    assert all(torch.equal(x, y) for x, y in zip(one.pixel_values[0], many.pixel_values[0]))
    assert torch.equal(many.pixel_values[0][0], many.pixel_values[0][1])  # the repeated frame
