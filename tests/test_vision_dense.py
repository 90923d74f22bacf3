"""minicpmv/data/synthetic/dense.py, minicpmv/train/dense.py and recipes/vision_dense.py: a label per patch."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from minicpmv.data.synthetic.dense import CLASSES, dense_sample, patch_labels
from minicpmv.data.synthetic.draw import text_image, text_with_boxes
from minicpmv.data.synthetic.suite import make
from minicpmv.demo import DEMO_DIR
from minicpmv.errors import InputError
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import Processor
from minicpmv.train.cli import VisionDenseArgs, load_recipe
from minicpmv.train.dense import IGNORE, dense_batch, dense_scores

recipe = load_recipe("vision_dense")


def test_patch_labels_take_the_main_object_of_each_patch():
    class_map = np.zeros((4, 4), dtype=int)
    class_map[:, :2] = 3
    assert patch_labels(class_map, (1, 2), samples=2).tolist() == [3, 0]
    class_map[2:, :2] = 5  # 3 and 5 tie in the left patch: the lower class wins
    assert patch_labels(class_map, (1, 2), samples=2).tolist() == [3, 0]
    class_map[:] = 0
    class_map[0, 0] = 7  # 1 of 4 points of the patch: at min_share 0.25 it counts, at 0.5 not
    assert patch_labels(class_map, (2, 2), samples=2, min_share=0.25).tolist() == [7, 0, 0, 0]
    assert patch_labels(class_map, (2, 2), samples=2, min_share=0.5).tolist() == [0, 0, 0, 0]


def test_the_label_maps_cost_no_randomness_and_cover_the_drawn_objects():
    a, b = random.Random(3), random.Random(3)
    image, boxes = text_with_boxes(a, "K7Q", (192, 128))
    assert image.tobytes() == text_image(b, "K7Q", (192, 128)).tobytes() and a.random() == b.random()
    ink = np.asarray(image.convert("L")) < 100  # the text is dark (0-90) on a light background (>= 170)
    assert set(np.unique(np.asarray(boxes))) == {0, 1, 2, 3}
    assert (np.asarray(boxes)[ink] > 0).mean() > 0.9  # the character boxes hold the ink
    # the shape and text families draw exactly what they drew before the maps existed (tests/test_synthetic.py pins
    # the samples); here: the classes of a shapes sample are its caption's objects
    for seed in range(6):
        image, class_map = dense_sample(random.Random(seed), text_share=0.0)
        names = {CLASSES[c] for c in np.unique(class_map)} - {"background"}
        assert names and all(n.split()[0] in ("red", "green", "blue", "yellow", "purple", "orange") for n in names)
    image, class_map = dense_sample(random.Random(1), text_share=1.0)
    assert image.size == (192, 128) and {CLASSES[c] for c in np.unique(class_map)} - {"background"} <= set(
        "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ")
    assert make("count", "train", 0)["image"].size == (192, 192)


def test_a_batch_has_one_label_per_patch_and_padding_is_ignored():
    processor = Processor.from_pretrained(DEMO_DIR)
    slices, sizes, labels = dense_batch(processor, random.Random(0), 6, text_share=0.5)
    lengths = (sizes[:, 0] * sizes[:, 1]).tolist()
    assert len(slices) == 6 and labels.shape == (6, max(lengths))
    for row, n in enumerate(lengths):
        assert (labels[row, n:] == IGNORE).all() and (labels[row, :n] >= 0).all()
    assert (labels > 0).any()


def test_scores_per_kind_of_patch():
    first_char = CLASSES.index("0")
    labels = torch.tensor([[0, 1, first_char, IGNORE]])
    logits = torch.nn.functional.one_hot(torch.tensor([[0, 1, 0, 5]]), len(CLASSES)).float()
    assert dense_scores(logits, labels) == {"background_acc": 1.0, "shape_acc": 1.0, "char_acc": 0.0}


def test_tiny_run_scores_and_exports_a_model_with_only_the_vision_tower_changed(tmp_path):
    args = VisionDenseArgs(model=str(DEMO_DIR), steps=6, batch_size=4, eval_n=4, eval_every=3, lr=3e-3,
                           out_dir=str(tmp_path / "run"))
    result = recipe.main(args)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7)) and "char_acc" in rows[2] and "shape_acc" in rows[5]
    assert result["shape_acc"] == rows[-1]["shape_acc"] and result["steps"] == 6
    before = MiniCPMV.from_pretrained(DEMO_DIR, dtype=torch.float32).state_dict()
    after = MiniCPMV.from_pretrained(tmp_path / "run" / "model", dtype=torch.float32).state_dict()
    assert {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])} == {"vpm"}
    assert (tmp_path / "run" / "model" / "tokenizer.json").is_file()


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    from minicpmv import cli

    argv = ["train", "vision-dense", "--model", str(DEMO_DIR), "--steps", "1", "--text-share", "1.5",
            "--out-dir", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--text-share 1.5" in err and "Traceback" not in err
    with pytest.raises(InputError, match="--precision .fp8.: use bf16 or fp32"):
        recipe.main(VisionDenseArgs(model=str(DEMO_DIR), precision="fp8", out_dir=str(tmp_path / "r")))
    argv = ["train", "vision-dense", "--model", str(tmp_path), "--steps", "1", "--out-dir", str(tmp_path / "run")]
    assert cli.main(argv) == 2  # a folder without config.json (e.g. <stage>/ instead of <stage>/model)
    err = capsys.readouterr().err
    assert "no config.json there" in err and "Traceback" not in err
