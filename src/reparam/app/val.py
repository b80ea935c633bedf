"""``reparam val``: Ultralytics' validation of any form of a detector (.pt, model YAML, .onnx file or an
``_openvino_model`` folder) at one setting for all (``rect=False``, batch 1), so fp32, INT8 and OpenVINO
forms compare on the same inputs. Ultralytics itself validates a ``.pt`` with ``rect=True`` (rectangular
batches) but exported forms with square letterboxes, which alone moves mAP by a few thousandths."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ultralytics import YOLO

from reparam.app.data import resolve_data
from reparam.app.models import load, stride_imgsz
from reparam.checks import strict_bools
from reparam.text import Progress
from reparam.yolo.safety import ultralytics_safe_load

__all__ = ["ValResult", "open_form", "validate"]


@dataclass
class ValResult:
    """mAP of one form on one data set."""

    model: str
    data: str
    imgsz: int
    map50: float
    map50_95: float
    ms_per_image: float

    def summary(self) -> str:
        """One line per fact."""
        return (
            f"model {self.model} on {self.data} (imgsz={self.imgsz}, rect=False, batch 1)\n"
            f"mAP50 {self.map50:.4f}  mAP50-95 {self.map50_95:.4f}  "
            f"({self.ms_per_image:.1f} ms/image inference)"
        )


@strict_bools
def open_form(model: str | Path, *, trust: bool = False) -> YOLO:
    """A YOLO object for any form: ``.pt``/YAML read as :func:`load` reads them, ``.onnx`` files and
    ``_openvino_model`` folders through Ultralytics' AutoBackend (no code runs from them)."""
    path = Path(str(model))
    if path.suffix.lower() == ".onnx" or path.name.endswith("_openvino_model"):
        if not path.exists():
            raise FileNotFoundError(f"model={model} does not exist")
        if path.is_dir() and not any(path.glob("*.xml")):
            raise ValueError(f"model={model} holds no OpenVINO model (.xml)")
        return YOLO(str(path), task="detect")
    return load(model, trust=trust)


@strict_bools
def validate(
    model: str | Path,
    data: str | Path | None = None,
    imgsz: int = 320,
    device: str = "cpu",
    *,
    trust: bool = False,
    progress: Progress | None = None,
) -> ValResult:
    """mAP50 and mAP50-95 of ``model`` on ``data``'s val split (default: the bundled tree-crown set) with
    Ultralytics' validator, ``rect=False`` and batch 1 for every form; its run folder is temporary."""
    imgsz = stride_imgsz(imgsz)
    net = open_form(model, trust=trust)
    data_yaml, desc = resolve_data(data, progress=progress)
    with tempfile.TemporaryDirectory(prefix="reparam-val-") as tmp, ultralytics_safe_load(trust):
        metrics = net.val(
            data=str(data_yaml), imgsz=imgsz, batch=1, rect=False, device=device, plots=False, verbose=False,
            project=tmp, name="val", exist_ok=True,
        )  # fmt: skip
    box = metrics.box
    return ValResult(
        str(model), desc, imgsz, float(box.map50), float(box.map), float(metrics.speed["inference"])
    )
