"""Synthetic multimodal task suite of the embedded demo model (seeded; nothing is downloaded).

Families (`tasks.FAMILIES`): OCR of rendered words and numbers, counting shapes, naming colours and
shapes, the tallest bar of a bar chart, the sum of two drawn numbers (with a worked `<think>` trace for
the long mode), the highest / lowest point or up / down step of a line chart, the original text of a
corrupted line on a small document page (the document engine's page and corruption, three levels),
and five short videos made frame by frame: direction of a moving shape, which shape appeared first,
how many times a light flashed, which of two shapes moves faster, which digit is shown at time t.

    >>> from minicpmv.data.synthetic import make
    >>> make("count", "test", 0)["answer"]          # doctest: +SKIP
    '4'

`suite.write_split` writes a split to JSONL + PNG files for the training recipes; `evaluate` (in
`evaluate.py`) scores a model on the held-out split per family and mode.
"""

from minicpmv.data.synthetic.suite import SPLITS, corpus, iter_split, make, sample_seed, split_path, write_split
from minicpmv.data.synthetic.tasks import FAMILIES, with_mode

__all__ = ["FAMILIES", "SPLITS", "corpus", "iter_split", "make", "sample_seed", "split_path", "with_mode", "write_split"]
