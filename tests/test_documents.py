"""Document corruption, samples, evaluation and the contact sheet.

Corruption: every level changes pixels only inside its padded region boxes; low keeps the text
legible (normalised cross-correlation with the clean crop above a threshold, every draw); moderate
is in between; high leaves no glyph edge; the same seed gives byte-identical pixels. Samples: the
prompt's 0-1000 boxes, the numbered answer and the metadata agree, and the record loads through the
training data reader. Evaluation: edit distance, CER, numbered-answer parsing and per-level scores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicpmv.data.documents.corruption import (
    LEVELS, CorruptionConfig, LevelConfig, Target, border_background, corrupt_regions, padded_box,
)
from minicpmv.data.documents.evaluate import cer, edit_distance, report, score, split_numbered
from minicpmv.data.documents.preview import LEVEL_COLOURS, contact_sheet
from minicpmv.data.documents.samples import (
    SampleConfig, box_to_1000, make_sample, numbered_answer, region_prompt, region_sample,
)
from minicpmv.data.documents.sources import Page, Region, Skip
from minicpmv.data.documents.synthetic import SyntheticConfig, synthetic_page
from minicpmv.errors import InputError

SMALL = SyntheticConfig(width=600, height=800, margin=40, body_px=(14, 18))
LOW_NCC = 0.5  # low corruption: every corrupted crop correlates with the clean one at least this much
EDGE = 60  # high corruption: no neighbouring-pixel step larger than this (clean text has steps > 150)


@pytest.fixture(scope="module")
def page() -> Page:
    return synthetic_page(3, SMALL)


def _lines(page: Page, n: int) -> list[Region]:
    """n lines spread over the page (at least 80 px wide, so each holds several glyphs)."""
    lines = [r for r in page.of_kind("line") if r.box[2] - r.box[0] >= 80]
    return [lines[i * len(lines) // n] for i in range(n)]


def _grey(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two equally sized crops in grey (0 when either is flat)."""
    x, y = _grey(a), _grey(b)
    x, y = x - x.mean(), y - y.mean()
    d = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / d) if d > 0 else 0.0


def _crop(image: np.ndarray, region: Region, pad: int = 3) -> np.ndarray:
    x1, y1, x2, y2 = padded_box(region.box, pad, image.shape[1], image.shape[0])
    return image[y1:y2, x1:x2]


# ---- corruption ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", LEVELS)
def test_level_changes_only_pixels_inside_its_regions(page, level):
    clean = np.asarray(page.image)
    regions = _lines(page, 4)
    out, applied = corrupt_regions(clean, [Target(r.box, level, r.line_height) for r in regions], seed=7)
    inside = np.zeros(clean.shape[:2], dtype=bool)
    for r in regions:
        x1, y1, x2, y2 = padded_box(r.box, CorruptionConfig().pad, clean.shape[1], clean.shape[0])
        inside[y1:y2, x1:x2] = True
        assert not np.array_equal(out[y1:y2, x1:x2], clean[y1:y2, x1:x2]), (level, r)
    assert np.array_equal(out[~inside], clean[~inside])  # outside: byte-identical
    assert len(applied) == 4 and all(CorruptionConfig().level(level).n_ops[0] <= len(a) for a in applied)


def test_low_stays_legible_moderate_in_between_high_unreadable(page):
    clean = np.asarray(page.image)
    regions = _lines(page, 8)
    scores = {level: [] for level in LEVELS}
    for seed in range(6):
        for level in LEVELS:
            out, _ = corrupt_regions(clean, [Target(r.box, level, r.line_height) for r in regions], seed)
            scores[level] += [ncc(_crop(out, r), _crop(clean, r)) for r in regions]
    assert min(scores["low"]) > LOW_NCC, sorted(scores["low"])[:5]
    assert max(np.abs(scores["high"])) < 0.1
    assert np.median(scores["high"]) < np.median(scores["moderate"]) < np.median(scores["low"])


def test_high_leaves_no_glyph_edges(page):
    clean = np.asarray(page.image)
    for r in _lines(page, 6):
        out, _ = corrupt_regions(clean, [Target(r.box, "high", r.line_height)], seed=r.order)
        for image, expect_edges in ((clean, True), (out, False)):
            g = _grey(_crop(image, r))
            step = max(np.abs(np.diff(g, axis=0)).max(), np.abs(np.diff(g, axis=1)).max())
            assert (step > 150) if expect_edges else (step < EDGE), (r, step)


def test_same_seed_same_bytes_other_seed_other_bytes(page):
    clean = np.asarray(page.image)
    targets = [Target(r.box, level, r.line_height) for r, level in zip(_lines(page, 3), LEVELS)]
    a, ops_a = corrupt_regions(clean, targets, seed=[1, 2])
    b, ops_b = corrupt_regions(clean, targets, seed=[1, 2])
    c, _ = corrupt_regions(clean, targets, seed=[1, 3])
    assert a.tobytes() == b.tobytes() and ops_a == ops_b and a.tobytes() != c.tobytes()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(-5, 60), st.integers(-5, 40), st.integers(1, 40), st.integers(1, 30),
                          st.sampled_from(LEVELS)), min_size=1, max_size=4), st.integers(0, 2**32 - 1))
def test_any_boxes_touch_only_their_padded_area(boxes, seed):
    """Boxes anywhere (overlapping, at or past the border): only pixels in some padded box change."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    targets = [Target((x, y, min(60, x + w), min(40, y + h)), lvl, h) for x, y, w, h, lvl in boxes
               if min(60, x + w) > max(0, x) and min(40, y + h) > max(0, y)]
    out, _ = corrupt_regions(image, targets, seed)
    inside = np.zeros((40, 60), dtype=bool)
    for t in targets:
        x1, y1, x2, y2 = padded_box(t.box, 3, 60, 40)
        inside[y1:y2, x1:x2] = True
    assert np.array_equal(out[~inside], image[~inside])


def test_padded_box_and_background_examples():
    assert padded_box((5, 5, 20, 9), 3, 18, 100) == (2, 2, 18, 12)
    crop = np.full((10, 30, 3), 255, dtype=np.uint8)
    crop[3:7, 5:25] = 0  # text not touching the edge
    assert border_background(crop).tolist() == [255, 255, 255]


def test_corruption_config_overrides_and_validation():
    config = CorruptionConfig.from_dict({"moderate": {"ops": {"blur": [2, 3], "noise": [50, 60]}, "n_ops": [1, 1]},
                                         "pad": 4})
    assert config.moderate == LevelConfig(ops={"blur": (2, 3), "noise": (50, 60)}, n_ops=(1, 1)) and config.pad == 4
    assert config.low == CorruptionConfig().low
    assert CorruptionConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InputError, match="unknown corruption operators"):
        LevelConfig(ops={"smudge": (0, 1)}, n_ops=(1, 1))
    with pytest.raises(InputError, match="min <= max"):
        LevelConfig(ops={"blur": (3, 1)}, n_ops=(1, 1))
    with pytest.raises(InputError, match="n_ops"):
        LevelConfig(ops={"blur": (1, 2)}, n_ops=(1, 2))
    with pytest.raises(InputError, match="unknown keys"):
        CorruptionConfig.from_dict({"extreme": {}})
    with pytest.raises(InputError, match="unknown corruption level"):
        corrupt_regions(np.zeros((9, 9, 3), np.uint8), [Target((1, 1, 5, 5), "medium", 4)], 0)


# ---- samples ------------------------------------------------------------------------------------------
def test_prompt_helpers_examples():
    assert box_to_1000((124, 175, 620, 350), 1240, 1754) == (100, 100, 500, 200)
    assert box_to_1000((0, 0, 2000, 10), 1000, 10) == (0, 0, 1000, 1000)  # clipped
    assert region_prompt([(100, 100, 500, 200)]) == ("Recover the original text in the following regions, in order:\n"
                                                     "1. <box>100 100 500 200</box>")
    assert numbered_answer(["First line.", "Second."]) == "1. First line.\n2. Second."


def test_region_sample_agrees_with_its_metadata(page):
    config = SampleConfig()
    for seed in range(8):
        sample = make_sample(page, seed, config)
        if sample.task == "page":
            continue
        meta = sample.targets
        assert 1 <= len(meta) <= 6 and {m["level"] for m in meta} <= set(LEVELS)
        assert [m["order"] for m in meta] == sorted(m["order"] for m in meta)  # reading order
        assert len({m["kind"] for m in meta}) == 1 and all(len(m["text"]) >= config.min_chars for m in meta)
        assert sample.prompt == region_prompt([tuple(m["box_1000"]) for m in meta])
        assert sample.answer == numbered_answer([m["text"] for m in meta])
        for m in meta:
            assert tuple(m["box_1000"]) == box_to_1000(tuple(m["box"]), *page.image.size)
        clean = np.asarray(page.image)
        inside = np.zeros(clean.shape[:2], dtype=bool)
        for m in meta:
            x1, y1, x2, y2 = padded_box(tuple(m["box"]), 3, clean.shape[1], clean.shape[0])
            inside[y1:y2, x1:x2] = True
        assert np.array_equal(sample.image[~inside], clean[~inside])
    a, b = make_sample(page, [4, 2], config), make_sample(page, [4, 2], config)
    assert a.image.tobytes() == b.image.tobytes() and a.answer == b.answer and a.targets == b.targets


def test_whole_page_sample_is_the_clean_page_in_reading_order(page):
    sample = make_sample(page, 0, SampleConfig(page_prob=1.0))
    assert sample.task == "page" and sample.targets == [] and np.array_equal(sample.image, np.asarray(page.image))
    assert sample.answer.split("\n") == [r.text for r in page.of_kind("block")]


def test_region_sample_fixed_levels_and_few_regions(page):
    line = _lines(page, 1)[0]
    images = [region_sample(page, [line], [level], 5).image for level in LEVELS]
    assert len({img.tobytes() for img in images}) == 3
    with pytest.raises(InputError, match="one level per region"):
        region_sample(page, [line], ["low", "high"], 5)
    bare = Page(page.image, [Region((1, 1, 9, 9), "short", "line", 0, 0, 1)], "x", 0, 150.0)
    with pytest.raises(Skip) as e:
        make_sample(bare, 0)
    assert e.value.reason == "few_regions"
    with pytest.raises(InputError, match="level_probs"):
        SampleConfig(level_probs=(0.5, 0.5, 0.5))


def test_record_loads_through_the_training_reader(page, tmp_path):
    from minicpmv.data.datasets import record_to_messages
    from minicpmv.data.documents.engine import save_sample

    (tmp_path / "images").mkdir()
    sample = make_sample(page, 1, SampleConfig(page_prob=0.0))
    record = json.loads(json.dumps(save_sample(sample, "s1", page, tmp_path / "images")))
    assert record["image"] == "images/s1.png"
    messages = record_to_messages(record, tmp_path, "s1")
    image, prompt = messages[0]["content"]
    assert np.array_equal(np.asarray(image), sample.image) and prompt == sample.prompt
    assert messages[1] == {"role": "assistant", "content": sample.answer}
    assert record["document"]["targets"] == sample.targets and record["document"]["size"] == list(page.image.size)


def test_box_tags_are_single_tokens_of_the_real_tokenizer(page):
    from conftest import reference_path
    from minicpmv.processor.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(reference_path("tokenizer"))
    ids = tok.encode(make_sample(page, 2, SampleConfig(page_prob=0.0)).prompt)
    box, end = tok.encode("<box>"), tok.encode("</box>")
    assert len(box) == len(end) == 1 and ids.count(box[0]) == ids.count(end[0]) >= 1


# ---- evaluation ---------------------------------------------------------------------------------------
def test_edit_distance_and_cer_examples():
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("", "abc") == 3 and edit_distance("abc", "abc") == 0
    assert cer("hello wrld", "hello world") == pytest.approx(1 / 11)
    assert cer("  hello   world ", "hello world") == 0.0


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="abc", max_size=8), st.text(alphabet="abc", max_size=8), st.text(alphabet="abc", max_size=8))
def test_edit_distance_is_a_metric(a, b, c):
    assert edit_distance(a, b) == edit_distance(b, a) <= max(len(a), len(b))
    assert edit_distance(a, c) <= edit_distance(a, b) + edit_distance(b, c)
    assert (edit_distance(a, b) == 0) == (a == b) and edit_distance(a, b) >= abs(len(a) - len(b))


def test_split_numbered_examples():
    assert split_numbered("1. foo\n2) bar\nbaz", 3) == ["foo", "bar baz", ""]
    assert split_numbered("2. second\n1. first\n1. again", 2) == ["first 1. again", "second"]  # a repeat counts against
    assert split_numbered("no numbers at all", 1) == [""]


def _record(levels_texts: list[tuple[str, str]], task: str = "regions") -> dict:
    return {"id": "r", "conversations": [{"role": "user", "content": "q"},
                                         {"role": "assistant", "content": numbered_answer([t for _, t in levels_texts])}],
            "document": {"task": task, "targets": [{"level": lv, "text": t} for lv, t in levels_texts]}}


def test_score_per_level():
    records = [_record([("low", "alpha beta"), ("high", "gamma")]), _record([("moderate", "delta")]),
               _record([], task="page")]
    records[2]["conversations"][1]["content"] = "whole page text"
    answers = ["1. alpha beta\n2. gamma ray", "1. delto", "whole page text"]
    scores = score(records, answers)
    assert (scores["low"].items, scores["low"].exact, scores["low"].cer) == (1, 1, 0.0)
    assert scores["high"].exact == 0 and scores["high"].cer == pytest.approx(4 / 5)
    assert scores["moderate"].cer == pytest.approx(1 / 5) and scores["page"].exact_match == 1.0
    table = report(scores)
    assert table.splitlines()[0] == "| level | items | exact match | CER |" and "| high | 1 | 0.000 | 0.800 |" in table
    with pytest.raises(ValueError, match="2 answers"):
        score(records, answers[:2])


# ---- preview ----------------------------------------------------------------------------------------------
def test_contact_sheet_outlines_targets_in_level_colours(page):
    sample = make_sample(page, 11, SampleConfig(page_prob=0.0, k=(3, 3), block_prob=0.0))
    record = sample.record("s", "s.png", page)
    from PIL import Image

    sheet = np.asarray(contact_sheet([(Image.fromarray(sample.image), record)] * 2, title="t"))
    assert sheet.shape[0] > 2 * 600 and sheet.shape[2] == 3
    colours = {tuple(c) for c in sheet.reshape(-1, 3)[::7]}
    assert {LEVEL_COLOURS[t["level"]] for t in sample.targets} <= colours
