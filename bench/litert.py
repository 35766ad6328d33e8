"""LiteRT variants against ONNX Runtime FP32: size, batch-1 latency (p50), agreement.

Models: the digits edge/cloud MLPs (trained here from scikit-learn's bundled set), the
PP-OCR orientation classifier, PP-OCRv4 text detector and recognizer that
rapidocr-onnxruntime ships, on synthetic text lines and pages (noise images for rec). Host figures, single thread, not device figures.

Usage: python bench/litert.py [--json] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _cases(work: Path) -> list[dict]:
    sys.path.insert(0, str(ROOT / "examples" / "digits"))
    sys.path.insert(0, str(ROOT / "examples" / "ocr"))
    import train
    from make_data import make_cls_data, make_det_data

    from tandem.model_compiler.model_io import load_model, prepare_model

    digits = work / "digits"
    train.train(digits)
    calib = np.load(digits / "calib.npz")
    test = np.load(digits / "test.npz")
    cases = [
        {
            "model": name,
            "path": digits / f"{name}.onnx",
            "input": "input",
            "calib": calib["x"],
            "x": test["x"],
            "y": test["y"],
        }
        for name in ("edge", "cloud")
    ]
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    src = Path(spec.origin).parent / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    prepared = work / "ocr_cls.onnx"
    prepare_model(load_model(src), prepared)
    cx, _ = make_cls_data(64, seed=1)
    vx, vy = make_cls_data(128, seed=2)
    cases.append({"model": "ocr_cls", "path": prepared, "input": "x", "calib": cx, "x": vx, "y": vy})
    det = work / "ocr_det.onnx"
    prepare_model(load_model(src.parent / "ch_PP-OCRv4_det_infer.onnx"), det)
    cases.append(
        {
            "model": "ocr_det",
            "path": det,
            "input": "x",
            "calib": make_det_data(16, seed=1),
            "x": make_det_data(8, seed=2),
            "y": None,
        }
    )
    rec = work / "ocr_rec.onnx"
    prepare_model(load_model(src.parent / "ch_PP-OCRv4_rec_infer.onnx"), rec)
    rng = np.random.default_rng(3)  # no synthetic rec data yet: agreement of per-step argmax on noise images
    cases.append(
        {
            "model": "ocr_rec",
            "path": rec,
            "input": "x",
            "calib": rng.uniform(-1, 1, (8, 3, 48, 320)).astype(np.float32),
            "x": rng.uniform(-1, 1, (8, 3, 48, 320)).astype(np.float32),
            "y": None,
        }
    )
    return cases


def _agreement(out: np.ndarray, ref: np.ndarray) -> float:
    """Top-1 agreement for classifiers; IoU of the text masks (p > 0.3) for the detector."""
    if out.ndim in (2, 3):  # classes last: per sample, or per time step (rec)
        return float((out.argmax(-1) == ref.argmax(-1)).mean())
    a, b = out > 0.3, ref > 0.3
    return float((a & b).sum() / max((a | b).sum(), 1))


def _accuracy(out: np.ndarray, y) -> float | None:
    return None if y is None else round(float((out.argmax(1) == y).mean()), 4)


def run(threads: int) -> dict:
    from tandem.hardware_profiles import get_profile
    from tandem.hardware_profiles.runtimes import load_session
    from tandem.model_compiler.errors import VariantSkipped
    from tandem.model_compiler.measure import measure_latency
    from tandem.model_compiler.variants import BuildContext, get_builder

    builder = get_builder("litert")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for case in _cases(work):
            feeds_all = {case["input"]: case["x"]}
            one = {case["input"]: case["x"][:1]}
            runs = 20 if case["model"] in ("ocr_det", "ocr_rec") else 200
            ref_session = load_session("onnxruntime", case["path"], threads=threads)
            ref = ref_session.run(feeds_all)[0]
            base = {
                "model": case["model"],
                "variant": "onnxruntime-fp32 (baseline)",
                "bytes": case["path"].stat().st_size,
                "p50_ms": round(measure_latency(ref_session, one, runs=runs).p50_ms, 4),
                "accuracy": _accuracy(ref, case["y"]),
            }
            rows.append(base)
            ctx = BuildContext(
                model_path=case["path"], calib={case["input"]: case["calib"]}, out_dir=work / case["model"]
            )
            for recipe in builder.recipes(get_profile("npu-litert")):
                try:
                    built = builder.build(recipe, ctx)
                except VariantSkipped as exc:
                    rows.append({"model": case["model"], "variant": recipe.id, "skipped": exc.reason})
                    continue
                session = load_session("litert", built.files[0], threads=threads, **built.session_options)
                out = session.run(feeds_all)[0]
                p50 = measure_latency(session, one, runs=runs).p50_ms
                rows.append(
                    {
                        "model": case["model"],
                        "variant": recipe.id,
                        "bytes": built.files[0].stat().st_size,
                        "size_ratio": round(built.files[0].stat().st_size / base["bytes"], 3),
                        "p50_ms": round(p50, 4),
                        "speedup_vs_ort": round(base["p50_ms"] / p50, 2),
                        "agreement": round(_agreement(out, ref), 4),
                        "max_abs_err": float(np.abs(out - ref).max()),
                        "accuracy": _accuracy(out, case["y"]),
                    }
                )
    return {
        "threads": threads,
        "rows": rows,
        "samples": "digits test split (270); ocr_cls 128 synthetic lines; ocr_det 8 synthetic 320x320 pages; "
        "ocr_rec 8 uniform-noise 48x320 images",
        "agreement": "top-1 vs ONNX Runtime FP32 (classifiers; per time step for rec); "
        "IoU of p > 0.3 text masks (detector)",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print JSON (default: a table)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    result = run(args.threads)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for r in result["rows"]:
            if "skipped" in r:
                print(f"{r['model']:8} {r['variant']:28} skipped: {r['skipped']}")
                continue
            acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
            print(
                f"{r['model']:8} {r['variant']:28} {r['bytes']:>9} B  p50 {r['p50_ms']:8.4f} ms  "
                f"agree {r.get('agreement', 1.0):.4f}  err {r.get('max_abs_err', 0.0):.2e}  acc {acc}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
