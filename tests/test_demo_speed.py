"""The demo's speed recipe: training and validation use every core, not Ultralytics' cpu_count - 1."""

import os

import pytest
import torch
from ultralytics import YOLO
from ultralytics.utils.torch_utils import select_device

from reparam.app.demo import Validator
from reparam.app.train import use_threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_use_threads_overrides_select_device_before_training_and_validation(restore_threads):
    net = YOLO("yolov8n.yaml")
    use_threads(net, 3)
    for event in ("on_pretrain_routine_start", "on_val_start"):
        select_device("cpu", verbose=False)  # what Ultralytics runs first: cpu_count - 1 threads
        for callback in net.callbacks[event]:
            callback(None)
        assert torch.get_num_threads() == 3, event


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "2"])
def test_use_threads_rejects_a_non_positive_int(bad):
    with pytest.raises(ValueError, match="threads"):
        use_threads(YOLO("yolov8n.yaml"), bad)


def test_demo_validator_defaults_to_every_core(tmp_path):
    assert Validator(tmp_path / "d.yaml", 320, 8, "cpu").threads == os.cpu_count()
