"""Media fetching safety (minicpmv/serve/media.py). No test here opens a network connection: remote fetching is
exercised through an injected resolver and httpx.MockTransport, and refused hosts are checked never to be reached."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from minicpmv.errors import InputError
from minicpmv.serve import MediaPolicy
from minicpmv.serve.media import MediaFetcher, decode_data_url, is_public_address


def png_bytes(size: tuple[int, int] = (32, 24), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def huge_png_bytes(width: int = 8000, height: int = 6250) -> bytes:
    """A valid 50-megapixel PNG that is small on disk (1-bit, all black)."""
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def video_bytes(frames: int = 8, size: int = 64, fps: int = 4) -> bytes:
    """A small MPEG-4 clip whose frames get brighter, encoded in memory with PyAV."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for i in range(frames):
            rgb = np.full((size, size, 3), 20 * i % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.mark.parametrize("address,public", [
    ("8.8.8.8", True), ("2001:4860:4860::8888", True),
    ("127.0.0.1", False), ("::1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("fe80::1%eth0", False), ("fd00::1", False), ("100.64.0.1", False),
    ("0.0.0.0", False), ("224.0.0.1", False), ("::ffff:127.0.0.1", False), ("192.0.2.1", False),
])
def test_public_address_classification(address, public):
    assert is_public_address(address) is public


def test_data_url_round_trip_and_strict_errors():
    assert decode_data_url(data_url(b"hello", "text/plain"), "x", 100) == ("text/plain", b"hello")
    for bad in ["data:image/png;base64,@@@@", "data:image/png,abcd", "data:image/png;base64,", "image/png;base64,AAAA"]:
        with pytest.raises(InputError, match="item 3"):
            decode_data_url(bad, "item 3", 100)
    with pytest.raises(InputError, match="exceed the limit of 10"):
        decode_data_url(data_url(b"x" * 100, "text/plain"), "x", 10)


def test_pixel_limit_is_checked_before_decoding():
    fetcher = MediaFetcher(MediaPolicy(max_image_pixels=36_000_000))
    url = data_url(huge_png_bytes(), "image/png")
    start = time.perf_counter()
    with pytest.raises(InputError, match="image 1: .*8000x6250 = 50000000 pixels, over the limit of 36000000"):
        fetcher.image(url, "image 1")
    assert time.perf_counter() - start < 0.5, "the header alone should decide"
    assert fetcher.image(data_url(png_bytes(), "image/png"), "image 1").size == (32, 24)
    with pytest.raises(InputError, match="image 1: could not decode"):
        fetcher.image(data_url(b"GIF89a but not really", "image/gif"), "image 1")


def test_local_paths_only_inside_the_allowed_dir(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "ok.png").write_bytes(png_bytes())
    (tmp_path / "secret.png").write_bytes(png_bytes())
    (allowed / "link.png").symlink_to(tmp_path / "secret.png")
    fetcher = MediaFetcher(MediaPolicy(allowed_media_dir=allowed))
    assert fetcher.image(str(allowed / "ok.png"), "img").size == (32, 24)
    assert fetcher.image(f"file://{allowed / 'ok.png'}", "img").size == (32, 24)
    for escape in [str(tmp_path / "secret.png"), f"{allowed}/../secret.png", str(allowed / "link.png"), "/etc/passwd"]:
        with pytest.raises(InputError, match="outside the allowed media folder"):
            fetcher.image(escape, "img")
    with pytest.raises(InputError, match="no file at"):
        fetcher.image(str(allowed / "missing.png"), "img")
    with pytest.raises(InputError, match="local paths are disabled"):
        MediaFetcher(MediaPolicy()).image(str(allowed / "ok.png"), "img")
    with pytest.raises(InputError, match="unsupported URL scheme 'ftp'"):
        fetcher.image("ftp://example.com/a.png", "img")


class Recorder:
    """A MockTransport handler that serves `routes` by Host header and records every request it receives."""

    def __init__(self, routes: dict[str, httpx.Response]):
        self.routes, self.seen = routes, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        return self.routes[request.headers["host"] + request.url.path]


def remote_fetcher(routes: dict[str, httpx.Response], dns: dict[str, list[str]],
                   **policy) -> tuple[MediaFetcher, Recorder]:
    recorder = Recorder(routes)
    fetcher = MediaFetcher(MediaPolicy(allow_remote_media=True, **policy), resolve=lambda host, port: dns[host],
                           transport=httpx.MockTransport(recorder))
    return fetcher, recorder


def test_remote_fetch_connects_to_the_checked_address():
    fetcher, rec = remote_fetcher({"cdn.example/a.png": httpx.Response(200, content=png_bytes())},
                                  {"cdn.example": ["93.184.216.34"]})
    assert fetcher.image("https://cdn.example/a.png", "img").size == (32, 24)
    (request,) = rec.seen
    assert request.url.host == "93.184.216.34" and request.headers["host"] == "cdn.example"
    assert request.extensions["sni_hostname"] == "cdn.example"


@pytest.mark.parametrize("url,dns", [
    ("http://127.0.0.1/a.png", {"127.0.0.1": ["127.0.0.1"]}),
    ("http://169.254.169.254/latest/meta-data", {"169.254.169.254": ["169.254.169.254"]}),
    ("http://intranet.example/a.png", {"intranet.example": ["10.0.0.7"]}),
    ("http://split.example/a.png", {"split.example": ["93.184.216.34", "192.168.0.2"]}),  # one bad address is enough
    ("http://v6.example/a.png", {"v6.example": ["::1"]}),
])
def test_non_public_hosts_are_refused_before_connecting(url, dns):
    fetcher, rec = remote_fetcher({}, dns)
    with pytest.raises(InputError, match="non-public address"):
        fetcher.image(url, "img")
    assert rec.seen == []


def test_redirects_are_rechecked_and_bounded():
    routes = {
        "good.example/hop": httpx.Response(302, headers={"location": "https://good.example/final.png"}),
        "good.example/final.png": httpx.Response(200, content=png_bytes()),
        "good.example/evil": httpx.Response(301, headers={"location": "http://169.254.169.254/latest"}),
        "good.example/loop": httpx.Response(302, headers={"location": "/loop"}),
    }
    fetcher, rec = remote_fetcher(routes, {"good.example": ["93.184.216.34"], "169.254.169.254": ["169.254.169.254"]})
    assert fetcher.image("https://good.example/hop", "img").size == (32, 24)
    with pytest.raises(InputError, match="non-public address"):
        fetcher.image("https://good.example/evil", "img")
    assert all(r.url.host == "93.184.216.34" for r in rec.seen)
    with pytest.raises(InputError, match="more than 3 redirects"):
        fetcher.image("https://good.example/loop", "img")


def test_remote_fetch_limits_and_failures():
    routes = {"big.example/x": httpx.Response(200, content=b"x" * 5000),
              "gone.example/x": httpx.Response(404)}
    fetcher, _ = remote_fetcher(routes, {"big.example": ["8.8.8.8"], "gone.example": ["8.8.8.8"]},
                                max_media_bytes=1000)
    with pytest.raises(InputError, match="exceeds the limit of 1000 bytes"):
        fetcher.image("http://big.example/x", "img")
    with pytest.raises(InputError, match="answered HTTP 404"):
        fetcher.image("http://gone.example/x", "img")
    with pytest.raises(InputError, match="fetching http\\(s\\) media is disabled"):
        MediaFetcher(MediaPolicy()).image("https://good.example/a.png", "img")


def test_video_data_url_becomes_a_checked_temp_file():
    fetcher = MediaFetcher(MediaPolicy())
    path, temporary = fetcher.video(data_url(video_bytes(), "video/mp4"), "video 1")
    try:
        assert temporary and path.stat().st_size > 0
    finally:
        path.unlink()
    with pytest.raises(InputError, match="not a readable video"):
        fetcher.video(data_url(b"\x00\x01 definitely not a container" * 10, "video/mp4"), "video 1")
    with pytest.raises(InputError, match="has 8 frames, over the limit of 5"):
        MediaFetcher(MediaPolicy(max_video_frames=5)).video(data_url(video_bytes(), "video/mp4"), "video 1")


def test_refused_temp_videos_are_deleted(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with pytest.raises(InputError):
        MediaFetcher(MediaPolicy()).video(data_url(b"not a video at all", "video/mp4"), "video 1")
    assert list(Path(tmp_path).iterdir()) == []
