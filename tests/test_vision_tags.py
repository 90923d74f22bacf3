"""minicpmv/train/tags.py and recipes/vision_tags.py: caption tags, pooling over slices, one tiny run."""

from __future__ import annotations

import json

import pytest
import torch

from minicpmv.data.synthetic import write_split
from minicpmv.demo import DEMO_DIR
from minicpmv.errors import InputError
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import Processor
from minicpmv.train.cli import VisionTagArgs, load_recipe
from minicpmv.train.tags import caption_phrases, caption_tags, multi_hot, pooled_features, tag_scores, tag_vocabulary

recipe = load_recipe("vision_tags")


def test_tags_are_word_ngrams_inside_phrases_so_binding_differs():
    assert caption_phrases("2 shapes: Red square, blue circle.") == [["2", "shapes"], ["red", "square"],
                                                                     ["blue", "circle"]]
    assert caption_tags([["red", "square", "red"], ["blue"]]) == {("red", "square"), ("square", "red")}
    assert caption_tags([["red", "square", "red"], ["blue"]], (1, 2)) == {("red",), ("square",), ("blue",),
                                                                          ("red", "square"), ("square", "red")}
    red_square_blue_circle = caption_tags(caption_phrases("red square, blue circle"), (1, 2))
    blue_square_red_circle = caption_tags(caption_phrases("blue square, red circle"), (1, 2))
    assert ("red", "square") in red_square_blue_circle and ("red", "square") not in blue_square_red_circle
    assert ("square", "blue") not in red_square_blue_circle  # no bigram across a comma
    unigrams = lambda tags: {t for t in tags if len(t) == 1}
    assert unigrams(red_square_blue_circle) == unigrams(blue_square_red_circle)
    assert red_square_blue_circle != blue_square_red_circle


def test_vocabulary_keeps_the_most_frequent_tags_deterministically():
    sets = [{("red",), ("blue",)}, {("red",)}, {("red",), ("green",)}]
    assert tag_vocabulary(sets, 2, min_count=1) == [("red",), ("blue",)]
    assert tag_vocabulary(sets, 5, min_count=2) == [("red",)]
    targets = multi_hot([{("blue",), ("pink",)}, set()], [("red",), ("blue",)])
    assert targets.tolist() == [[0.0, 1.0], [0.0, 0.0]]


def test_scores_exact_sets_and_micro_f1():
    scores = tag_scores(torch.tensor([[1.0, -1.0], [1.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert scores["exact"] == 0.5 and scores["f1"] == pytest.approx(0.8)


def test_pooling_covers_every_slice_of_an_image_and_ignores_padding():
    from PIL import Image

    model = MiniCPMV.from_pretrained(DEMO_DIR, dtype=torch.float32)
    processor = Processor.from_pretrained(DEMO_DIR)
    small, large = Image.new("RGB", (100, 60), (200, 30, 30)), Image.new("RGB", (448, 448), (30, 30, 200))
    pieces = [processor.process_image(im) for im in (small, large)]
    slices = [s for p in pieces for s in p.pixel_values]
    sizes = torch.cat([torch.as_tensor(p.tgt_sizes).reshape(-1, 2) for p in pieces])
    counts = [len(p.pixel_values) for p in pieces]
    assert counts[0] == 1 and counts[1] > 1  # the large image is sliced; its slices pad the small one's patches
    with torch.no_grad():
        vit, res = pooled_features(model, slices, sizes, counts)
        alone_vit, alone_res = pooled_features(model, pieces[0].pixel_values, sizes[:1], [1])
    assert vit.shape == (2, model.config.vision.hidden_size) and res.shape == (2, model.config.llm.hidden_size)
    torch.testing.assert_close(vit[0], alone_vit[0])
    torch.testing.assert_close(res[0], alone_res[0])
    with pytest.raises(ValueError, match="slices_per_image sums to 1"):
        pooled_features(model, slices, sizes, [1])


def test_tiny_run_learns_tags_and_exports_a_model_with_the_llm_untouched(tmp_path):
    data = write_split(tmp_path / "data", ["color", "vid_dir"], "train", 12, seed=0, form="caption")
    args = VisionTagArgs(model=str(DEMO_DIR), data=[str(data)], steps=8, batch_size=4, eval_n=4, eval_every=4,
                         tags=64, out_dir=str(tmp_path / "run"))
    result = recipe.main(args)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9)) and "resampler_f1" in rows[3] and "vit_exact" in rows[7]
    assert rows[-1]["loss"] < rows[0]["loss"]
    tags = json.loads((tmp_path / "run" / "tags.json").read_text())
    assert result["tags"] == len(tags) > 0 and any("circle" in t for t in tags)
    assert result["resampler_f1"] == rows[-1]["resampler_f1"] and "lr" not in result
    before = MiniCPMV.from_pretrained(DEMO_DIR, dtype=torch.float32).state_dict()
    after = MiniCPMV.from_pretrained(tmp_path / "run" / "model", dtype=torch.float32).state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"vpm", "resampler"}
    assert (tmp_path / "run" / "model" / "tokenizer.json").is_file()


def test_too_few_images_for_the_held_out_set_is_a_clear_error(tmp_path):
    data = write_split(tmp_path / "data", ["vid_dir", "color"], "train", 2, seed=0, form="caption")
    args = VisionTagArgs(model=str(DEMO_DIR), data=[str(data)], steps=1, eval_n=5, out_dir=str(tmp_path / "run"))
    with pytest.raises(InputError, match=r"2 single-image records .* \(2 skipped\), but --eval-n is 5"):
        recipe.main(args)
    args = VisionTagArgs(model=str(DEMO_DIR), data=[str(data)], steps=1, eval_n=1, tag_min_count=3,
                         out_dir=str(tmp_path / "run"))
    with pytest.raises(InputError, match="no caption tag is in 3 or more of the 1 training captions"):
        recipe.main(args)


def test_records_without_one_image_and_conversations_are_skipped_not_a_crash(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [{"image": "a.png", "conversations": [{"role": "user", "content": "<image>"},
                                                  {"role": "assistant", "content": "red square"}]},
            {"image": "b.png", "messages": [{"role": "assistant", "content": "x"}]}, ["not", "a", "record"],
            {"image": {"<image_00>": "c.png"}, "conversations": []}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    where, captions, skipped = recipe.image_captions([str(path)])
    assert [i for _, i in where] == [0] and captions == ["red square"] and skipped == 3


def test_cli_runs_the_recipe_and_reports_bad_input_without_a_traceback(tmp_path, capsys):
    from minicpmv import cli

    data = write_split(tmp_path / "data", ["color"], "train", 2, seed=0, form="caption")
    argv = ["train", "vision-tags", "--model", str(DEMO_DIR), "--data", str(data), "--eval-n", "5",
            "--out-dir", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "2 single-image records" in err and "Traceback" not in err
    argv[argv.index("--eval-n") + 1] = "1"
    assert cli.main(argv + ["--ngrams", "0", "2"]) == 2
    err = capsys.readouterr().err
    assert "--ngrams [0, 2]" in err and "Traceback" not in err


def test_ngram_sizes_parse_as_integers():
    from minicpmv.train.cli import parse_args

    assert parse_args(VisionTagArgs, ["--ngrams", "1", "2"]).ngrams == [1, 2]
    assert VisionTagArgs().ngrams == [2]
