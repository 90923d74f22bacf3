"""recipes/packing_ablation.py: the frame selection it trains and scores with, and one tiny end-to-end run."""

from __future__ import annotations

import json

from minicpmv.data.synthetic.suite import make
from minicpmv.demo import DEMO_DIR
from minicpmv.train.cli import load_recipe

ablation = load_recipe("packing_ablation")


def test_reshape_clip_keeps_timestamps_and_the_token_budget():
    clip = make("vid_dir", "test", 0)
    ids = [t for g in clip["video"]["temporal_ids"] for t in g]
    assert ids == [0, 2, 4, 6, 8, 10]
    packed = ablation.reshape_clip(clip, *ablation.VARIANTS["packed"])
    single = ablation.reshape_clip(clip, *ablation.VARIANTS["single"])
    assert packed["video"]["temporal_ids"] == [[0, 2, 4], [6, 8, 10]] and len(packed["video"]["frames"]) == 6
    assert single["video"]["temporal_ids"] == [[0], [10]]
    assert single["video"]["frames"][0] is clip["video"]["frames"][0]
    assert single["video"]["frames"][1] is clip["video"]["frames"][-1]
    # same number of resampler groups, so the same visual tokens; 3x the frames when packed
    assert len(packed["video"]["temporal_ids"]) == len(single["video"]["temporal_ids"])


def test_tiny_run_trains_and_scores_both_variants(tmp_path):
    args = ablation.AblationArgs(base=str(DEMO_DIR), out_dir=str(tmp_path), per_family=1, steps=1, batch_size=2,
                                 eval_per_family=1)
    results = ablation.main(args)
    assert set(results) == {"packed", "single"}
    tokens = {n: {s.family: s.visual_tokens for s in scores} for n, scores in results.items()}
    assert tokens["packed"] == tokens["single"] and all(v > 0 for v in tokens["packed"].values())
    table = (tmp_path / "ablation.md").read_text()
    assert "| mean |" in table and "vid_dir" in table
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["args"]["steps"] == 1 and len(saved["results"]["packed"]) == len(results["packed"])
