"""Inputs for real models that PyPI wheels ship (nudenet's YOLOv8 detector, Silero VAD, g2p-id's
character BERT), made here from what installed packages carry, so no data set is downloaded:

- nudenet_images: letterboxed 320x320 crops, scales, flips and lighting changes of the one
  photograph with a face that an installed wheel ships (matplotlib's grace_hopper.jpg), so
  the detector's FACE_FEMALE box is in every image (a detection gate on images without its
  objects judges nothing).
- vad_chunks: 16 kHz streams of synthetic syllables (a glottal pulse train through three
  formant resonators, 70% voiced half-seconds, pauses with faint noise); each sample is a
  576-sample window (512 new + 64 of context, as silero-vad's own wrapper feeds it) with the
  recurrent state the FP32 model had reached at that point of its stream.
- g2p_tokens: Indonesian words with each `e` masked, as g2p-id tokenizes them for its BERT
  (int64 ids, padded to 32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
VAD_CONTEXT = 64
VAD_CHUNK = 512


def portrait() -> np.ndarray:
    """matplotlib's sample photograph (BGR, 600x512): the only face an installed wheel ships."""
    import cv2
    import matplotlib

    path = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    image = cv2.imread(str(path))
    if image is None:
        raise FileNotFoundError(f"cannot read {path} (matplotlib's sample data)")
    return image


def letterbox(image: np.ndarray, size: int = 320) -> np.ndarray:
    """nudenet's own preprocessing: pad to a square at the bottom/right, resize, RGB, [0, 1], NCHW."""
    import cv2

    side = max(image.shape[:2])
    padded = cv2.copyMakeBorder(image, 0, side - image.shape[0], 0, side - image.shape[1], cv2.BORDER_CONSTANT)
    return cv2.dnn.blobFromImage(padded, 1 / 255.0, (size, size), (0, 0, 0), swapRB=True, crop=False)[0]


def nudenet_images(n: int, seed: int = 0) -> np.ndarray:
    """[n, 3, 320, 320] float32: varied views of the portrait, the face kept inside each crop."""
    import cv2

    rng = np.random.default_rng(seed)
    base = portrait()
    h, w = base.shape[:2]
    out = np.empty((n, 3, 320, 320), np.float32)
    for k in range(n):
        scale = rng.uniform(0.55, 1.0)  # crop size relative to the photo; the face sits in its upper half
        ch, cw = int(h * scale), int(w * scale)
        y0 = int(rng.uniform(0, min(h - ch, h * 0.1) + 1))
        x0 = int(rng.uniform(max(0, w * 0.45 - cw / 2) * 0.5, max(0, w - cw) + 1))
        x0 = min(x0, w - cw)
        crop = base[y0 : y0 + ch, x0 : x0 + cw].astype(np.float32)
        crop = crop * rng.uniform(0.6, 1.3) + rng.uniform(-30, 30)  # contrast and brightness
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if rng.random() < 0.3:  # a wider frame: the portrait on a grey background
            pad = int(cw * rng.uniform(0.1, 0.6))
            crop = cv2.copyMakeBorder(crop, 0, 0, pad, pad, cv2.BORDER_CONSTANT, value=(rng.uniform(40, 200),) * 3)
        out[k] = letterbox(np.clip(crop, 0, 255).astype(np.uint8))
    return out


def syllable_stream(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Synthetic speech-like audio in [-0.6, 0.6] at 16 kHz (see the module docstring)."""
    from scipy.signal import lfilter

    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f0 = 120 * (1 + 0.2 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))) * rng.uniform(0.8, 1.6)
    source = (np.cumsum(f0) / SAMPLE_RATE) % 1.0 - 0.5  # sawtooth glottal pulses: all harmonics
    out = np.zeros(n)
    syllable = int(SAMPLE_RATE * 0.22)
    for start in range(0, n, syllable):
        seg = source[start : start + syllable]
        voiced = np.zeros(len(seg))
        for freq, bandwidth in (
            (rng.uniform(300, 900), 90),
            (rng.uniform(900, 2300), 120),
            (rng.uniform(2300, 3200), 180),
        ):
            r = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
            theta = 2 * np.pi * freq / SAMPLE_RATE
            voiced += lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], seg)
        out[start : start + syllable] = voiced * np.sin(np.pi * np.arange(len(seg)) / len(seg)) ** 0.5
    half = SAMPLE_RATE // 2
    talking = np.repeat(rng.random(n // half + 1) < 0.7, half)[:n]
    out = out * talking + rng.normal(0, 0.002, n)
    return (out / np.abs(out).max() * 0.6).astype(np.float32)


def vad_chunks(model: Path, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """{"input": [n, 576], "state": [2, n, 128], "sr": 0-d int64}: windows of 4-second streams with
    the state the FP32 model carried into each (states are what a stream really feeds it)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    sr = np.array(SAMPLE_RATE, np.int64)
    windows, states = [], []
    while len(windows) < n:
        audio = syllable_stream(rng, 4.0)
        state = np.zeros((2, 1, 128), np.float32)
        context = np.zeros(VAD_CONTEXT, np.float32)
        for start in range(0, len(audio) - VAD_CHUNK + 1, VAD_CHUNK):
            window = np.concatenate([context, audio[start : start + VAD_CHUNK]])
            windows.append(window)
            states.append(state[:, 0])
            _, state = session.run(None, {"input": window[None], "state": state, "sr": sr})
            context = audio[start + VAD_CHUNK - VAD_CONTEXT : start + VAD_CHUNK]
    order = rng.permutation(len(windows))[:n]
    return {
        "input": np.stack([windows[i] for i in order]).astype(np.float32),
        "state": np.stack([states[i] for i in order], axis=1).astype(np.float32),
        "sr": sr,
    }


WORDS = (
    "emas enak empat enam besar benar beras belajar bekerja sekolah sedang selamat semua sepeda teman "
    "tempat telepon televisi meja kecil kereta merah hijau perahu pesawat negeri negara peta resep kue "
    "kereta seperti sebelum sesudah bersama berapa bertemu membeli menjual melihat mendengar menulis "
    "membaca memasak remaja desa kebun ember enggak pedas gelas kelas sendok garpu lemari jendela "
    "pensil kertas cerita bebas ceria elang ekor es emosi energi kopi teh gerimis petir awan segar"
).split()


def g2p_tokens(token2id: dict[str, int], n: int, seed: int = 0, length: int = 32) -> np.ndarray:
    """[n, 32] int64: words with every `e` replaced by the mask token, padded with 0 (g2p-id's BERT input)."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((n, length), np.int64)
    for k in range(n):
        word = WORDS[int(rng.integers(len(WORDS)))]
        if rng.random() < 0.5:  # two words joined with '-' as g2p-id sees reduplications
            word = word + "-" + WORDS[int(rng.integers(len(WORDS)))]
        ids = [token2id["[mask]"] if c == "e" else token2id.get(c, token2id["[UNK]"]) for c in word][:length]
        rows[k, : len(ids)] = ids
    return rows
