"""The synthetic task suite: seeded and reproducible, answers that agree with the pixels, files the
training data loader reads, and the demo configuration / tokenizer built for it."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from minicpmv.data.datasets import SFTDataset
from minicpmv.data.synthetic import FAMILIES, corpus, make, sample_seed, with_mode, write_split
from minicpmv.data.synthetic.evaluate import normalize
from minicpmv.data.synthetic.suite import regroup
from minicpmv.data.synthetic.tasks import flash_pattern
from minicpmv.demo import demo_config, demo_processor_config, train_tokenizer
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
        from minicpmv.data.synthetic.draw import COLORS

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
    cap = write_split(tmp_path, ["ocr"], "val", 1, form="caption", packing=1)
    assert json.loads(cap.read_text())["conversations"][1]["content"] == make("ocr", "val", 0)["caption"]


def test_large_images_still_slice(processor):
    big = processor.process_image(Image.new("RGB", (448, 448)))
    # overview + 2 x 2 slices of 8 x 8 patches: 320 patches, not the 1024 of one 448-px slice at 14 px
    assert big.grid == (2, 2) and big.tgt_sizes.tolist() == [[8, 8]] * 5
