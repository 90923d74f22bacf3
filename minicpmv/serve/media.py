"""Turning the media references of a request (data: URLs, local paths, http(s) URLs) into images and video files.

Everything here is about safety: every limit is checked before the expensive step it protects.

* data: URLs are decoded with strict base64 (a bad character is an error, not silently dropped).
* Local files are served only from under `allowed_media_dir` (symlinks resolved first, so `..` and links that
  escape the folder are refused).
* http(s) fetching is off unless `allow_remote_media`. When on, the host name is resolved here, EVERY resolved
  address must be public (not loopback, link-local such as 169.254.169.254, private, reserved, multicast or
  unspecified), and the connection goes to the checked address itself (no second DNS lookup that an attacker
  could answer differently). Redirects are followed by hand, each hop checked again. Downloads stop at
  `max_media_bytes`.
* Images are refused by their header size (`max_image_pixels`) before any pixel is decoded (`load_image`).

The server calls these blocking functions from a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
import tempfile
import urllib.parse
from pathlib import Path
from typing import Callable

import httpx
from PIL import Image

from minicpmv.errors import InputError
from minicpmv.processor.image import load_image
from minicpmv.serve import MediaPolicy

Resolver = Callable[[str, int], list[str]]


def resolve_host(host: str, port: int) -> list[str]:
    """All addresses `host` resolves to (IPv4 and IPv6), as strings. A literal IP resolves to itself."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise InputError(f"media URL host {host!r} could not be resolved ({e}); check the URL") from e
    return sorted({info[4][0] for info in infos})


def is_public_address(address: str) -> bool:
    """True only for globally routable unicast addresses.

    '8.8.8.8' -> True; '127.0.0.1', '10.0.0.1', '169.254.169.254', 'fd00::1', '::ffff:127.0.0.1',
    '224.0.0.1' (multicast; `is_global` alone calls it global) -> False.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id ('fe80::1%eth0')
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def decode_data_url(url: str, what: str, max_bytes: int) -> tuple[str, bytes]:
    """`data:<mime>;base64,<payload>` -> (mime, bytes), strictly.

    'data:image/png;base64,iVBORw0KGgo=' -> ('image/png', b'\\x89PNG\\r\\n\\x1a\\n').
    """
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:") or not header.endswith(";base64"):
        raise InputError(f"{what}: a data URL must look like 'data:<mime type>;base64,<base64 bytes>'")
    if len(payload) * 3 // 4 > max_bytes:
        raise InputError(f"{what}: {len(payload) * 3 // 4} decoded bytes exceed the limit of {max_bytes}")
    try:
        data = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"{what}: invalid base64 in the data URL ({e}); encode the file with standard base64") from e
    if not data:
        raise InputError(f"{what}: the data URL holds no bytes")
    return header[len("data:"):-len(";base64")], data


class MediaFetcher:
    """Loads the images and videos a request refers to, under a `MediaPolicy`.

    `resolve` and `transport` are injectable so tests can exercise remote fetching without any network.
    """

    def __init__(self, policy: MediaPolicy, *, resolve: Resolver = resolve_host,
                 transport: httpx.BaseTransport | None = None):
        self.policy = policy
        self._resolve = resolve
        self._transport = transport

    def image(self, url: str, what: str) -> Image.Image:
        """An `image_url` url -> RGB PIL image, decoded the processor's way (EXIF orientation applied); the pixel
        limit is checked from the header before any pixel is decoded."""
        if url.startswith("data:"):
            _, data = decode_data_url(url, what, self.policy.max_media_bytes)
        else:
            data = self._read_reference(url, what)
        return load_image(data, max_pixels=self.policy.max_image_pixels, name=what)

    def video(self, url: str, what: str) -> tuple[Path, bool]:
        """A `video_url` url -> (local path, is_temporary). The caller deletes temporary files."""
        if url.startswith("data:"):
            _, data = decode_data_url(url, what, self.policy.max_media_bytes)
            path, temporary = _write_temp(data), True
        elif _is_remote(url):
            path, temporary = _write_temp(self._fetch_remote(url, what)), True
        else:
            path, temporary = self._local_path(url, what), False
        try:
            check_video(path, what, self.policy.max_video_frames)
        except InputError:
            if temporary:
                path.unlink(missing_ok=True)
            raise
        return path, temporary

    def _read_reference(self, url: str, what: str) -> bytes:
        if _is_remote(url):
            return self._fetch_remote(url, what)
        path = self._local_path(url, what)
        size = path.stat().st_size
        if size > self.policy.max_media_bytes:
            raise InputError(f"{what}: file {path} is {size} bytes, over the limit of {self.policy.max_media_bytes}")
        return path.read_bytes()

    def _local_path(self, url: str, what: str) -> Path:
        """A plain path or file:// URL -> resolved path, refused unless inside `allowed_media_dir`."""
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme == "file":
            raw = urllib.parse.unquote(parsed.path)
        elif parsed.scheme == "":
            raw = url
        else:
            raise InputError(f"{what}: unsupported URL scheme {parsed.scheme!r}; use data:, http(s): or a local path")
        root = self.policy.allowed_media_dir
        if root is None:
            raise InputError(f"{what}: local paths are disabled; start the server with --allowed-media-dir DIR "
                             "or send the file as a data: URL")
        path, root = Path(raw).resolve(), root.resolve()
        if not path.is_relative_to(root):
            raise InputError(f"{what}: path {raw!r} is outside the allowed media folder {str(root)!r}")
        if not path.is_file():
            raise InputError(f"{what}: no file at {raw!r} inside the allowed media folder")
        return path

    def _fetch_remote(self, url: str, what: str) -> bytes:
        """GET an http(s) URL, re-checking every redirect hop; refuses non-public addresses before connecting."""
        if not self.policy.allow_remote_media:
            raise InputError(f"{what}: fetching http(s) media is disabled; send a data: URL or start the "
                             "server with --allow-remote-media")
        timeout = httpx.Timeout(self.policy.fetch_timeout_s)
        try:
            with httpx.Client(transport=self._transport, timeout=timeout, trust_env=False,
                              follow_redirects=False) as client:
                for _ in range(self.policy.max_redirects + 1):
                    target = httpx.URL(url)
                    response = client.send(self._pinned_request(client, target, what), stream=True)
                    try:
                        if not response.is_redirect:
                            return self._read_limited(response, what)
                        url = str(target.join(response.headers["location"]))
                    finally:
                        response.close()
        except httpx.InvalidURL as e:
            raise InputError(f"{what}: malformed URL ({e})") from e
        except httpx.HTTPError as e:
            raise InputError(f"{what}: could not fetch the media URL ({type(e).__name__}: {e})") from e
        raise InputError(f"{what}: more than {self.policy.max_redirects} redirects")

    def _pinned_request(self, client: httpx.Client, target: httpx.URL, what: str) -> httpx.Request:
        """A request to the first checked address of `target.host`, with the original Host header and TLS name."""
        if target.scheme not in ("http", "https") or not target.host:
            raise InputError(f"{what}: only http(s) URLs with a host can be fetched, got {str(target)!r}")
        port = target.port or (443 if target.scheme == "https" else 80)
        addresses = self._resolve(target.host, port)
        refused = [a for a in addresses if not is_public_address(a)]
        if refused or not addresses:
            raise InputError(f"{what}: host {target.host!r} resolves to non-public address(es) {refused}; "
                             "media can only be fetched from public internet hosts")
        return client.build_request("GET", target.copy_with(host=addresses[0]),
                                    headers={"Host": target.netloc.decode("ascii")},
                                    extensions={"sni_hostname": target.host})

    def _read_limited(self, response: httpx.Response, what: str) -> bytes:
        if response.status_code != 200:
            raise InputError(f"{what}: the media URL answered HTTP {response.status_code}")
        limit, chunks, total = self.policy.max_media_bytes, [], 0
        for chunk in response.iter_bytes():
            total += len(chunk)
            if total > limit:
                raise InputError(f"{what}: the download exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def check_video(path: Path, what: str, max_frames: int) -> None:
    """Refuse files that are not decodable videos or hold more than `max_frames` frames (header only)."""
    import av  # local: only video requests pay for the import

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{what}: the file has no video stream")
            stream = container.streams.video[0]
            frames = stream.frames
            if not frames and stream.duration and stream.time_base and stream.average_rate:
                frames = int(stream.duration * stream.time_base * stream.average_rate)
    except (av.error.FFmpegError, OSError) as e:
        raise InputError(f"{what}: not a readable video ({e}); send MP4, WebM, MKV or MOV") from e
    if frames > max_frames:
        raise InputError(f"{what}: the video has {frames} frames, over the limit of {max_frames}; trim it")


def _is_remote(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def _write_temp(data: bytes) -> Path:
    with tempfile.NamedTemporaryFile(prefix="minicpmv-media-", suffix=".video", delete=False) as f:
        f.write(data)
    return Path(f.name)
