"""Generated training data for the training tests: images, a short video, and datasets in both
supported formats (nothing committed; everything is written under pytest's tmp_path)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

QUESTIONS = ["What is shown?", "Describe it.", "Which colour dominates?", "What do you see?"]
ANSWERS = ["A red square.", "Blue stripes on white.", "Mostly green.", "A small grey box.", "Nothing at all."]


def write_image(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    Image.fromarray(pixels).save(path)
    return path


def write_video(path: Path, n_frames: int = 8, fps: int = 4, size: tuple[int, int] = (64, 48)) -> Path:
    """A short MJPEG AVI whose frames differ (each frame a different flat grey level)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuvj420p"
        for i in range(n_frames):
            frame = np.full((size[1], size[0], 3), 30 * i % 256, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def official_record(i: int, kind: str) -> dict:
    """Record i in the official format: kind is 'text', 'image' or 'video' (paths relative to the file)."""
    record = {"id": str(i), "conversations": [
        {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]},
        {"role": "assistant", "content": ANSWERS[i % len(ANSWERS)]},
    ]}
    if kind == "image":
        record["image"] = f"media/img{i % 3}.png"
    elif kind == "video":
        record["video"] = {"path": "media/clip.avi", "fps": 2, "packing": 2}
        record["conversations"][0]["content"] = "<video>\n" + record["conversations"][0]["content"]
    return record


def write_media(root: Path) -> None:
    (root / "media").mkdir(parents=True, exist_ok=True)
    for k in range(3):
        write_image(root / "media" / f"img{k}.png", seed=k)
    write_video(root / "media" / "clip.avi")


def write_dataset(root: Path, kinds: list[str], name: str = "train.jsonl") -> Path:
    """A JSONL file of official-format records, one per entry of `kinds`, plus its media."""
    write_media(root)
    path = root / name
    path.write_text("".join(json.dumps(official_record(i, k)) + "\n" for i, k in enumerate(kinds)))
    return path


def small_image_model(src: Path, dst: Path, side: int = 112) -> Path:
    """The tiny reference model with slices of about side x side pixels instead of 448 x 448
    (64 ViT patches instead of 1024 per slice: the training tests spend their time on training,
    not on the vision tower). Weights and tokenizer are symlinked, the two configs rewritten."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in ("config.json", "preprocessor_config.json"):
            (dst / f.name).symlink_to(f)
    config = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, "image_size": side}))
    pre = json.loads((src / "preprocessor_config.json").read_text())
    (dst / "preprocessor_config.json").write_text(json.dumps({**pre, "scale_resolution": side}))
    return dst


@contextlib.contextmanager
def one_thread():
    """Tiny tensors train fastest on one thread, and a busy machine does not make two threads spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
