"""Nothing is folded on a guess (issue 18 §2), hooks and training submodules are refused by name, and the
one protocol walker (issue 19 §6)."""

import ast
import inspect

import pytest
import torch
from torch import nn
from ultralytics.nn.modules import block as ub
from ultralytics.nn.modules import conv as uc

import reparam
import reparam.convert
import reparam.verification
from reparam import RepVGGBlock
from reparam.blocks import ReparamBlock
from reparam.convert import randomize_bn_

X = torch.randn(2, 8, 12, 12, dtype=torch.float64)


def converted(module: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(train form, deploy form)`` of ``nn.Sequential(module)`` in fp64 with random BN statistics."""
    model = nn.Sequential(module).double().eval()
    randomize_bn_(model, seed=5)
    return model, reparam.reparameterize(model)


def bns(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


# Each Conv-like class of ultralytics.nn.modules: the deploy form equals the train form, and every BN is
# folded (or there was none). Ultralytics' own fuse() agrees with the merge for Conv2, RepConv, RepVGGDW.
CLASSES = {
    "Conv": lambda: uc.Conv(8, 16, 3, 2),
    "Conv2": lambda: uc.Conv2(8, 16, 3, 2),
    "Conv2-dilated": lambda: uc.Conv2(8, 8, 3, 1, d=2),
    "DWConv": lambda: uc.DWConv(8, 16, 5),
    "LightConv": lambda: uc.LightConv(8, 16, 3),
    "GhostConv": lambda: uc.GhostConv(8, 16, 3, 2),
    "Focus": lambda: uc.Focus(8, 16, 3),
    "ConvTranspose": lambda: uc.ConvTranspose(8, 16, 2, 2),
    "ConvTranspose-no-bn": lambda: uc.ConvTranspose(8, 16, 2, 2, bn=False),
    "DWConvTranspose2d": lambda: uc.DWConvTranspose2d(8, 16, 2, 2),
    "RepConv": lambda: uc.RepConv(8, 16, 3, 2),
    "RepConv-identity": lambda: uc.RepConv(8, 8, 3, 1, bn=True),
    "RepVGGDW": lambda: ub.RepVGGDW(8),
}


@pytest.mark.parametrize("name", list(CLASSES))
def test_each_ultralytics_conv_class_converts_exactly_and_completely(name):
    model, deploy = converted(CLASSES[name]())
    torch.testing.assert_close(deploy(X), model(X), rtol=1e-10, atol=1e-10)
    assert bns(deploy) == 0, f"{name}: a BN was left unfolded"
    if name.startswith(("Conv2", "RepConv", "RepVGGDW")):
        ultra = nn.Sequential(CLASSES[name]()).double().eval()
        ultra.load_state_dict(model.state_dict())
        ultra[0].fuse_convs() if hasattr(ultra[0], "fuse_convs") else ultra[0].fuse()
        if hasattr(ultra[0], "forward_fuse") and not name.startswith("Conv2"):
            ultra[0].forward = ultra[0].forward_fuse
        torch.testing.assert_close(deploy(X), ultra(X), rtol=1e-10, atol=1e-10)
        assert not hasattr(deploy[0], "cv2") and not hasattr(deploy[0], "conv1")


def test_conv2_keeps_its_1x1_branch():
    """The issue's example: Conv2 folded like a plain Conv dropped cv2 (output off by ~0.55)."""
    model, deploy = converted(uc.Conv2(8, 16, 3, 2))
    torch.testing.assert_close(deploy(X), model(X), rtol=1e-10, atol=1e-10)
    assert deploy[0].conv.bias is not None and not hasattr(deploy[0], "cv2")


class MyConv(uc.Conv):
    """A user subclass with its own forward: its layout is Conv's, its function is not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x))) * 2 + self.bn(self.conv(x))


class MyConv2(uc.Conv2):
    """A subclass without changes is still not the allow-listed class: left alone, named."""


@pytest.mark.parametrize("make", [lambda: MyConv(8, 16, 3), lambda: MyConv2(8, 16, 3)])
def test_unknown_subclasses_are_left_alone_and_named(make):
    model = nn.Sequential(make()).double().eval()
    randomize_bn_(model, seed=6)
    with pytest.warns(UserWarning, match=rf"0 \({type(model[0]).__name__}\): its forward is not known"):
        deploy = reparam.reparameterize(model)
    assert isinstance(deploy[0].bn, nn.BatchNorm2d)
    torch.testing.assert_close(deploy(X), model(X), rtol=0, atol=0)
    report = reparam.verify(model, X)
    assert any(type(model[0]).__name__ in n for n in report.notes), str(report)


def test_patched_fuse_keeps_conv2_inside_a_yolo_model():
    """reparam's patched fuse() must keep the function, as Ultralytics' own fuse() does (it dropped cv2)."""
    from ultralytics.nn.tasks import DetectionModel

    import reparam.yolo as ry

    ry.register()

    def build() -> DetectionModel:
        model = DetectionModel("yolov8n-repvgg.yaml", nc=2, verbose=False)
        i = next(i for i, m in enumerate(model.model) if type(m) is uc.Conv)
        old = model.model[i]
        new = uc.Conv2(old.conv.in_channels, old.conv.out_channels, 3, old.conv.stride[0])
        new.f, new.i, new.type, new.np = old.f, old.i, "Conv2", old.np
        model.model[i] = new
        return model.eval()

    model = build()
    randomize_bn_(model, seed=7)
    x = torch.randn(1, 3, 64, 64)
    ref = model(x)[0]
    fused = build()
    fused.load_state_dict(model.state_dict())
    fused.fuse(verbose=False)
    assert ry.pending_blocks(fused) == [] and fused.is_fused()
    assert not any(isinstance(m, uc.Conv2) and hasattr(m, "cv2") for m in fused.modules())
    torch.testing.assert_close(fused(x)[0], ref, rtol=1e-4, atol=1e-3)


def test_hooks_on_modules_that_conversion_drops_are_refused_by_name():
    def fresh() -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), RepVGGBlock(4, 4)).eval()

    model = fresh()
    model[1].register_forward_hook(lambda _m, _a, out: out + 1)
    with pytest.raises(ValueError, match=r"1 \(BatchNorm2d\): forward hook"):
        reparam.reparameterize(model)
    model = fresh()
    model[0].register_forward_pre_hook(lambda _m, a: a)
    with pytest.raises(ValueError, match=r"0 \(Conv2d\): forward pre-hook"):
        reparam.reparameterize(model)
    model = fresh()
    branch = next(n for n, m in model[2].named_modules() if isinstance(m, nn.BatchNorm2d))
    model[2].get_submodule(branch).register_full_backward_hook(lambda *a: None)
    with pytest.raises(ValueError, match=rf"2\.{branch} \(BatchNorm2d\): backward hook"):
        reparam.reparameterize(model)
    # A hook on the block itself stays exact: the block keeps its inputs and outputs.
    model = fresh()
    randomize_bn_(model, seed=8)
    seen = []
    model[2].register_forward_hook(lambda _m, _a, out: seen.append(out.clone()))
    x = torch.randn(1, 3, 9, 9)
    ref = model(x)
    deploy = reparam.reparameterize(model)
    torch.testing.assert_close(deploy(x), ref, rtol=1e-5, atol=1e-5)
    assert len(seen) == 2 and deploy[2].deployed
    torch.testing.assert_close(seen[1], seen[0], rtol=1e-5, atol=1e-5)


def test_any_submodule_in_training_mode_is_refused_by_name():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), RepVGGBlock(4, 4)).eval()
    model[1].train()
    with pytest.raises(ValueError, match=r"^submodule 1 is in training mode: call model.eval\(\)"):
        reparam.reparameterize(model)
    assert isinstance(reparam.reparameterize(model, allow_train=True)[1], nn.Identity)


def test_verify_of_a_deploy_model_does_not_suspect_bottleneck_or_sppf():
    model = nn.Sequential(
        uc.Conv(3, 8, 3), ub.Bottleneck(8, 8), ub.SPPF(8, 8), ub.C2f(8, 8, 1), ub.C3(8, 8, 1)
    ).eval()
    deploy = reparam.reparameterize(model)
    report = reparam.verify(deploy, input_shape=(1, 3, 16, 16))
    assert not report.ok and report.hints[0].startswith("nothing was converted")
    assert "look re-parameterizable" not in " ".join(report.hints), report.hints


def test_verify_module_list_and_meta_models_answer_in_one_line():
    with pytest.raises(ValueError, match=r"nn.ModuleList, which has no forward: pass the module that calls"):
        reparam.verify(nn.ModuleList([RepVGGBlock(3, 3)]))
    with torch.device("meta"):
        meta = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    for call in (reparam.verify, reparam.reparameterize):
        with pytest.raises(ValueError, match=r"meta device \(no values\): 0.weight, 0.bias, 1.weight"):
            call(meta)


def test_one_walker_finds_the_outermost_pending_blocks():
    from reparam.blocks.base import is_pending, outermost_modules

    model = nn.Sequential(nn.Sequential(RepVGGBlock(3, 3)), RepVGGBlock(3, 3).eval())
    model[1].reparameterize()
    assert [n for n, _ in outermost_modules(model)] == ["0.0", "1"]
    assert [n for n, _ in outermost_modules(model, is_pending)] == ["0.0"]
    assert [n for n, _ in outermost_modules(model, lambda m: isinstance(m, ReparamBlock), "net")] == [
        "net.0.0",
        "net.1",
    ]


def test_verification_imports_nothing_private_from_convert_and_convert_reexports_no_verify():
    tree = ast.parse(inspect.getsource(reparam.verification))
    private = [
        a.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "reparam.convert"
        for a in node.names
        if a.name.startswith("_")
    ]
    assert private == []
    assert not hasattr(reparam.convert, "verify") and reparam.verify is reparam.verification.verify
