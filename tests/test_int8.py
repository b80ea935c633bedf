"""INT8 static quantization of a converted model in onnxruntime: QDQ graph, per-channel weights, outputs
close to fp32 (top-1 agreement >= 90% and mean logit cosine > 0.99 on 256 inputs)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from reparam.bench.int8 import export_onnx, logit_agreement, quantize_int8, quantize_model  # noqa: E402
from reparam.convert import randomize_bn_, reparameterize  # noqa: E402
from reparam.models.small_cnn import small_cnn  # noqa: E402


def _images(n: int, seed: int) -> torch.Tensor:
    """Smooth random images (blurred noise), closer to photos than white noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=g)
    return torch.nn.functional.avg_pool2d(x, 5, 1, 2) * 2.0


@pytest.mark.parametrize("variant", ["repvgg", "qarepvgg"])
def test_quantized_deploy_form_stays_close_to_fp32(tmp_path, variant: str) -> None:
    torch.manual_seed(0)
    model = small_cnn(variant, width=8).eval()
    randomize_bn_(model, seed=1)
    deploy = reparameterize(model)
    calib, test = _images(128, 0), _images(256, 1)
    q = quantize_model(deploy, calib, tmp_path, variant, threads=1)
    with torch.inference_mode():
        ref = deploy(test)
    fp32, int8 = q.fp32(test), q.int8(test)
    assert (fp32 - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()  # the export is exact
    agree, cosine = logit_agreement(fp32, int8)
    assert agree >= 0.90, f"{variant}: INT8 top-1 agrees with fp32 on only {agree:.1%}"
    assert cosine > 0.99, f"{variant}: INT8 logits cosine {cosine:.4f}"
    assert not torch.equal(fp32, int8)  # it really ran quantized


def test_int8_graph_is_qdq_with_per_channel_conv_weights(tmp_path) -> None:
    torch.manual_seed(0)
    deploy = reparameterize(small_cnn("plain", width=8).eval())
    fp32 = export_onnx(deploy, torch.zeros(1, 1, 28, 28), tmp_path / "m.onnx")
    path = quantize_int8(fp32, tmp_path / "m-int8.onnx", _images(32, 0), per_channel=True)
    graph = onnx.load(path).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("Conv") == 5 and "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {i.name: i for i in graph.initializer}
    conv_inputs = {n.input[1] for n in graph.node if n.op_type == "Conv"}
    weight_dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] in conv_inputs]
    scale_lengths = sorted(int(inits[n.input[1]].dims[0]) for n in weight_dq)
    assert scale_lengths == [8, 16, 16, 32, 32]  # one scale per output channel of every conv


def test_quantize_and_agreement_refuse_bad_input(tmp_path) -> None:
    with pytest.raises(ValueError, match="calibration must hold at least one input"):
        quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", torch.zeros(0, 1, 28, 28))
    with pytest.raises(ValueError, match="one shape"):
        logit_agreement(torch.zeros(4, 10), torch.zeros(4, 9))
