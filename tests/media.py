"""Test media generated at test time with PyAV (no committed binaries).

Every frame carries its own number as a 12-bit bar code: a 4 x 3 grid of flat black/white blocks
(bit b of the frame number -> block b, row-major). Flat blocks survive lossy codecs, so a decoded frame
can be read back with `read_frame_number` to check exactly which frames a decoder returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from PIL import Image

BITS_X, BITS_Y = 4, 3  # bar code grid: 12 bits -> frame numbers up to 4095


def pattern_frame(number: int, width: int = 128, height: int = 96) -> np.ndarray:
    """uint8[height, width, 3] bar code of `number` (block b white when bit b is set)."""
    assert 0 <= number < 2 ** (BITS_X * BITS_Y), f"frame number {number} needs more than {BITS_X * BITS_Y} bits"
    bits = (number >> np.arange(BITS_X * BITS_Y)) & 1  # int[12]
    blocks = (bits.reshape(BITS_Y, BITS_X) * 255).astype(np.uint8)  # uint8[3, 4]
    rows = np.repeat(np.arange(height) * BITS_Y // height, 1)  # block row of each pixel row
    cols = np.arange(width) * BITS_X // width  # block column of each pixel column
    gray = blocks[rows[:, None], cols[None, :]]  # uint8[H, W]
    return np.repeat(gray[:, :, None], 3, axis=2)  # uint8[H, W, 3]


def read_frame_number(image: Image.Image) -> int:
    """Inverse of `pattern_frame`: threshold the mean of the central half of each block."""
    gray = np.asarray(image.convert("L"), dtype=np.float64)  # float64[H, W]
    h, w = gray.shape
    number = 0
    for b in range(BITS_X * BITS_Y):
        r, c = divmod(b, BITS_X)
        y0, y1 = (4 * r + 1) * h // (4 * BITS_Y), (4 * r + 3) * h // (4 * BITS_Y)
        x0, x1 = (4 * c + 1) * w // (4 * BITS_X), (4 * c + 3) * w // (4 * BITS_X)
        number |= int(gray[y0:y1, x0:x1].mean() > 127) << b
    return number


@dataclass(frozen=True)
class Codec:
    """One container/codec combination to generate."""

    suffix: str  # file extension, picks the container
    codec: str  # FFmpeg encoder
    pix_fmt: str
    options: dict[str, str] = field(default_factory=dict)


CODECS = {
    "mp4-h264": Codec(".mp4", "libx264", "yuv420p", {"g": "10", "bf": "2", "preset": "ultrafast"}),
    "webm-vp9": Codec(".webm", "libvpx-vp9", "yuv420p", {"g": "10", "deadline": "realtime", "cpu-used": "8"}),
    "mkv-h264": Codec(".mkv", "libx264", "yuv420p", {"g": "10", "bf": "2", "preset": "ultrafast"}),
    "avi-mjpeg": Codec(".avi", "mjpeg", "yuvj420p", {"q:v": "3"}),
    "avi-mpeg4": Codec(".avi", "mpeg4", "yuv420p", {"g": "10", "qscale": "3"}),
    "mov-h264": Codec(".mov", "libx264", "yuv420p", {"g": "10", "preset": "ultrafast"}),
    "gif": Codec(".gif", "gif", "rgb8"),
}


def write_video(path: Path, codec: Codec, n_frames: int, fps: int = 25, width: int = 128, height: int = 96,
                container_options: dict[str, str] | None = None, audio_first: bool = False) -> Path:
    """Encode `n_frames` bar-code frames at constant `fps` into `path` (the extension picks the container).

    audio_first: add an AAC track (as stream 0, longer than the video by 1 s) before the video stream.
    """
    with av.open(str(path), "w", options=container_options or {}) as container:
        audio = container.add_stream("aac", rate=8000, layout="mono") if audio_first else None
        stream = container.add_stream(codec.codec, rate=fps, options=dict(codec.options))
        stream.width, stream.height, stream.pix_fmt = width, height, codec.pix_fmt
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(pattern_frame(i, width, height), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if audio is not None:
            _encode_tone(container, audio, n_frames / fps + 1.0)
    return path


def _encode_tone(container: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float) -> None:
    rate = stream.rate
    samples = np.sin(np.arange(int(seconds * rate), dtype=np.float32) / 10)[None, :]  # float32[1, T]
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
    frame.sample_rate, frame.pts = rate, 0
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def write_audio_only(path: Path, seconds: float = 1.0, rate: int = 8000) -> Path:
    """A WAV file (one pcm_s16le stream, no video)."""
    with av.open(str(path), "w") as container:
        _encode_tone(container, container.add_stream("pcm_s16le", rate=rate, layout="mono"), seconds)
    return path


def write_no_frames(path: Path) -> Path:
    """A Matroska file whose video stream has a header but no frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        container.start_encoding()  # writes the header even though no packet follows
    return path
