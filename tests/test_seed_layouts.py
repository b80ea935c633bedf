"""The layouts users arrive with from the blog posts (issue 12 item 6): each builds from its YAML with the
published parameter count, and converts exactly.

The YAMLs are written here as the posts print them (derived from the shipped zoo files, with the posts' own
spellings where they differ), so a change to the zoo that breaks a post's layout fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from ultralytics.nn.modules import Conv
from ultralytics.nn.tasks import DetectionModel

import reparam.yolo as ry
from conftest import n_params
from reparam import ReparamBlock, verify
from reparam.yolo.zoo import zoo_path


def _post_yaml(tmp_path: Path, family: str, name: str, edit=lambda s: s) -> Path:
    path = tmp_path / name
    path.write_text(edit(zoo_path(family).read_text()))
    return path


def _converts_exactly(model: DetectionModel) -> None:
    report = verify(model.float().eval(), input_shape=(1, 3, 64, 64), dtype=torch.float64, randomize_bn=True)
    assert report.ok and report.max_rel < 1e-10 and report.blocks_converted + report.bn_folds > 0, str(report)


def _deploy_params(model: DetectionModel) -> int:
    return n_params(ry.convert_model(model.float().eval()))


def test_yolov8_orepa_post_names_its_block_orepaconv_and_gets_pointed_to_orepa(tmp_path: Path) -> None:
    post = _post_yaml(
        tmp_path, "yolov8-orepa.yaml", "yolov8n-orepaconv.yaml", lambda s: s.replace("OREPA,", "OREPAConv,")
    )
    with pytest.raises(
        ValueError, match=r"OREPAConv: did you mean OREPA\? the post's OREPAConv is not the paper"
    ):
        DetectionModel(str(post), verbose=False)
    model = DetectionModel(
        str(_post_yaml(tmp_path, "yolov8-orepa.yaml", "yolov8n-orepa.yaml")), verbose=False
    )
    assert n_params(model) == 4_070_801
    _converts_exactly(model)
    plain = DetectionModel("yolov8n.yaml", verbose=False).eval().fuse(verbose=False)
    assert _deploy_params(model) == 3_151_904 == n_params(plain)


@pytest.mark.parametrize(
    ("family", "params", "deploy"),
    [("yolov10-dynamicconv.yaml", 2_896_642, 2_450_055), ("yolov10-dynamicconv2.yaml", 4_898_318, 4_452_755)],
)
def test_yolov10_dynamicconv_posts_have_their_printed_parameters_at_25_classes(
    tmp_path: Path, family: str, params: int, deploy: int
) -> None:
    model = DetectionModel(str(_post_yaml(tmp_path, family, family.replace("yolov10", "yolov10n"))), nc=25)
    assert n_params(model) == params  # as printed in the ParameterNet post
    _converts_exactly(model)
    assert _deploy_params(model) == deploy


def test_yolov8_efficientrep_post_rows_c2f_style_are_rejected_with_the_expected_row(tmp_path: Path) -> None:
    post = _post_yaml(
        tmp_path, "yolov8-efficientrep.yaml", "yolov8n-effrep-post.yaml",
        lambda s: s.replace("RepBlock, [128]", "RepBlock, [128, True]"),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"RepBlock.*(shortcut|\[c2\])"):
        DetectionModel(str(post), verbose=False)
    model = DetectionModel(str(_post_yaml(tmp_path, "yolov8-efficientrep.yaml", "yolov8n-effrep.yaml")))
    assert n_params(model) == 4_609_376
    _converts_exactly(model)
    assert _deploy_params(model) == 4_265_952


def test_repvgg_with_relu_as_the_repvgg_and_yolov6_posts(tmp_path: Path) -> None:
    post = _post_yaml(
        tmp_path,
        "yolov8-repvgg.yaml",
        "yolov8n-repvgg-relu.yaml",
        lambda s: s.replace("nc: 80", "nc: 80\nactivation: nn.ReLU()"),
    )
    model = DetectionModel(str(post), verbose=False)
    acts = {type(m.act) for m in model.modules() if isinstance(m, Conv | ReparamBlock)}
    assert acts == {nn.ReLU}
    assert n_params(model) == 3_201_760
    _converts_exactly(model)
    assert _deploy_params(model) == 3_151_904
