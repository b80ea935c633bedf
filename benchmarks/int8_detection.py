"""INT8 for a trained detector: mAP (Ultralytics val, rect=False, batch 1) and batch-1 latency (medians of
interleaved rounds, one thread each) of fp32 ONNX, reparam's INT8 ONNX with the K most sensitive convs kept in
float, and OpenVINO fp32 / INT8 (Ultralytics + NNCF). Writes int8.md and int8.csv to --out. Usage:
    python benchmarks/int8_detection.py runs/.../best.pt --out runs/int8 [--ks 0 1 2 4] [--val-overlap 256]
The validation set is the bundled tree-crown val photos tiled with --val-overlap px of overlap (more tiles of
the same two photos than the default 24: position noise shrinks, photo variety does not grow).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
from pathlib import Path

from reparam.app.export import export_model
from reparam.app.int8 import measure_forms
from reparam.bench.report import markdown_table, write_csv
from reparam.data.deepforest import prepare_deepforest
from reparam.io import atomic_write_text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2, 4])
    p.add_argument("--val-overlap", type=int, default=256)
    p.add_argument("--rounds", type=int, default=50)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    common = {"imgsz": a.imgsz, "overwrite": True, "progress": print}
    fp32 = a.out / "m.onnx"
    first = export_model(a.model, out=fp32, int8=True, int8_skip="auto:0", **common)
    assert first.int8 is not None and first.int8.csv is not None
    print("\n".join(first.int8.lines()))
    ranking = [r["node"] for r in csv.DictReader(first.int8.csv.open())]
    forms = {"fp32 ONNX (onnxruntime)": fp32}
    for k in a.ks:
        path = first.int8.path
        if k:
            skip = ",".join(ranking[:k])
            r = export_model(
                a.model, out=a.out / f"k{k}" / "m.onnx", int8=True, int8_skip=skip, check=False, **common
            )
            assert r.int8 is not None
            path = r.int8.path
        forms[f"INT8 ONNX, K={k} in float"] = path
    if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"):
        forms["OpenVINO fp32"] = export_model(
            a.model, "openvino", out=a.out / "m_openvino_model", **common
        ).path
        int8 = export_model(a.model, "openvino", out=a.out / "m_int8_openvino_model", int8=True, **common)
        forms["OpenVINO INT8 (Ultralytics, NNCF)"] = int8.path
    data = prepare_deepforest(tile=a.imgsz, overlap=a.val_overlap)
    tiles = data.splits["val"].images
    print(f"validation: {tiles} tiles (overlap {a.val_overlap}) of the 2 val photos")
    rows = measure_forms(forms, data.yaml, a.imgsz, a.rounds, print)
    table = markdown_table(rows)
    print(table)
    write_csv(a.out / "int8.csv", rows, overwrite=True)
    notes = [
        f"model {a.model}, imgsz {a.imgsz}, {tiles} val tiles, latency batch 1, one thread, "
        f"median of {a.rounds} interleaved rounds",
        "\n".join(first.int8.lines()),
    ]
    atomic_write_text("\n\n".join([table, *notes]) + "\n", a.out / "int8.md", overwrite=True)


if __name__ == "__main__":
    main()
