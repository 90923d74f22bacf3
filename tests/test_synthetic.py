"""The synthetic task suite: seeded and reproducible, answers that agree with the pixels, files the
training data loader reads, and the demo configuration / tokenizer built for it."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from minicpmv.data.datasets import SFTDataset
from minicpmv.data.documents.corruption import LEVELS, CorruptionConfig, padded_box
from minicpmv.data.documents.samples import box_to_1000
from minicpmv.data.synthetic import FAMILIES, corpus, make, sample_seed, with_mode, write_split
from minicpmv.data.synthetic.draw import COLORS, _font, font_files
from minicpmv.data.synthetic.evaluate import normalize
from minicpmv.data.synthetic.suite import IMAGE_FAMILIES, VIDEO_FAMILIES, regroup
from minicpmv.data.synthetic.tasks import DOC_MAX_WORDS, IMAGE_SIDE, doc_page, flash_pattern, line_xs
from minicpmv.demo import DEMO_DIR, demo_config, demo_processor_config, train_tokenizer
from minicpmv.processor.processor import Processor
from minicpmv.processor.tokenizer import SPECIAL_TOKENS, Tokenizer


def _ink(img: Image.Image) -> np.ndarray:
    """Pixels of the drawn shapes: saturated colours (backgrounds are light and grey-ish)."""
    a = np.asarray(img.convert("RGB")).astype(int)
    return (a.max(-1) - a.min(-1)) > 100


def _media_bytes(sample: dict) -> list[bytes]:
    frames = sample["video"]["frames"] if "video" in sample else [sample["image"]]
    return [f.tobytes() for f in frames]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_same_seed_same_sample_and_splits_differ(family):
    a, b = make(family, "test", 3), make(family, "test", 3)
    assert _media_bytes(a) == _media_bytes(b) and a["conversations"] == b["conversations"]
    others = [make(family, split, 3) for split in ("train", "val")]
    assert all(_media_bytes(o) != _media_bytes(a) for o in others)
    assert a["conversations"][0]["content"].startswith("<video>\n" if "video" in a else "<image>\n")
    assert a["conversations"][1]["content"] == a["answer"] and a["answer"] in a["reasoning"]


def test_seeds_are_stable_across_processes():
    # SHA-256, not hash(): a value fixed forever, so the published held-out split never moves.
    assert sample_seed(0, "test", "ocr", 0) == sample_seed(0, "test", "ocr", 0)
    assert len({sample_seed(s, sp, "ocr", i) for s in (0, 1) for sp in ("train", "test") for i in range(50)}) == 200
    with pytest.raises(ValueError, match="split"):
        sample_seed(0, "dev", "ocr", 0)


def test_count_answer_matches_the_connected_shapes():
    for i in range(20):
        s = make("count", "train", i)
        _, n = ndimage.label(_ink(s["image"]))
        assert n == int(s["answer"]), (i, s["caption"])


def test_captions_and_traces_name_the_shapes_in_reading_order():
    # the order a description names the shapes in must follow from the image (row by row, left to right)
    step = IMAGE_SIDE // 3
    for family, i in [(f, i) for f in ("count", "color") for i in range(12)]:
        s = make(family, "train", i)
        rgb = np.asarray(s["image"].convert("RGB")).astype(int)
        labels, n = ndimage.label(_ink(s["image"]))
        found = []
        for k in range(1, n + 1):
            ys, xs = np.nonzero(labels == k)
            mean = rgb[ys, xs].mean(0)
            colour = min(COLORS, key=lambda c: np.abs(np.array(COLORS[c]) - mean).sum())
            found.append((int(ys.min()) // step, int(xs.min()) // step, colour))
        named = [item.split()[0] for item in s["caption"].split(": ")[-1].split(", ")]
        assert [c for _, _, c in sorted(found)] == named, (family, i, s["caption"])
        assert s["reasoning"].startswith(f"I see a {named[0]} "), s["reasoning"]


def test_video_direction_matches_the_motion():
    steps = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    for i in range(12):
        s = make("vid_dir", "train", i)
        centres = [np.argwhere(_ink(f)).mean(0)[::-1] for f in s["video"]["frames"]]  # (x, y) per frame
        move = np.sign(np.round(centres[-1] - centres[0]))
        assert tuple(move) == steps[s["answer"]], (i, s["answer"], centres[0], centres[-1])
        assert s["video"]["temporal_ids"] == [[0, 2, 4], [6, 8, 10]]


def test_video_flash_count_and_first_appearance_match_the_frames():
    for i in range(12):
        s = make("vid_count", "train", i)
        on = [bool(_ink(f).any()) for f in s["video"]["frames"]]
        runs = sum(v and (k == 0 or not on[k - 1]) for k, v in enumerate(on))
        assert runs == int(s["answer"])
        first = make("vid_first", "train", i)
        frames = [np.asarray(f).astype(int) for f in first["video"]["frames"]]
        appear = next(t for t in range(len(frames)) if _ink(first["video"]["frames"][t]).any())
        color = frames[appear][_ink(first["video"]["frames"][appear])].mean(0)
        nearest = min(COLORS, key=lambda c: np.abs(np.array(COLORS[c]) - color).sum())
        assert first["answer"].startswith(nearest)


def test_flash_pattern_has_exactly_k_runs():
    rng = random.Random(0)
    for k in (1, 2, 3):
        on = flash_pattern(rng, 6, k)
        assert sum(v and (i == 0 or not on[i - 1]) for i, v in enumerate(on)) == k


def test_ocr_and_arith_answers():
    for i in range(20):
        ocr = make("ocr", "test", i)
        assert 1 <= len(ocr["answer"]) <= 6 and (ocr["answer"].isdigit() or ocr["answer"].isalpha())
        arith = make("arith", "test", i)
        a, b = (int(x) for x in arith["caption"].split(" and "))
        assert int(arith["answer"]) == a + b and f"{a} + {b} = {a + b}" in arith["reasoning"]


def test_long_mode_wraps_the_trace_and_regroup_keeps_frames():
    s = make("arith", "test", 0)
    long = with_mode(s, "long")["conversations"][1]["content"]
    assert long == f"<think>\n{s['reasoning']}\n</think>\n\n{s['answer']}"
    assert with_mode(s, "short")["conversations"][1]["content"] == s["answer"]
    v = make("vid_dir", "test", 0)
    assert regroup(v, 1)["video"]["temporal_ids"] == [[0], [2], [4], [6], [8], [10]]
    assert regroup(v, 6)["video"]["temporal_ids"] == [[0, 2, 4, 6, 8, 10]]
    assert normalize(' "Red." ') == "red"


def test_every_family_is_registered_as_image_or_video():
    assert sorted(IMAGE_FAMILIES + VIDEO_FAMILIES) == sorted(FAMILIES)
    assert all(("video" in make(f, "val", 0)) == (f in VIDEO_FAMILIES) for f in FAMILIES)


def test_line_answer_matches_the_drawn_points():
    kinds = set()
    for i in range(24):
        s = make("line", "train", i)
        labels = "ABCDE"[: s["caption"].count(",") + 1]
        ink = _ink(s["image"])
        # the top of the ink around each point's x: its dot (the values differ by >= 16 px per step)
        tops = {l: np.argwhere(ink[:, x - 1:x + 2])[:, 0].min() for l, x in zip(labels, line_xs(len(labels)))}
        q = s["question"]
        if "highest" in q or "lowest" in q:
            kinds.add("highest" if "highest" in q else "lowest")
            pick = min if "highest" in q else max  # image rows grow downwards
            assert pick(tops, key=tops.get) == s["answer"], (i, q, tops)
        else:
            kinds.add("up/down")
            a, b = q.removeprefix("Does the line go up or down from ").rstrip("?").split(" to ")
            assert ("up" if tops[b] < tops[a] else "down") == s["answer"], (i, q, tops)
        values = {item.split()[0]: int(item.split()[1]) for item in s["caption"].removeprefix("line chart: ").split(", ")}
        assert sorted(tops, key=tops.get) == sorted(values, key=values.get, reverse=True)  # the caption's values
    assert kinds == {"highest", "lowest", "up/down"}


def _centre_x(frame: Image.Image, color: tuple[int, int, int]) -> float:
    return np.argwhere((np.asarray(frame) == color).all(-1))[:, 1].mean()


def test_vid_speed_answer_is_the_shape_that_moves_further():
    for i in range(12):
        s = make("vid_speed", "train", i)
        names = s["question"].removeprefix("Which moves faster, the ").rstrip("?").split(" or the ")
        frames = s["video"]["frames"]
        moved = {n: _centre_x(frames[-1], COLORS[n.split()[0]]) - _centre_x(frames[0], COLORS[n.split()[0]])
                 for n in names}
        fast, slow = sorted(names, key=moved.get, reverse=True)
        assert s["answer"] == fast and moved[slow] > 0 and moved[fast] >= 2 * moved[slow], (i, moved)


def _glyph(mask: np.ndarray) -> np.ndarray:
    """Ink mask cropped to its bounding box and resized to 24 x 32: compares glyphs of any size and place."""
    ys, xs = np.nonzero(mask)
    crop = Image.fromarray(mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.uint8) * 255)
    return np.asarray(crop.resize((24, 32), Image.BILINEAR)) > 127


def test_vid_at_answer_is_the_digit_drawn_in_the_frame_at_that_time():
    templates = []  # every digit in every font the suite draws with
    for path in font_files() or ("",):
        for digit in range(10):
            img = Image.new("L", (128, 128), 255)
            ImageDraw.Draw(img).text((64, 64), str(digit), font=_font(path, 64), fill=0, anchor="mm")
            templates.append((digit, _glyph(np.asarray(img) < 128)))
    for i in range(8):
        s = make("vid_at", "test", i)
        seconds = float(s["question"].removeprefix("What digit is shown at ").removesuffix(" s?"))
        ids = [t for group in s["video"]["temporal_ids"] for t in group]  # 0.1 s units
        frame = s["video"]["frames"][ids.index(round(seconds * 10))]
        glyph = _glyph(np.asarray(frame.convert("RGB")).max(-1) < 130)  # the digit is dark, backgrounds light
        read = max(templates, key=lambda t: (t[1] == glyph).mean())[0]
        assert str(read) == s["answer"], (i, seconds, read, s["caption"])
        digits = s["caption"].removeprefix("the digits ").removesuffix(", one per frame").split(", ")
        assert len(set(digits)) == len(digits) == len(ids)  # distinct: the time alone decides the answer


def test_doc_corrupts_only_the_target_box_and_asks_for_its_text():
    levels = set()
    for i in range(16):
        s = make("doc", "train", i)
        clean = doc_page(random.Random(sample_seed(0, "train", "doc", i)))  # make_doc draws its page first
        changed = (np.asarray(s["image"]) != np.asarray(clean.image)).any(-1)  # [192, 192]
        x1, y1, x2, y2 = padded_box(tuple(s["box"]), CorruptionConfig().pad, IMAGE_SIDE, IMAGE_SIDE)
        inside = np.zeros_like(changed)
        inside[y1:y2, x1:x2] = True
        assert changed.any() and not (changed & ~inside).any(), (i, s["level"])
        target = next(r for r in clean.of_kind("line") if list(r.box) == s["box"])
        assert s["answer"] == target.text and 1 <= len(target.text.split()) <= DOC_MAX_WORDS
        assert "<box>{} {} {} {}</box>".format(*box_to_1000(target.box, IMAGE_SIDE, IMAGE_SIDE)) in s["question"]
        if s["level"] == "high":  # masked: the box is the paper colour plus faint noise, no glyph left
            assert np.asarray(s["image"])[y1:y2, x1:x2].std((0, 1)).max() < 6
        levels.add(s["level"])
    assert levels == set(LEVELS)


def test_shipped_tokenizer_round_trips_every_family():
    # New words are learnt at the next tokenizer training (corpus covers every family); until then the
    # shipped byte-level tokenizer must still encode them losslessly.
    tok = Tokenizer.from_pretrained(DEMO_DIR)
    for family in FAMILIES:
        s = make(family, "test", 0)
        for text in (s["question"], with_mode(s, "long")["conversations"][1]["content"], s["caption"]):
            assert tok.decode(tok.encode(text), skip_special_tokens=False) == text, (family, text)


@pytest.fixture(scope="module")
def processor() -> Processor:
    tok = Tokenizer(train_tokenizer(corpus(10), vocab_size=600))
    return Processor(tok, demo_processor_config(), num_threads=1)


def test_tokenizer_has_every_special_token_and_single_digits(processor):
    tok = processor.tokenizer
    for attr, text in SPECIAL_TOKENS.items():
        assert tok.id_to_token(getattr(tok, attr)) == text
    ids = tok.encode("The sum is 12.")
    assert [tok.decode([i]) for i in ids][-3:] == ["1", "2", "."]
    assert tok.decode(tok.encode("<think>\nx\n</think>\n\n7")) == "<think>\nx\n</think>\n\n7"
    config = demo_config(tok.vocab_size, tok.pad_id, tok.im_end_id)
    assert config.query_num == processor.cfg.image_feature_size and config.patch_size == processor.cfg.patch_size


def test_written_split_loads_in_the_training_dataset(tmp_path, processor):
    path = write_split(tmp_path, list(FAMILIES), "val", 2, form="mixed", long_share=0.5)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["family"] for r in records[:len(FAMILIES)]] == list(FAMILIES)
    ds = SFTDataset([path], processor, max_length=512, strict=True)
    spans = {records[i]["family"]: len(ds.encode(i).image_bounds) for i in range(len(records))}
    assert spans["count"] == 1 and spans["vid_dir"] == 2  # one 192-px image; 6 frames packed 3 per span
    assert {r.get("mode") for r in records} == {"short", "long"}
    assert all(r["level"] in LEVELS for r in records if r["family"] == "doc")
    cap = write_split(tmp_path, ["ocr"], "val", 1, form="caption", packing=1)
    assert json.loads(cap.read_text())["conversations"][1]["content"] == make("ocr", "val", 0)["caption"]


def test_large_images_still_slice(processor):
    big = processor.process_image(Image.new("RGB", (448, 448)))
    # overview + 2 x 2 slices of 8 x 8 patches: 320 patches, not the 1024 of one 448-px slice at 14 px
    assert big.grid == (2, 2) and big.tgt_sizes.tolist() == [[8, 8]] * 5


def test_evaluate_scores_doc_pages_per_corruption_level_too():
    import minicpmv
    from minicpmv.data.synthetic.evaluate import evaluate, markdown_table

    model, processor = minicpmv.load(device="cpu")
    scores = evaluate(model, processor, families=["doc"], per_family=4, modes=("short",), latency_samples=0,
                      max_new_tokens=(4, 4))
    by = {s.family: s for s in scores}
    levels = [f for f in by if f.startswith("doc/")]
    assert by["doc"].n == 4 and sum(by[f].n for f in levels) == 4
    assert set(levels) <= {"doc/low", "doc/moderate", "doc/high"} and levels
    assert by["doc"].accuracy * 4 == sum(by[f].accuracy * by[f].n for f in levels)
    table = markdown_table(scores)
    assert "| doc/" in table and "nan" not in table  # level rows have no latency of their own: "-"


def test_eval_cli_scores_the_training_split_too(capsys):
    from minicpmv import cli

    args = ["eval", "synthetic", "--families", "color", "--per-family", "2", "--modes", "short", "--split"]
    assert cli.main(args + ["train"]) == 0
    assert "| color | 2 |" in capsys.readouterr().out
