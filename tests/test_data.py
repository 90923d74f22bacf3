"""Training data: both record formats, media resolution, skip-and-count by reason, resumable streams."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from PIL import Image

from conftest import reference_path
from minicpmv.data.datasets import BadSample, MixedStream, RecordFile, SampleStream, SFTDataset, record_to_messages
from minicpmv.processor.processor import IGNORE_INDEX, Processor
from minicpmv.processor.video import Video
from train_fixtures import official_record, write_dataset, write_image, write_media


@pytest.fixture(scope="module")
def processor() -> Processor:
    return Processor.from_pretrained(reference_path("tiny_model"))


def _write_jsonl(path, records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def _kinds(parts) -> list[str]:
    out = []
    for p in parts if isinstance(parts, list) else [parts]:
        out.append("text" if isinstance(p, str) else "image" if isinstance(p, Image.Image) else "video")
    return out


def test_official_single_image_goes_before_the_first_user_turn_when_untagged(tmp_path):
    write_media(tmp_path)
    untagged = official_record(0, "image")
    tagged = dict(untagged, conversations=[{"role": "user", "content": "Look: <image>\nWhat?"},
                                           {"role": "assistant", "content": "A box."}])
    first = record_to_messages(untagged, tmp_path, "r0")[0]["content"]
    assert _kinds(first) == ["image", "text"] and first[1] == "What is shown?"
    second = record_to_messages(tagged, tmp_path, "r1")[0]["content"]
    assert _kinds(second) == ["text", "image", "text"] and second[0] == "Look: " and second[2] == "What?"


def test_official_multi_image_and_video_placeholders_anywhere(tmp_path):
    write_media(tmp_path)
    frames = tmp_path / "frames"
    frames.mkdir()
    for k in range(3):
        write_image(frames / f"{k:03d}.png", seed=10 + k)
    record = {
        "image": {"<image_00>": "media/img0.png", "<image_01>": "media/img1.png"},
        "video": {"<video_00>": "media/clip.avi", "<video_01>": {"frames": "frames", "temporal_ids": [[0, 5], [10]]}},
        "conversations": [
            {"role": "user", "content": "<image_00>\nand <video_00>"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "<video_01><image_01>\ncompare"},
            {"role": "assistant", "content": "same"},
        ],
    }
    messages = record_to_messages(record, tmp_path, "r")
    assert _kinds(messages[0]["content"]) == ["image", "text", "video"]
    assert _kinds(messages[2]["content"]) == ["video", "image", "text"]
    folder_video = messages[2]["content"][0]
    assert isinstance(folder_video, Video) and len(folder_video.frames) == 3
    assert [list(g) for g in folder_video.temporal_ids] == [[0, 5], [10]]


def test_llamafactory_format_with_system_prompt_images_and_videos(tmp_path, processor):
    write_media(tmp_path)
    record = {"messages": [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "<image><video>Same scene?"},
                           {"role": "assistant", "content": "No."}],
              "images": ["media/img2.png"], "videos": [{"path": "media/clip.avi", "fps": 2, "packing": 2}]}
    messages = record_to_messages(record, tmp_path, "r")
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert _kinds(messages[1]["content"]) == ["image", "video", "text"]
    dataset = SFTDataset([_write_jsonl(tmp_path / "lf.jsonl", [record])], processor, max_length=4096, max_slice_nums=1)
    sample = dataset.encode(0)
    # one image span + one span per temporal group of the video (8 frames at 4 fps, sampled at 2 fps, packed by 2)
    assert len(sample.image_bounds) == 1 + len(sample.temporal_ids) - 1 and sample.temporal_ids[0] == [-1]
    assert all(len(g) == 2 for g in sample.temporal_ids[1:])


def test_relative_paths_resolve_against_the_dataset_file_not_the_cwd(tmp_path, processor, monkeypatch):
    path = write_dataset(tmp_path / "deep" / "data", ["image", "video"])
    monkeypatch.chdir(tmp_path)
    dataset = SFTDataset([path], processor, max_length=4096, max_slice_nums=1, strict=True)
    assert [len(dataset.encode(i).pixel_values) for i in range(2)] == [1, 4]  # video: 8 frames at 4 fps -> 4 at 2 fps


def test_json_list_and_jsonl_give_identical_samples_with_labels_on_the_answer_only(tmp_path, processor):
    path = write_dataset(tmp_path, ["text", "image", "video"])
    records = [json.loads(line) for line in path.read_text().splitlines()]
    (tmp_path / "train.json").write_text(json.dumps(records))
    a = SFTDataset([path], processor, 4096, 1, strict=True)
    b = SFTDataset([tmp_path / "train.json"], processor, 4096, 1, strict=True)
    for i in range(3):
        sa, sb = a.encode(i), b.encode(i)
        assert sa.input_ids == sb.input_ids and sa.labels == sb.labels
        trained = processor.tokenizer.decode([t for t in sa.labels if t != IGNORE_INDEX])
        assert trained.startswith(records[i]["conversations"][1]["content"]) and trained.endswith("<|im_end|>")


def test_bad_samples_are_skipped_and_counted_by_reason_never_replaced(tmp_path, processor):
    write_media(tmp_path)
    (tmp_path / "media" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    good = official_record(0, "text")
    records = [
        good,
        dict(official_record(1, "image"), image="media/nope.png"),  # missing_file
        dict(official_record(2, "image"), image="media/broken.png"),  # bad_media
        dict(good, conversations=good["conversations"][:1]),  # no_trainable_tokens (ends with the user)
        dict(good, conversations=[good["conversations"][0], {"role": "assistant", "content": "word " * 300}]),  # too_long
        '{"id": 5, "conversations": [',  # bad_json
        {"id": 6, "dialogue": []},  # bad_format
        dict(good, conversations=[{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]),  # bad_format
        official_record(8, "image"),
    ]
    path = _write_jsonl(tmp_path / "mixed.jsonl", records)
    dataset = SFTDataset([path], processor, max_length=200, max_slice_nums=1)
    kept = [i for i in range(len(records)) if dataset.encode(i) is not None]
    assert kept == [0, 8]
    assert dataset.skipped.counts == Counter(missing_file=1, bad_media=1, no_trainable_tokens=1, too_long=1,
                                             bad_json=1, bad_format=2)
    report = dataset.skipped.report()
    assert report.startswith("7 samples skipped") and "nope.png" in report

    stream = SampleStream(SFTDataset([path], processor, 200, 1), shuffle=False)
    seen = [stream.next().input_ids for _ in range(4)]  # two epochs: 0, (7 skipped), 8, 0, (7 skipped), 8
    assert len({tuple(s) for s in seen}) == 2 and stream.skipped.total == 14

    strict = SFTDataset([path], processor, max_length=200, max_slice_nums=1, strict=True)
    with pytest.raises(BadSample) as err:
        strict.encode(1)
    assert err.value.reason == "missing_file" and "nope.png" in str(err.value)


def test_record_file_streams_jsonl_by_offsets(tmp_path):
    path = _write_jsonl(tmp_path / "a.jsonl", [{"n": 0}, "", {"n": 2}])
    f = RecordFile(path)
    assert len(f) == 2 and f.read(1) == {"n": 2} and f._records is None


def _ids(stream, n) -> list[tuple[int, ...]]:
    return [tuple(stream.next().input_ids) for _ in range(n)]


def test_streams_split_epochs_between_ranks_and_resume_exactly(tmp_path, processor):
    path = write_dataset(tmp_path, ["text"] * 9)
    make = lambda rank=0, world=1: SampleStream(SFTDataset([path], processor, 512), seed=1, rank=rank, world_size=world)
    single = _ids(make(), 8)
    ranks = [_ids(make(r, 2), 4) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(single)  # 9 records cut to 8 per epoch, split between ranks
    assert [ranks[r][i] for i in range(4) for r in range(2)] == single
    stream = make()
    _ids(stream, 5)
    state = json.loads(json.dumps(stream.state_dict()))
    rest = _ids(stream, 7)
    again = make()
    again.load_state_dict(state)
    assert _ids(again, 7) == rest and stream.epoch == 1


def test_mixed_stream_follows_weights_and_resumes(tmp_path, processor):
    a = write_dataset(tmp_path / "a", ["text"] * 4)
    b = write_dataset(tmp_path / "b", ["image"] * 4)
    make = lambda: MixedStream({"main": SampleStream(SFTDataset([a], processor, 512, 1)),
                                "decay": SampleStream(SFTDataset([b], processor, 512, 1))}, {"main": 1.0, "decay": 0.0}, seed=2)
    mixed = make()
    assert all(not s.pixel_values for s in (mixed.next() for _ in range(6)))
    mixed.set_weights({"main": 0.5, "decay": 0.5})
    state = mixed.state_dict()
    draws = [bool(mixed.next().pixel_values) for _ in range(20)]
    assert 3 <= sum(draws) <= 17
    again = make()
    again.set_weights({"main": 0.5, "decay": 0.5})
    again.load_state_dict(state)
    assert [bool(again.next().pixel_values) for _ in range(20)] == draws
    with pytest.raises(ValueError):
        again.set_weights({"other": 1.0})


def test_labels_are_shift_ready_for_the_model_loss(tmp_path, processor):
    sample = SFTDataset([write_dataset(tmp_path, ["text"])], processor, 512).encode(0)
    labels = torch.tensor(sample.labels)
    ids = torch.tensor(sample.input_ids)
    trained = labels != IGNORE_INDEX
    assert bool((labels[trained] == ids[trained]).all()) and not bool(trained[0])
