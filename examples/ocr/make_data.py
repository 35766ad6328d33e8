"""Deterministic synthetic data for the rapidocr models (no downloads).

Orientation classifier (ch_ppocr_mobile_v2.0_cls): rendered text lines, resized to
height 48 and padded to 3x48x192 the way PP-OCR's cls preprocessing does
((x/255-0.5)/0.5, NCHW float32); label 0 = upright, 1 = rotated 180 degrees.
Detection (PP-OCRv4 det): pages with a few text lines, normalized with the ImageNet
mean/std like PP-OCR det (NCHW float32, default 320x320).

Usage: python examples/ocr/make_data.py --out DIR [--n-calib 64 --n-val 128]
  writes DIR/cls_calib.npz, DIR/cls_val.npz (keys x, y) and DIR/det_calib.npz,
  DIR/det_val.npz (key x).
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from pathlib import Path

import numpy as np

CLS_SHAPE = (3, 48, 192)
_ALPHABET = string.ascii_letters + string.digits
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable FreeType font


def _random_text(rng: np.random.Generator, low: int, high: int) -> str:
    n = int(rng.integers(low, high + 1))
    return "".join(rng.choice(list(_ALPHABET), size=n))


def _render_line(rng: np.random.Generator):
    """One tight crop of a dark-on-light (or light-on-dark) text line, RGB."""
    from PIL import Image, ImageDraw

    text = _random_text(rng, 4, 14)
    font = _font(int(rng.integers(22, 40)))
    fg = tuple(int(v) for v in rng.integers(0, 90, size=3))
    bg = tuple(int(v) for v in rng.integers(170, 256, size=3))
    if rng.random() < 0.2:
        fg, bg = bg, fg
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
    pad = int(rng.integers(2, 8))
    img = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), bg)
    ImageDraw.Draw(img).text((pad - left, pad - top), text, font=font, fill=fg)
    return img


def _cls_normalize(img) -> np.ndarray:
    """PP-OCR cls preprocessing: keep aspect, height 48, width <= 192, pad right with 0."""
    from PIL import Image

    c, h, w_max = CLS_SHAPE
    ratio = img.width / img.height
    w = min(w_max, max(1, int(np.ceil(h * ratio))))
    arr = np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.float32)
    arr = (arr.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    out = np.zeros(CLS_SHAPE, dtype=np.float32)
    out[:, :, :w] = arr
    return out


def make_cls_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n text lines, half of them rotated 180 degrees: x (n,3,48,192) float32, y (n,) int64."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, *CLS_SHAPE), dtype=np.float32)
    y = (np.arange(n) % 2).astype(np.int64)
    rng.shuffle(y)
    for i in range(n):
        img = _render_line(rng)
        if y[i] == 1:
            img = img.rotate(180)
        x[i] = _cls_normalize(img)
    return x, y


REC_HEIGHT = 48


def make_rec_data(n: int, seed: int, width: int = 320) -> np.ndarray:
    """n text lines for PP-OCRv4 rec: height 48, aspect kept, width <= `width`, padded right:
    x (n,3,48,width) float32, normalized (x/255-0.5)/0.5 like PP-OCR rec."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    x = np.zeros((n, 3, REC_HEIGHT, width), dtype=np.float32)
    for i in range(n):
        img = _render_line(rng)
        w = min(width, max(1, int(np.ceil(REC_HEIGHT * img.width / img.height))))
        arr = np.asarray(img.resize((w, REC_HEIGHT), Image.BILINEAR), dtype=np.float32)
        x[i, :, :, :w] = (arr.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return x


def make_det_data(n: int, seed: int, size: int = 320) -> np.ndarray:
    """n pages of size x size with 2-6 text lines each: x (n,3,size,size) float32."""
    from PIL import Image, ImageDraw

    if size % 32:
        raise ValueError(f"size must be a multiple of 32 for PP-OCR detection, got {size}")
    rng = np.random.default_rng(seed)
    x = np.empty((n, 3, size, size), dtype=np.float32)
    for i in range(n):
        bg = tuple(int(v) for v in rng.integers(180, 256, size=3))
        page = Image.new("RGB", (size, size), bg)
        draw = ImageDraw.Draw(page)
        for _ in range(int(rng.integers(2, 7))):
            font = _font(int(rng.integers(14, 36)))
            text = _random_text(rng, 3, 16)
            fg = tuple(int(v) for v in rng.integers(0, 100, size=3))
            pos = (int(rng.integers(0, size // 2)), int(rng.integers(0, size - 40)))
            draw.text(pos, text, font=font, fill=fg)
        arr = np.asarray(page, dtype=np.float32).transpose(2, 0, 1) / 255.0
        x[i] = (arr - _IMAGENET_MEAN) / _IMAGENET_STD
    return x


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/ocr"), help="output folder (default: out/ocr)")
    parser.add_argument("--n-calib", type=int, default=64, help="calibration samples per model")
    parser.add_argument("--n-val", type=int, default=128, help="validation samples per model")
    parser.add_argument("--det-size", type=int, default=320, help="detection page size (multiple of 32)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    x, y = make_cls_data(args.n_calib, seed=1)
    np.savez(args.out / "cls_calib.npz", x=x, y=y)
    x, y = make_cls_data(args.n_val, seed=2)
    np.savez(args.out / "cls_val.npz", x=x, y=y)
    np.savez(args.out / "det_calib.npz", x=make_det_data(args.n_calib, seed=3, size=args.det_size))
    np.savez(args.out / "det_val.npz", x=make_det_data(args.n_val, seed=4, size=args.det_size))
    print(json.dumps({"out": str(args.out), "n_calib": args.n_calib, "n_val": args.n_val, "det_size": args.det_size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
