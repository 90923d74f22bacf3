"""Training data: dataset formats and resumable streams (`datasets`), padding and packing (`packing`)."""

from minicpmv.data.datasets import SKIP_REASONS, BadSample, MixedStream, RecordFile, SampleStream, SFTDataset, SkipCounter
from minicpmv.data.packing import TrainBatch, block_causal_mask, pack, pad, plan_rows

__all__ = [
    "SKIP_REASONS", "BadSample", "MixedStream", "RecordFile", "SampleStream", "SFTDataset", "SkipCounter",
    "TrainBatch", "block_causal_mask", "pack", "pad", "plan_rows",
]
