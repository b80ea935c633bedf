"""reparam.io: atomic writes that never replace a file unless asked; checkpoint reads that never run code."""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import pytest
import torch
from torch import nn

from checkpoint_payloads import ConstructorPayload, Harmless, SystemPayload, TouchPayload
from reparam.io import (
    OverwriteRefusedError,
    UnsafeCheckpointError,
    atomic_path,
    atomic_save,
    atomic_write_bytes,
    atomic_write_text,
    checkpoint_globals,
    load_checkpoint,
)

RUNS_CODE = (  # what a hostile file is told: what was found, never an invitation to pass trust=True
    "which can run code (a function, or a class of a module that runs programs or touches files); refused: "
    "this file was made to run code (do not load it, not even with trust=True)"
)


# --------------------------------------------------------------------------------------- atomic writes
def test_atomic_save_refuses_existing_file_and_leaves_it(tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(b"previous")
    with pytest.raises(OverwriteRefusedError, match=r"w\.pt' already exists; pass overwrite=True") as info:
        atomic_save({"a": torch.ones(2)}, path)
    assert isinstance(info.value, ValueError) and isinstance(info.value, FileExistsError)
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt"]


def test_atomic_save_overwrite_replaces(tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(b"previous")
    assert atomic_save({"a": torch.arange(3)}, path, overwrite=True) == path
    assert torch.equal(load_checkpoint(path)["a"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt"]


def test_failure_half_way_keeps_previous_file_and_no_temp(tmp_path):
    path = tmp_path / "w.pt"
    atomic_save({"a": torch.ones(3)}, path)
    before = path.read_bytes()
    # the tensor is written first, then pickling the lambda fails: a plain torch.save would leave half a file
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        atomic_save({"a": torch.zeros(1000), "f": lambda x: x}, path, overwrite=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt"]


def test_plain_torch_save_failure_does_truncate(tmp_path):
    """The failure the atomic write guards against is real: plain torch.save destroys the previous file."""
    path = tmp_path / "w.pt"
    torch.save({"a": torch.ones(3)}, path)
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        torch.save({"a": torch.zeros(1000), "f": lambda x: x}, path)
    assert path.read_bytes() != before


def test_atomic_text_and_bytes(tmp_path):
    assert atomic_write_text("héllo\n", tmp_path / "sub" / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    with pytest.raises(OverwriteRefusedError, match=r"a\.txt' already exists"):
        atomic_write_text("other", tmp_path / "sub" / "a.txt")
    atomic_write_bytes(b"\x00\x01", tmp_path / "sub" / "a.txt", overwrite=True)
    assert (tmp_path / "sub" / "a.txt").read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError, match=r"is a directory; give a file name"):
        atomic_write_bytes(b"x", tmp_path / "sub", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.txt"]


def test_atomic_path_keeps_name_and_requires_the_file(tmp_path):
    with atomic_path(tmp_path / "model.onnx") as tmp:
        assert tmp.name == "model.onnx" and tmp.parent.parent == tmp_path and not tmp.exists()
        tmp.write_bytes(b"onnx")
    assert (tmp_path / "model.onnx").read_bytes() == b"onnx"
    with (
        pytest.raises(RuntimeError, match=r"did not create .*it was to become .*other\.onnx"),
        atomic_path(tmp_path / "other.onnx"),
    ):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_file_appearing_during_write_is_not_clobbered(tmp_path):
    path = tmp_path / "w.pt"
    with pytest.raises(OverwriteRefusedError, match="already exists"), atomic_path(path) as tmp:
        tmp.write_bytes(b"ours")
        path.write_bytes(b"theirs")  # another process wrote it meanwhile
    assert path.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt"]


# ------------------------------------------------------------------------------- malicious checkpoints
def _write_payload(kind: str, payload: object, path):
    if kind == "zip":
        torch.save({"model": payload}, path)
    elif kind == "legacy":
        torch.save({"model": payload}, path, _use_new_zipfile_serialization=False)
    else:  # raw pickle, protocol 2 (GLOBAL) or 4 (STACK_GLOBAL with memoized strings)
        path.write_bytes(pickle.dumps(payload, protocol=int(kind[-1])))
    return path


PAYLOADS = [
    ("zip", SystemPayload, "posix.system"),
    ("legacy", SystemPayload, "posix.system"),
    ("raw2", SystemPayload, "posix.system"),
    ("raw4", SystemPayload, "posix.system"),
    ("zip", TouchPayload, "builtins.getattr"),
    ("legacy", TouchPayload, "builtins.getattr"),
    ("raw4", TouchPayload, "pathlib.Path.touch"),
]


@pytest.mark.skipif(os.name != "posix", reason="os.system pickles as posix.system on POSIX")
@pytest.mark.parametrize(("kind", "payload", "first"), PAYLOADS)
def test_malicious_file_is_refused_before_it_runs(tmp_path, kind, payload, first):
    marker = tmp_path / "marker"
    path = _write_payload(kind, payload(marker), tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message == (f"checkpoint {str(path)!r} asks for {first}, {RUNS_CODE}")
    assert "\n" not in message and not marker.exists()
    assert checkpoint_globals(path)[0] == first
    # the payload is live: a plain unpickler runs it
    control = tmp_path / "control"
    data = _write_payload(kind, payload(control), tmp_path / "control.pt").read_bytes()
    if kind.startswith("raw"):
        pickle.loads(data)
    else:
        torch.load(io.BytesIO(data), weights_only=False)
    assert control.exists()


def test_constructor_call_is_refused_even_for_allowed_module(tmp_path):
    path = tmp_path / "ctor.pt"
    torch.save({"m": ConstructorPayload(nn.Linear, 2, 3)}, path)
    rule = r"calls the constructor of torch\.nn\.modules\.linear\.Linear"
    with pytest.raises(UnsafeCheckpointError, match=rule):
        load_checkpoint(path, allowed=[nn.Linear])
    saved = tmp_path / "linear.pt"
    torch.save({"m": nn.Linear(2, 3)}, saved)  # a saved module is rebuilt without its constructor: loads
    assert isinstance(load_checkpoint(saved, allowed=[nn.Linear])["m"], nn.Linear)


# ------------------------------------------------------------------------------------ legitimate files
@pytest.mark.parametrize("legacy", [False, True])
def test_state_dict_loads_with_no_allow_list(tmp_path, legacy):
    sd = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).state_dict()
    path = tmp_path / "sd.pt"
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    loaded = load_checkpoint(path)
    assert list(loaded) == list(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)


@pytest.mark.parametrize("legacy", [False, True])
def test_unlisted_class_needs_allowed_or_trust(tmp_path, legacy):
    path = tmp_path / "h.pt"
    torch.save({"h": Harmless("a", 3)}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpointError, match=r"asks for checkpoint_payloads\.Harmless, which is not"):
        load_checkpoint(path)
    assert load_checkpoint(path, trust=True) == {"h": Harmless("a", 3)}
    assert load_checkpoint(path, allowed=[Harmless]) == {"h": Harmless("a", 3)}


def test_process_wide_safe_globals_survive_a_load(tmp_path):
    path = tmp_path / "h.pt"
    torch.save({"h": Harmless("a", 3)}, path)
    before = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([Harmless])
    try:
        load_checkpoint(path, allowed=[Harmless])
        assert Harmless in torch.serialization.get_safe_globals()
    finally:  # restore exactly what other tests (and `import reparam.yolo`) registered
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


# ------------------------------------------------------------------------------------ unreadable files
def _truncated(path):
    torch.save({"w": torch.ones(100)}, path)
    path.write_bytes(path.read_bytes()[:300])


def _torchscript(path):
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), path)


def _zip_without_data(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a/readme.txt", "hi")


UNREADABLE = {
    "missing": (lambda p: None, "does not exist"),
    "directory": (lambda p: p.mkdir(), "is not a file"),
    "empty": (lambda p: p.write_bytes(b""), "is not a readable torch checkpoint"),
    "truncated": (_truncated, "is not a readable torch checkpoint"),
    "random": (lambda p: p.write_bytes(bytes(range(7, 250)) * 3), "is not a readable torch checkpoint"),
    "text": (lambda p: p.write_text("model: yolov8n.yaml\n"), "is not a readable torch checkpoint"),
    "torchscript": (_torchscript, "is a TorchScript archive"),
    "other zip": (_zip_without_data, "without the data.pkl record"),
}


TORCH_LOADS_AS_IS = ("torchscript", "other zip")  # zips that torch.load itself accepts or reports


@pytest.mark.parametrize(
    ("kind", "trust"),
    [(k, False) for k in UNREADABLE] + [(k, True) for k in UNREADABLE if k not in TORCH_LOADS_AS_IS],
)
def test_unreadable_file_is_a_value_error_naming_it(tmp_path, kind, trust):
    """Also with trust=True, where the file goes to torch.load as is."""
    make, rule = UNREADABLE[kind]
    path = tmp_path / "bad.pt"
    make(path)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path, trust=trust)
    assert not isinstance(info.value, UnsafeCheckpointError)
    message = str(info.value)
    assert message.startswith(f"checkpoint {str(path)!r} ") and "\n" not in message
    if not trust or kind in ("missing", "directory"):
        assert rule in message
