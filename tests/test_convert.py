"""Whole-model conversion and verification: nesting, conv-BN folding, refusals, reports, timm interop."""

import pytest
import torch
from timm.models.byobnet import MobileOneBlock
from timm.utils.model import reparameterize_model
from torch import nn

import reparam
from reparam import QARepVGGBlock, RepVGGBlock
from reparam.blocks import ConvBNAct, ReparamBlock
from reparam.convert import fold_conv_bn, randomize_bn_


class Nested(nn.Module):
    """A model that hides blocks inside containers of different kinds."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.stages = nn.ModuleList([RepVGGBlock(8, 8), QARepVGGBlock(8, 16, s=2, avg=True)])
        self.head = nn.ModuleDict({"conv": ConvBNAct(16, 4, 1)})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        for m in self.stages:
            x = m(x)
        return self.head["conv"](x), x.mean()


def random_model() -> nn.Module:
    model = Nested()
    randomize_bn_(model, seed=11)
    return model.eval()


def test_reparameterize_converts_nested_blocks_and_folds_bn():
    model = random_model()
    x = torch.randn(2, 3, 17, 15)
    deploy = reparam.reparameterize(model)
    assert deploy is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules())
    assert all(b.deployed for b in deploy.modules() if isinstance(b, ReparamBlock))
    assert not any(b.deployed for b in model.modules() if isinstance(b, ReparamBlock)), "the original changed"
    for got, ref in zip(deploy(x), model(x), strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # Every conv in the deploy model is a plain biased conv; the parameter count is the plain network's.
    convs = [m for m in deploy.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None for c in convs)
    assert sum(p.numel() for p in deploy.parameters()) == (3 * 9 * 8 + 8) + (8 * 9 * 8 + 8) + (
        8 * 9 * 16 + 16
    ) + (16 * 4 + 4)


def test_reparameterize_inplace_and_refusals():
    model = random_model()
    assert reparam.reparameterize(model, inplace=True) is model
    with pytest.raises(ValueError, match="model is in training mode: call model.eval"):
        reparam.reparameterize(Nested())
    trained = reparam.reparameterize(Nested(), allow_train=True)
    assert all(b.deployed for b in trained.modules() if isinstance(b, ReparamBlock))
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        reparam.reparameterize("model")


def test_fold_conv_bn_counts_pairs_and_skips_mismatches():
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 1), nn.BatchNorm2d(6)).eval()
    assert fold_conv_bn(seq) == 1
    assert isinstance(seq[1], nn.Identity) and isinstance(seq[3], nn.BatchNorm2d)


def test_verify_passes_and_reports_each_block():
    report = reparam.verify(random_model(), input_shape=(1, 3, 16, 16), dtype=torch.float64)
    assert report.ok and report.max_rel <= 1e-10
    assert [r.name for r in report.blocks] == ["stages.0", "stages.1", "head.conv"]
    assert [r.kind for r in report.blocks] == ["RepVGGBlock", "QARepVGGBlock", "ConvBNAct"]
    assert (report.blocks_converted, report.bn_folds) == (3, 1)  # the stem's Sequential Conv->BN
    text = str(report)
    assert text.startswith("verify: PASS — 3 blocks converted, 1 BN folds,")
    assert "END-TO-END" in text and "stages.1" in text


def test_verify_leaves_the_model_untouched_and_in_its_mode():
    model = Nested()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    reparam.verify(model, randomize_bn=True)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


class BrokenBlock(ReparamBlock):
    """A block whose equivalent kernel forgets its second branch: verify must catch it."""

    def __init__(self) -> None:
        super().__init__(4, 4, 3, 1, 1, 1, 1, nn.Identity())
        self.a = nn.Conv2d(4, 4, 3, 1, 1, bias=False)
        self.b = nn.Conv2d(4, 4, 3, 1, 1, bias=False)

    def forward_train(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)

    def equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a.weight, torch.zeros(4)


def test_verify_fails_and_names_the_block():
    report = reparam.verify(nn.Sequential(RepVGGBlock(4, 4), BrokenBlock()).eval(), input_shape=(1, 4, 8, 8))
    assert not report.ok
    assert report.worst_block.name == "1" and report.worst_block.kind == "BrokenBlock"
    assert any("1 block(s) do not convert exactly; worst: 1 (BrokenBlock" in h for h in report.hints)
    assert "verify: FAIL" in str(report)


def test_verify_hints_at_half_precision():
    report = reparam.verify(random_model(), input_shape=(1, 3, 16, 16), dtype=torch.float16, rtol=1e-9)
    assert not report.ok
    assert any("float16 rounding dominates" in h for h in report.hints)


def test_verify_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rtol must be a positive float"):
        reparam.verify(random_model(), rtol=0.0)
    with pytest.raises(ValueError, match="input_shape must be a sequence of positive sizes"):
        reparam.verify(random_model(), input_shape=(1, 0, 4, 4))


def test_timm_reparameterize_model_converts_reparam_blocks():
    model = nn.Sequential(RepVGGBlock(4, 4), QARepVGGBlock(4, 4, avg=True))
    randomize_bn_(model, seed=5)
    model.eval()
    x = torch.randn(1, 4, 9, 9)
    deploy = reparameterize_model(model)
    assert all(b.deployed for b in deploy.modules() if isinstance(b, ReparamBlock))
    torch.testing.assert_close(deploy(x), model(x), rtol=1e-5, atol=1e-5)


def test_reparameterize_converts_timm_blocks():
    model = nn.Sequential(MobileOneBlock(4, 4, 3, num_conv_branches=2), RepVGGBlock(4, 4))
    randomize_bn_(model, seed=7)
    report = reparam.verify(model.eval(), input_shape=(1, 4, 9, 9), dtype=torch.float64, rtol=1e-10)
    assert report.ok, str(report)
    assert [r.kind for r in report.blocks] == ["MobileOneBlock", "RepVGGBlock"]


def traced(model: nn.Module) -> nn.Module:
    return torch.jit.trace(model, torch.randn(1, 3, 8, 8))


class WithScripted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)


@pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")
@pytest.mark.parametrize(
    ("make", "where", "kind"),
    [
        (torch.jit.script, "model", "RecursiveScriptModule"),
        (traced, "model", "TopLevelTracedModule"),
        (lambda m: WithScripted(), "model.stem", "RecursiveScriptModule"),
    ],
    ids=["scripted", "traced", "scripted-submodule"],
)
@pytest.mark.parametrize("entry", [reparam.reparameterize, reparam.verify], ids=["reparameterize", "verify"])
def test_torchscript_models_are_refused(make, where, kind, entry):
    model = make(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()).eval()
    message = (
        f"{where} is a TorchScript module ({kind}): reparam converts the eager nn.Module; "
        "convert first, then script/trace the converted model"
    )
    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        entry(model)


class ParallelBN(nn.Sequential):
    """A Sequential subclass whose forward applies its BN to the input, not the conv: ``bn(x) + conv(x)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, 1, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x) + self.conv(x)


def test_sequential_subclass_with_own_forward_is_not_folded():
    model = nn.Sequential(ParallelBN(), nn.ReLU())
    randomize_bn_(model, seed=3)
    model.eval()
    x = torch.randn(2, 4, 7, 7)
    assert fold_conv_bn(model) == 0
    deploy = reparam.reparameterize(model)
    assert isinstance(deploy[0].bn, nn.BatchNorm2d) and deploy[0].conv.weight.shape == (4, 4, 3, 3)
    torch.testing.assert_close(deploy(x), model(x), rtol=0, atol=0)
    # The same children in a plain Sequential do fold (and there folding keeps the function).
    plain = nn.Sequential(nn.Conv2d(4, 4, 3, 1, 1), nn.BatchNorm2d(4), nn.ReLU())
    randomize_bn_(plain, seed=3)
    plain.eval()
    deploy = reparam.reparameterize(plain)
    assert isinstance(deploy[1], nn.Identity)
    torch.testing.assert_close(deploy(x), plain(x), rtol=1e-5, atol=1e-5)


class UltralyticsConv(nn.Module):
    """The Ultralytics ``Conv`` convention (``conv``, ``bn``, ``forward_fuse``) without the protocol."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)).relu()

    def forward_fuse(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).relu()


def test_a_user_class_with_the_ultralytics_conv_layout_is_left_alone_and_named():
    """``conv``/``bn``/``forward_fuse`` alone does not prove the forward is act(bn(conv(x))): not folded."""
    model = UltralyticsConv()
    randomize_bn_(model, seed=4)
    model.eval()
    x = torch.randn(1, 3, 9, 9)
    with pytest.warns(UserWarning, match=r"<model> \(UltralyticsConv\): its forward is not known"):
        deploy = reparam.reparameterize(model)
    assert isinstance(deploy.bn, nn.BatchNorm2d) and deploy.conv.bias is None
    torch.testing.assert_close(deploy(x), model(x), rtol=0, atol=0)


def test_fold_conv_bn_leaves_unconverted_blocks_to_their_own_reparameterize():
    model = nn.Sequential(RepVGGBlock(4, 4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    randomize_bn_(model, seed=9)
    model.eval()
    x = torch.randn(1, 4, 8, 8)
    ref = model(x)
    assert fold_conv_bn(model) == 1, "only the top-level pair; RepVGG's ConvBN branches belong to the block"
    assert not model[0].deployed
    reparam.reparameterize(model, inplace=True)
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)


class Counted(nn.Module):
    """A protocol block that counts its conversions."""

    def __init__(self, deployed: bool, keeps_branches: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.deployed, self.keeps_branches, self.calls = deployed, keeps_branches, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def reparameterize(self) -> None:
        self.calls += 1
        self.deployed = not self.keeps_branches


class OldStyle(nn.Module):
    """A foreign block with only the older ``switch_to_deploy()`` and no ``deployed`` flag."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def switch_to_deploy(self) -> None:
        self.calls += 1


def test_conversion_asks_the_protocol_only():
    model = nn.Sequential(Counted(deployed=False), Counted(deployed=True), OldStyle()).eval()
    reparam.reparameterize(model, inplace=True)
    assert [m.calls for m in model] == [1, 0, 1]
    reparam.reparameterize(model, inplace=True)
    assert [m.calls for m in model] == [1, 0, 2], "a foreign block cannot say it is deployed: called again"
    with pytest.raises(
        RuntimeError, match=r"0 \(Counted\)\.reparameterize\(\) returned but the module still"
    ):
        reparam.reparameterize(nn.Sequential(Counted(deployed=False, keeps_branches=True)).eval())
