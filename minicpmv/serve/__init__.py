"""Serving MiniCPM-V: the OpenAI-compatible server (`openai_server`), media loading and its safety (`media`), the
web page (`static/`). This module holds only the settings, so the CLI can read defaults without importing FastAPI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class MediaPolicy:
    """Where media may come from and how big it may be."""

    allowed_media_dir: Path | None = None  # local paths are refused unless they resolve inside this folder
    allow_remote_media: bool = False  # http(s) fetching; never to non-public addresses even when on
    max_image_pixels: int = 36_000_000  # width * height, checked from the header before decoding
    max_media_bytes: int = 64 * 2**20  # per downloaded or decoded item
    max_video_frames: int = 108_000  # frames in the source video (1 h at 30 fps)
    fetch_timeout_s: float = 10.0  # connect / read timeout of one remote hop
    max_redirects: int = 3


@dataclass(frozen=True)
class ServerConfig:
    """Network settings and request limits of the server."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # when set, /v1/* requires `Authorization: Bearer <key>`
    model_name: str | None = None  # id reported by /v1/models; None = the service's model_name
    max_body_bytes: int = 64 * 2**20  # request body, checked before JSON parsing
    max_n: int = 8  # completions per request
    default_max_tokens: int = 2048  # when the request gives neither max_tokens nor max_completion_tokens
    max_tokens_limit: int = 8192  # largest max_tokens a request may ask for
    max_prompt_tokens: int = 16384  # text + visual positions (the official max_inp_length)
    max_media_items: int = 32  # images + videos per request
    max_in_flight: int = 64  # concurrent chat requests; more get 429
    shutdown_timeout_s: float = 30.0  # graceful shutdown: in-flight requests get this long to finish
    media: MediaPolicy = field(default_factory=MediaPolicy)
