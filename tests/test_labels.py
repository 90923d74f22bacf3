"""Fine-tuning labels: which tokens carry the loss (training spec §6.3), through images, videos and padding."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from conftest import reference_path
from minicpmv.errors import InputError
from minicpmv.processor.chat_template import render_chat
from minicpmv.processor.processor import IGNORE_INDEX, Processor


@pytest.fixture(scope="module")
def proc() -> Processor:
    return Processor.from_pretrained(reference_path("tiny_model"))


def image(wh=(640, 480)) -> Image.Image:
    return Image.new("RGB", wh, (90, 160, 30))


def trained_runs(proc: Processor, ids: list[int], labels: list[int]) -> list[str]:
    """Text of each maximal run of labelled tokens (labels equal the ids where set)."""
    runs, current = [], []
    for tid, lab in zip(ids, labels):
        if lab == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert lab == tid
            current.append(tid)
    if current:
        runs.append(current)
    return [proc.tokenizer.decode(r) for r in runs]


def encode(proc, msgs, **kw):
    return proc.encode(msgs, add_generation_prompt=False, return_labels=True, **kw)


def test_non_thinking_sample_skips_the_empty_think_block(proc):
    msgs = [{"role": "user", "content": [image(), "What is it?"]}, {"role": "assistant", "content": "A green field."}]
    s = encode(proc, msgs)
    assert s.final_text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nA green field.<|im_end|>\n")
    assert trained_runs(proc, s.input_ids, s.labels) == ["A green field.<|im_end|>"]
    tok = proc.tokenizer
    first = s.labels.index(next(lab for lab in s.labels if lab != IGNORE_INDEX))
    # the 4 untrained tokens right before the answer: <think> "\n\n" </think> "\n\n" (the official offset of 4)
    assert s.input_ids[first - 4:first] == [tok.think_start_id, *tok.encode("\n\n"), tok.think_end_id, *tok.encode("\n\n")]
    assert s.input_ids == tok.encode(s.final_text)


def test_thinking_sample_trains_reasoning_and_answer(proc):
    msgs = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4"}]
    s = encode(proc, msgs)
    assert trained_runs(proc, s.input_ids, s.labels) == ["<think>\nAdd them.\n</think>\n\n4<|im_end|>"]


def test_multi_turn_trains_every_assistant_turn(proc):
    msgs = [
        {"role": "user", "content": [image(), "Colour?"]},
        {"role": "assistant", "content": "<think>\nlook\n</think>\n\nGreen."},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes!"},
    ]
    s = encode(proc, msgs, system_prompt="Be brief.")
    assert trained_runs(proc, s.input_ids, s.labels) == ["Green.<|im_end|>", "Yes!<|im_end|>"]
    assert "look" not in s.final_text  # earlier reasoning is dropped by the template


def test_visual_tokens_are_never_trained(proc):
    msgs = [{"role": "user", "content": "Draw."}, {"role": "assistant", "content": ["Here:", image((448, 448)), "Done."]}]
    s = encode(proc, msgs)
    assert trained_runs(proc, s.input_ids, s.labels) == ["Here:\n", "\nDone.<|im_end|>"]
    for start, end in s.image_bounds.tolist():
        assert all(lab == IGNORE_INDEX for lab in s.labels[start - 1:end + 1])


def test_packed_video_prompt_labels(proc):
    frames = [image((320, 240)) for _ in range(5)]
    msgs = [{"role": "user", "content": [*frames, "What happens?"]}, {"role": "assistant", "content": "Nothing."}]
    s = encode(proc, msgs, temporal_ids=[[0, 3, 7], [10, 13]], max_slice_nums=1, use_image_id=False)
    assert trained_runs(proc, s.input_ids, s.labels) == ["Nothing.<|im_end|>"]
    assert len(s.image_bounds) == 2


def test_batch_labels_are_left_padded_with_ignore(proc):
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    long = [{"role": "user", "content": [image(), "Describe."]}, {"role": "assistant", "content": "A field."}]
    batch = proc([short, long], add_generation_prompt=False, return_labels=True)
    assert batch.labels is not None and batch.labels.shape == batch.input_ids.shape and "labels" in batch.keys()
    for b, msgs in enumerate([short, long]):
        alone = encode(proc, msgs)
        pad = batch.input_ids.shape[1] - len(alone.input_ids)
        assert batch.labels[b, :pad].tolist() == [IGNORE_INDEX] * pad
        assert batch.labels[b, pad:].tolist() == alone.labels
    set_ = batch.labels != IGNORE_INDEX
    assert torch.equal(batch.labels[set_], batch.input_ids[set_])


def test_chat_template_spans_agree_with_token_labels(proc):
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "<think>\nR\n</think>\n\nA"}]
    spans = render_chat(msgs, add_generation_prompt=False).trainable
    s = encode(proc, msgs)
    assert "".join(trained_runs(proc, s.input_ids, s.labels)) == "".join(s.chat_text[a:b] for a, b in spans)


def test_no_assistant_turn_is_an_error(proc):
    with pytest.raises(InputError, match="conversation 0 has no assistant text to train on"):
        encode(proc, [{"role": "user", "content": "Q"}])
