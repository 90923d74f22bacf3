"""recipes/demo_breakdown.py: its grouping and trace reading, and one small run on the embedded model."""

from __future__ import annotations

import sys

from minicpmv.train.cli import load_recipe

breakdown = load_recipe("demo_breakdown")


def test_shapes_in_reads_the_caption():
    assert breakdown.shapes_in({"family": "color", "caption": "red triangle, green square"}) == 2
    assert breakdown.shapes_in({"family": "count", "caption": "3 shapes: red square, blue circle, red circle"}) == 3


def test_by_group_counts_right_and_asked_per_key():
    samples = [{"answer": "red", "k": 1}, {"answer": "blue", "k": 1}, {"answer": "square", "k": 2}]
    rows = breakdown.by_group(samples, ["Red.", "red", "square"], lambda s: s["k"])
    assert rows == {1: [1, 2], 2: [1, 1]}


def test_trace_reading_separates_reading_from_adding():
    samples = [{"caption": "6 and 2", "answer": "8"}] * 4
    replies = [("The numbers are 2 and 6. 2 + 6 = 8.", "8"),  # read both (other order), added, right
               ("The numbers are 2 and 2. 2 + 2 = 4.", "4"),  # read one, added
               ("The numbers are 5 and 3. 5 + 3 = 9.", "9"),  # read none, mis-added
               ("no trace", "8")]  # unparsed, right by the answer alone
    assert breakdown.trace_reading(samples, replies) == {"parsed": 3, "read_both": 1, "read_one": 2,
                                                         "sum_of_read": 2, "right": 2}


def test_small_run_prints_the_three_tables(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["demo_breakdown.py", "--per-family", "3"])
    breakdown.main()
    out = capsys.readouterr().out
    assert "| colour: shapes, question |" in out and "| count: shapes |" in out
    assert "| read_both | " in out and out.count("/ 3 |") >= 5  # the five arithmetic rows, each over 3 samples
