"""A small hostile file costs little: each file is built here, given to ``reparam info`` in a child process,
and the child's extra peak memory (ru_maxrss after the imports vs at the end) and time are measured. Also
the answers to files that are not hostile but unusual: a legacy torch.save file loads, a non-model .pt says
what it holds, a 5,000-character path is one line."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import numpy as np
import pytest
import torch

pytest.importorskip("ultralytics")

from ultralytics import YOLO

import reparam.yolo  # noqa: F401  (registers the blocks)
from reparam.cli import main
from reparam.yolo.safety import load_ultralytics_checkpoint

MAX_EXTRA_MB = 500
Capture = pytest.CaptureFixture[str]
MAX_SECONDS = 10.0

CHILD = """
import json, os, resource, sys, time
os.environ["YOLO_OFFLINE"] = "1"
import reparam.yolo
from reparam.cli import main
status = open("/proc/self/status").read()
vm = int(status.split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 3 * 2**30, resource.RLIM_INFINITY))  # never the whole machine
base, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
try:
    rc = main(sys.argv[1:])
except MemoryError:
    rc = "MemoryError"
seconds = time.perf_counter() - start
extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps({"rc": rc, "seconds": seconds, "extra_mb": extra}))
"""


def _measure(argv: list[str], cwd: Path) -> tuple[dict, str]:
    """Run ``reparam <argv>`` in a child; its result (rc, seconds, extra_mb) and its stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip(), done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def _refused_cheaply(argv: list[str], cwd: Path, rule: str) -> str:
    result, err = _measure(argv, cwd)
    assert result["rc"] == 2, (result, err[-2000:])
    assert "Traceback" not in err and err.count("\n") == 1 and len(err) < 600, err[:2000]
    assert rule in err, err
    assert result["extra_mb"] < MAX_EXTRA_MB and result["seconds"] < MAX_SECONDS, result
    return err


# ----------------------------------------------------------------------------------- the hostile files
class _NumpyBomb:
    """Pickles as numpy's scalar rebuild of a 2 GB void dtype with no data: only allow-listed globals."""

    def __reduce__(self) -> tuple:
        return (np.float64(0).__reduce__()[0], (np.dtype("V2000000000"),))


class _NoDtypeState(pickle.Pickler):
    """Pickles a numpy dtype as the bare ``numpy.dtype(spec)`` call, without the BUILD of its state."""

    def reducer_override(self, obj: object) -> object:
        return (np.dtype, (obj.str, False, True)) if isinstance(obj, np.dtype) else NotImplemented


def test_numpy_void_dtype_bomb(tmp_path: Path) -> None:
    path = tmp_path / "bomb.pt"
    module = type(pickle)("no_dtype_state")
    module.Pickler = _NoDtypeState  # type: ignore[attr-defined]
    torch.save({"model": _NumpyBomb()}, path, pickle_module=module)
    assert path.stat().st_size < 2_000
    _refused_cheaply(["info", str(path)], tmp_path, "asks numpy for dtype '|V2000000000'")


def test_pickle_of_300k_nested_marks_is_refused_in_seconds(tmp_path: Path) -> None:
    """300k MARKs then 300k (NONE, OBJ) pairs, deflated in a zip: the scan keeps marks as a stack of stacks
    (O(1) per opcode; main's scanner was quadratic: minutes) and refuses nesting beyond 10,000 marks."""
    n = 300_000
    path = tmp_path / "marks.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + b"(" * n + b"No" * n + b".")
        z.writestr("archive/version", b"3\n")
    assert path.stat().st_size < 3_000
    _refused_cheaply(["info", str(path)], tmp_path, "pickle nests more than 10,000 marks")


def test_checkpoint_with_two_million_classes(tmp_path: Path) -> None:
    """A real zoo checkpoint whose model.yaml says nc=2,000,000 (info builds the plain model from it)."""
    path = tmp_path / "nc.pt"
    YOLO("yolov8n-orepa.yaml").save(path)
    ckpt = load_ultralytics_checkpoint(path)
    ckpt["model"].yaml["nc"] = 2_000_000
    torch.save(ckpt, path)
    _refused_cheaply(["info", str(path)], tmp_path, "model.yaml: nc=2000000 must be an integer in [1, 25000]")


BILLION_LAUGHS = """\
a: &a [x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
nc: 2
backbone: [[-1, 1, Conv, [8, 3, 2]]]
head: [[-1, 1, Conv, *h]]
"""


def test_yaml_billion_laughs(tmp_path: Path) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(BILLION_LAUGHS)
    assert path.stat().st_size < 500
    _refused_cheaply(["info", str(path)], tmp_path, "expands to more than 100,000 nodes")


def test_an_error_quoting_a_huge_row_is_one_short_line(tmp_path: Path) -> None:
    path = tmp_path / "long.yaml"
    long = "x" * 200_000
    head = f"[[-1, 1, Conv, ['{long}']], [-1, 1, Detect, [nc]]]"
    path.write_text(f"nc: 2\nbackbone: [[-1, 1, Conv, [8, 3, 2]]]\nhead: {head}\n")
    err = _refused_cheaply(["info", str(path)], tmp_path, "model YAML row 1")
    assert err.rstrip().endswith("...")


def test_a_model_too_big_for_a_file_is_refused_before_it_is_built(tmp_path: Path) -> None:
    """Every field within its bound, the product is not: 60 rows of 8192-channel 7x7 convs."""
    rows = "\n".join("  - [-1, 1, Conv, [8192, 7, 1]]" for _ in range(60))
    path = tmp_path / "big.yaml"
    path.write_text(f"nc: 2\nbackbone:\n{rows}\nhead:\n  - [[-1], 1, Detect, [nc]]\n")
    _refused_cheaply(["info", str(path)], tmp_path, "parameters (at most 200,000,000 from a file)")


# --------------------------------------------------------------------------- unusual but honest files
@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("m") / "model.pt"
    YOLO("yolov8n-orepa.yaml").save(path)
    return path


def test_a_legacy_torch_save_file_loads(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    legacy = tmp_path / "legacy.pt"
    torch.save(load_ultralytics_checkpoint(model_file), legacy, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(legacy)
    assert main(["info", str(legacy), "imgsz=64"]) == 0
    assert "blocks: OREPA x5" in capsys.readouterr().out


def test_a_non_model_pt_says_what_it_holds(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sd = tmp_path / "sd.pt"
    torch.save(load_ultralytics_checkpoint(model_file)["model"].state_dict(), sd)
    assert main(["info", str(sd)]) == 2
    err = capsys.readouterr().err
    assert "holds a state dict of 405 tensors ('model.0.gen.weight_origin'," in err, err
    assert "not an Ultralytics model checkpoint" in err and "official Ultralytics model" not in err
    seq = tmp_path / "seq.pt"
    torch.save({"model": torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))}, seq)
    assert main(["verify", str(seq)]) == 2
    err = capsys.readouterr().err
    assert "holds a Sequential under 'model', not an Ultralytics model" in err, err


LONG_NAME, LONG_PATH = "b" * 300, "a/" * 2_600 + "m"


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["info", "{}.pt"], "model"),
        (["verify", "{}.pt"], "model"),
        (["deploy", "{}.pt"], "ckpt"),
        (["deploy", "x.pt", "out={}.pt"], "out"),
        (["export", "{}.pt"], "model"),
        (["export", "yolov8n.yaml", "out={}.onnx"], "out"),
        (["export", "yolov8n.yaml", "int8=True", "calib={}"], "calib"),
        (["adopt", "{}.pt", "to=orepa"], "model"),
        (["val", "yolov8n.yaml", "data={}.yaml"], "data"),
        (["train", "yolov8n.yaml", "project={}"], "project"),
        (["demo", "out={}"], "out"),
        (["study", "out={}"], "out"),
    ],
)
@pytest.mark.parametrize("long", [LONG_NAME, LONG_PATH])
def test_a_path_the_os_cannot_take_is_one_line_naming_its_key(
    argv: list[str], key: str, long: str, capsys: Capture
) -> None:
    try:
        code = main([a.format(long) for a in argv])
    except SystemExit as exit_:  # refused by the option parser
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and len(err) < 600, err[:1000]
    assert f"{key}=" in err and "Errno" not in err, err
    assert ("bytes (at most 255)" if long == LONG_NAME else "characters (at most 4,096)") in err, err


def test_python_api_names_the_argument_of_a_path_too_long() -> None:
    from reparam.app.export import export_model
    from reparam.app.models import load

    for call, key in ((lambda p: load(p), "model"), (lambda p: export_model("yolov8n.yaml", out=p), "out")):
        with pytest.raises(ValueError, match=rf"^{key}=b{{57}}\.\.\.: a path component has 303 bytes"):
            call(LONG_NAME + ".pt")


@pytest.mark.parametrize("command", ["info", "verify", "train", "adopt", "export", "val"])
def test_a_yaml_without_a_head_ultralytics_can_tell_is_one_line(
    command: str, tmp_path: Path, capsys: Capture
) -> None:
    cfg = tmp_path / "nohead.yaml"
    cfg.write_text("nc: 3\nbackbone:\n  - [-1, 1, Conv, [16, 3, 2]]\nhead:\n  - [-1, 1, Conv, [16, 3, 1]]\n")
    argv = [command, str(cfg)] + (["to=repvgg"] if command == "adopt" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert (
        f"model YAML {cfg}: its last head row ('Conv') is not a head whose task Ultralytics can tell" in err
    )
