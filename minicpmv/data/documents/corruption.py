"""Seeded corruption of text regions at three levels (training spec §3.1-3.2, "dynamic visual corruption").

    low       "augmented OCR": the text stays legible (noise, blur, JPEG, contrast, resampling)
    moderate  "integrated inference": glyphs become individually ambiguous (heavy noise, strong blur,
              down-up sampling, pixel dropout, partial occlusion, warping)
    high      "contextual inference": the region is masked with the estimated background colour

Every function here is pure: the output depends only on its arguments and the seed, and only the
pixels inside the (padded) region box change. A level applies `n_ops` operators drawn from its
`ops` table, each with a parameter drawn uniformly from its range, in the fixed order of OPERATORS
(photometric changes first, the camera-like JPEG last).

Default ranges are the training spec's §3.2 suggestions (the paper gives none). Sizes in pixels
(blur radius, resampling factor, warp amplitude) are for text lines `reference_line_px` = 20 px high
(10 pt body text at 150 dpi) and scale with each region's line height, so a level means the same
legibility on a footnote and on a title and at any DPI.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageFilter

from minicpmv.errors import InputError

LEVELS = ("low", "moderate", "high")
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Context:
    """What an operator may know about its region besides the pixels."""

    background: np.ndarray  # float32[3]: the estimated paper colour around the region
    line_height: float  # pixels per text line of the region
    scale: float  # line_height / reference_line_px (1 when sizes do not scale with the text)


def _noise(crop: np.ndarray, rng: np.random.Generator, sigma: float, ctx: Context) -> np.ndarray:
    """Grey (luminance) Gaussian noise, as a scanner or camera sensor adds."""
    return crop + rng.normal(0.0, sigma, (*crop.shape[:2], 1))


def _blur(crop: np.ndarray, rng: np.random.Generator, radius: float, ctx: Context) -> np.ndarray:
    return _via_pil(crop, lambda im: im.filter(ImageFilter.GaussianBlur(radius * ctx.scale)))


def _jpeg(crop: np.ndarray, rng: np.random.Generator, quality: float, ctx: Context) -> np.ndarray:
    def encode_decode(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=int(round(quality)))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    return _via_pil(crop, encode_decode)


def _contrast(crop: np.ndarray, rng: np.random.Generator, factor: float, ctx: Context) -> np.ndarray:
    return (crop - ctx.background) * factor + ctx.background


def _brightness(crop: np.ndarray, rng: np.random.Generator, shift: float, ctx: Context) -> np.ndarray:
    return crop + shift * 255.0


def _resample(crop: np.ndarray, rng: np.random.Generator, factor: float, ctx: Context) -> np.ndarray:
    """Down-sample by `factor` (scaled), then back up: the detail a low-resolution scan would keep."""
    h, w = crop.shape[:2]
    f = max(1.0, factor * ctx.scale)
    small = (max(1, round(w / f)), max(1, round(h / f)))
    return _via_pil(crop, lambda im: im.resize(small, Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BILINEAR))


def _salt_pepper(crop: np.ndarray, rng: np.random.Generator, fraction: float, ctx: Context) -> np.ndarray:
    hit = rng.random(crop.shape[:2]) < fraction  # [h, w]
    out = crop.copy()
    out[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0.0, 255.0)[:, None]
    return out


def _dropout(crop: np.ndarray, rng: np.random.Generator, fraction: float, ctx: Context) -> np.ndarray:
    out = crop.copy()
    out[rng.random(crop.shape[:2]) < fraction] = ctx.background
    return out


def _occlusion(crop: np.ndarray, rng: np.random.Generator, fraction: float, ctx: Context) -> np.ndarray:
    """In every text line of the region, a horizontal band `fraction` of the line high is painted over."""
    out = crop.copy()
    line, band = max(1.0, ctx.line_height), max(1, round(fraction * ctx.line_height))
    top = 0.0
    while top < crop.shape[0]:
        start = int(top + rng.uniform(0, max(0.0, line - band)))
        out[start : start + band] = ctx.background
        top += line
    return out


def _warp(crop: np.ndarray, rng: np.random.Generator, amplitude: float, ctx: Context) -> np.ndarray:
    """Each pixel moves by a smooth random offset of up to `amplitude` (scaled) pixels (elastic warp)."""
    h, w = crop.shape[:2]
    cell = max(2.0, ctx.line_height / 2)
    grid = (max(2, round(w / cell) + 1), max(2, round(h / cell) + 1))
    a = amplitude * ctx.scale
    dx, dy = (np.asarray(Image.fromarray(rng.uniform(-a, a, grid[::-1]).astype(np.float32), mode="F")
                         .resize((w, h), Image.Resampling.BILINEAR)) for _ in range(2))  # [h, w] each
    ys = np.clip(np.rint(np.arange(h)[:, None] + dy), 0, h - 1).astype(np.intp)
    xs = np.clip(np.rint(np.arange(w)[None, :] + dx), 0, w - 1).astype(np.intp)
    return crop[ys, xs]


def _mask(crop: np.ndarray, rng: np.random.Generator, sigma: float, ctx: Context) -> np.ndarray:
    """The background colour everywhere, plus faint noise so the mask is not a perfectly flat patch."""
    return np.broadcast_to(ctx.background, crop.shape) + rng.normal(0.0, sigma, (*crop.shape[:2], 1))


def _via_pil(crop: np.ndarray, fn: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    image = Image.fromarray(np.clip(np.rint(crop), 0, 255).astype(np.uint8))
    return np.asarray(fn(image), dtype=np.float32)


# name -> operator; the order is the order operators are applied in
OPERATORS: dict[str, Callable[[np.ndarray, np.random.Generator, float, Context], np.ndarray]] = {
    "contrast": _contrast, "brightness": _brightness, "blur": _blur, "resample": _resample, "warp": _warp,
    "occlusion": _occlusion, "dropout": _dropout, "mask": _mask, "noise": _noise, "salt_pepper": _salt_pepper,
    "jpeg": _jpeg,
}


@dataclass(frozen=True)
class LevelConfig:
    """Operators of one level: `ops` maps an OPERATORS name to its (min, max) parameter range, and
    n_ops = (least, most) operators applied per region, drawn without repetition."""

    ops: Mapping[str, tuple[float, float]]
    n_ops: tuple[int, int]

    def __post_init__(self):
        unknown = sorted(set(self.ops) - set(OPERATORS))
        if unknown:
            raise InputError(f"unknown corruption operators {unknown}; known: {sorted(OPERATORS)}")
        for name, (lo, hi) in self.ops.items():
            if not lo <= hi:
                raise InputError(f"corruption operator {name!r}: range ({lo}, {hi}) must have min <= max")
        lo, hi = self.n_ops
        if not 1 <= lo <= hi <= len(self.ops):
            raise InputError(f"n_ops {self.n_ops} must satisfy 1 <= min <= max <= {len(self.ops)} operators")


def _low() -> LevelConfig:
    # Spec §3.2 "low": mild enough that the text stays readable (the NCC test checks it); one or two operators.
    # Resampling up to x2 followed by 3% salt-and-pepper took a DejaVu line to NCC 0.47: the upper ends are
    # x1.8 and 2%, which keep every line of 3 pages x 22 system fonts x 6 seeds at NCC >= 0.59.
    return LevelConfig(ops={"noise": (5.0, 25.0), "blur": (0.3, 1.2), "jpeg": (30.0, 90.0), "contrast": (0.8, 1.2),
                            "brightness": (-0.15, 0.15), "resample": (1.3, 1.8), "salt_pepper": (0.005, 0.02)},
                       n_ops=(1, 2))


def _moderate() -> LevelConfig:
    # Spec §3.2 "moderate" operators, two or three combined. The upper ends are below the spec's
    # (noise 120, blur 4, down-up x8): two of those together erased every glyph (clean-crop NCC as low
    # as the mask's), leaving no middle level between reading and guessing.
    return LevelConfig(ops={"noise": (40.0, 90.0), "blur": (1.5, 3.0), "resample": (3.0, 6.0), "dropout": (0.3, 0.6),
                            "occlusion": (0.3, 0.5), "warp": (1.0, 2.5)},
                       n_ops=(2, 3))


def _high() -> LevelConfig:
    # Spec §3.2 "high": no glyph evidence at all; faint noise (sigma <= 3 of 255) only hides the flat patch.
    return LevelConfig(ops={"mask": (0.0, 3.0)}, n_ops=(1, 1))


@dataclass(frozen=True)
class CorruptionConfig:
    low: LevelConfig = field(default_factory=_low)
    moderate: LevelConfig = field(default_factory=_moderate)
    high: LevelConfig = field(default_factory=_high)
    pad: int = 3  # pixels added around each box (spec: 2-4), so anti-aliased glyph edges are covered
    reference_line_px: float = 20.0  # line height the pixel-sized ranges are written for; 0 = never scale

    def level(self, name: str) -> LevelConfig:
        if name not in LEVELS:
            raise InputError(f"unknown corruption level {name!r}; use one of {LEVELS}")
        return getattr(self, name)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CorruptionConfig":
        """Defaults overridden by e.g. {"moderate": {"ops": {"blur": [2, 3]}, "n_ops": [1, 1]}, "pad": 4};
        a level's "ops" replaces that level's whole table (so operators can be removed)."""
        unknown = sorted(set(d) - {*LEVELS, "pad", "reference_line_px"})
        if unknown:
            raise InputError(f"corruption config: unknown keys {unknown}; known: {[*LEVELS, 'pad', 'reference_line_px']}")
        config = cls(**{k: d[k] for k in ("pad", "reference_line_px") if k in d})
        for name in LEVELS:
            if name in d:
                base = config.level(name)
                ops = {k: tuple(v) for k, v in d[name].get("ops", base.ops).items()}
                config = replace(config, **{name: LevelConfig(ops=ops, n_ops=tuple(d[name].get("n_ops", base.n_ops)))})
        return config

    def to_dict(self) -> dict[str, Any]:
        levels = {n: {"ops": {k: list(v) for k, v in self.level(n).ops.items()}, "n_ops": list(self.level(n).n_ops)}
                  for n in LEVELS}
        return {**levels, "pad": self.pad, "reference_line_px": self.reference_line_px}


@dataclass(frozen=True)
class Target:
    box: Box  # region box in page pixels, before padding
    level: str  # one of LEVELS
    line_height: float  # pixels per text line of the region


def padded_box(box: Box, pad: int, width: int, height: int) -> Box:
    """The box grown by `pad` pixels on every side, clipped to the image. Example: (5, 5, 20, 9), pad 3,
    image 18 x 100 -> (2, 2, 18, 12)."""
    x1, y1, x2, y2 = box
    return max(0, x1 - pad), max(0, y1 - pad), min(width, x2 + pad), min(height, y2 + pad)


def border_background(crop: np.ndarray) -> np.ndarray:
    """Per-channel median of the crop's one-pixel border ring: the paper colour around the text.
    Example: a white crop with black text not touching its edges -> [255, 255, 255]."""
    ring = np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]])  # [2w + 2h, 3]
    return np.median(ring, axis=0).astype(np.float32)


def corrupt_regions(image: np.ndarray, targets: Sequence[Target], seed: int | Sequence[int],
                    config: CorruptionConfig = CorruptionConfig()) -> tuple[np.ndarray, list[list[tuple[str, float]]]]:
    """A copy of `image` uint8[H, W, 3] with every target's padded box corrupted at its level, and the
    (operator, parameter) pairs applied to each target.

    Target i draws from its own generator seeded by (seed, i), so it does not depend on the other
    targets. Pixels outside the padded boxes are never touched; overlapping targets are applied in order.
    Example: targets [Target((10, 10, 90, 30), "high", 20)] -> pixels (7..92, 7..32) become the
    border's median colour +- faint noise, everything else is byte-identical.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"corrupt_regions needs a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    out = image.copy()
    h, w = image.shape[:2]
    applied = []
    for i, t in enumerate(targets):
        x1, y1, x2, y2 = padded_box(t.box, config.pad, w, h)
        if x2 <= x1 or y2 <= y1:
            raise InputError(f"target {i}: box {t.box} is empty or outside the {w}x{h} image")
        crop = out[y1:y2, x1:x2].astype(np.float32)  # [h', w', 3]
        new, ops = corrupt_crop(crop, t.level, t.line_height, np.random.default_rng([*_seq(seed), i]), config)
        out[y1:y2, x1:x2] = np.clip(np.rint(new), 0, 255).astype(np.uint8)
        applied.append(ops)
    return out, applied


def corrupt_crop(crop: np.ndarray, level: str, line_height: float, rng: np.random.Generator,
                 config: CorruptionConfig = CorruptionConfig()) -> tuple[np.ndarray, list[tuple[str, float]]]:
    """One region's pixels float32[h, w, 3] at `level` -> (new pixels, applied (operator, parameter) pairs)."""
    spec = config.level(level)
    scale = line_height / config.reference_line_px if config.reference_line_px > 0 else 1.0
    ctx = Context(background=border_background(crop), line_height=float(line_height), scale=scale)
    names = list(spec.ops)
    n = int(rng.integers(spec.n_ops[0], spec.n_ops[1] + 1))
    chosen = sorted(rng.choice(len(names), size=n, replace=False), key=lambda k: list(OPERATORS).index(names[k]))
    applied = []
    for k in chosen:
        lo, hi = spec.ops[names[k]]
        param = float(rng.uniform(lo, hi))
        crop = OPERATORS[names[k]](crop, rng, param, ctx)
        applied.append((names[k], round(param, 4)))
    return crop, applied


def _seq(seed: int | Sequence[int]) -> list[int]:
    return [int(seed)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
