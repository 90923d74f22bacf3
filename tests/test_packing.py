"""Packing: row planning, the block-diagonal mask, and packed == padded loss and gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import reference_path
from minicpmv.data.datasets import SFTDataset
from minicpmv.data.packing import block_causal_mask, pack, pad, plan_rows
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import IGNORE_INDEX, Processor
from minicpmv.train.loop import TokenLoss
from train_fixtures import one_thread, small_image_model, write_dataset


def test_plan_rows_worked_example():
    assert plan_rows([5, 3, 7, 2], 8) == [[2], [0, 1], [3]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=40), st.integers(50, 120))
def test_plan_rows_places_every_sample_once_within_the_limit(lengths, max_length):
    rows = plan_rows(lengths, max_length)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= max_length for row in rows)
    assert len(rows) <= 2 * sum(lengths) / max_length + 1  # first fit never leaves two rows half empty


def test_block_causal_mask_keeps_attention_inside_each_sample():
    mask = block_causal_mask(torch.tensor([[0, 0, 1, 1, 1]]))[0, 0]
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]).bool()
    assert torch.equal(mask, expected)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = small_image_model(reference_path("tiny_model"), tmp_path_factory.mktemp("tiny"))
    with one_thread():
        yield MiniCPMV.from_pretrained(path).train(), Processor.from_pretrained(path)


@pytest.fixture(scope="module")
def samples(tiny, tmp_path_factory):
    _, processor = tiny
    path = write_dataset(tmp_path_factory.mktemp("pack"), ["image", "text", "video", "text", "image"])
    dataset = SFTDataset([path], processor, max_length=512, max_slice_nums=1, strict=True)
    return [dataset.encode(i) for i in range(5)]


def test_pack_restarts_positions_moves_spans_and_drops_cross_sample_labels(tiny, samples):
    _, processor = tiny
    packed = pack(samples, max_length=400, pad_id=processor.tokenizer.pad_id)
    lengths = [len(s.input_ids) for s in samples]
    assert packed.num_samples == 5 and packed.num_tokens == sum(lengths) and packed.input_ids.shape[0] < 5
    for row in range(packed.input_ids.shape[0]):
        starts = (packed.position_ids[row] == 0).nonzero().flatten().tolist()
        for s in starts:
            assert packed.labels[row, s] == IGNORE_INDEX  # never predicted from the previous sample
        for start, end in packed.image_bounds[row].tolist():
            assert end - start == 64 and bool((packed.input_ids[row, start:end] == processor.tokenizer.unk_id).all())
    spans = sum(len(b) for b in packed.image_bounds)
    assert spans == sum(len(s.image_bounds) for s in samples)
    assert packed.num_targets == pad(samples, processor.tokenizer.pad_id).num_targets


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss_sum, count = TokenLoss(model)(**{k: batch[k] for k in batch.keys()})
    loss = loss_sum / count
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_and_padded_batches_give_the_same_loss_and_gradients(tiny, samples):
    model, processor = tiny
    pad_id = processor.tokenizer.pad_id
    padded_loss, padded_grads = _loss_and_grads(model, pad(samples, pad_id))
    packed_loss, packed_grads = _loss_and_grads(model, pack(samples, 400, pad_id))
    assert abs(packed_loss.item() - padded_loss.item()) <= 1e-5
    assert packed_grads.keys() == padded_grads.keys() and len(packed_grads) == len(list(model.parameters()))
    worst = max((packed_grads[n] - padded_grads[n]).abs().max().item() for n in padded_grads)
    assert worst <= 1e-4
    assert sum(g.abs().sum().item() for n, g in padded_grads.items() if n.startswith("vpm")) > 0  # vision is trained


def test_token_loss_equals_the_model_mean_loss(tiny, samples):
    model, processor = tiny
    batch = pad(samples[:2], processor.tokenizer.pad_id)  # the model's loss needs full [B, T, 151748] logits
    with torch.no_grad():
        loss_sum, count = TokenLoss(model)(**{k: batch[k] for k in batch.keys()})
        reference = model(**batch).loss
    assert count.item() == batch.num_targets
    assert abs(loss_sum.item() / count.item() - reference.item()) <= 1e-5


def test_a_text_only_batch_keeps_every_vision_parameter_in_the_graph(tiny, samples):
    """DDP/FSDP need every trainable parameter used in every step (the reference runs a dummy image)."""
    model, processor = tiny
    text_only = [s for s in samples if not s.pixel_values]
    _, grads = _loss_and_grads(model, pad(text_only, processor.tokenizer.pad_id))
    assert set(grads) == {n for n, _ in model.named_parameters()}
    assert all(float(grads[n].abs().sum()) == 0.0 for n in grads if n.startswith(("vpm.", "resampler.")))


def _mean_loss(model, batch) -> float:
    loss_sum, weight = TokenLoss(model)(**{k: batch[k] for k in batch.keys()})
    return loss_sum.item() / weight.item()


def test_per_sample_loss_is_the_mean_of_each_samples_own_token_mean(tiny, samples):
    """A 3-token answer and a 40-token trace weigh the same; packed and padded agree."""
    model, processor = tiny
    pad_id = processor.tokenizer.pad_id
    with torch.no_grad():
        own = [_mean_loss(model, pad([s], pad_id)) for s in samples]  # each sample alone: its token mean
        for batch in (pad(samples, pad_id, per_sample=True), pack(samples, 400, pad_id, per_sample=True)):
            assert batch.target_weight == pytest.approx(len(samples))
            assert _mean_loss(model, batch) == pytest.approx(sum(own) / len(own), abs=1e-5)
        token_mean = _mean_loss(model, pad(samples, pad_id))
    assert abs(token_mean - sum(own) / len(own)) > 1e-3  # the samples differ in length, so the two means differ
    assert "label_weights" not in pad(samples, pad_id).keys()  # token mean: no weights at all
