"""Build a small RepVGG network, convert it to plain convs and prove the conversion."""

import torch
from torch import nn

import reparam
from reparam import RepVGGBlock


def main() -> None:
    """Train-form network -> verify -> deploy-form network."""
    model = nn.Sequential(RepVGGBlock(3, 16, s=2), RepVGGBlock(16, 16), RepVGGBlock(16, 32, s=2)).eval()
    report = reparam.verify(model, input_shape=(1, 3, 64, 64), randomize_bn=True)
    print(report)
    deploy = reparam.reparameterize(model)
    print(deploy)
    print(
        "params train/deploy:",
        sum(p.numel() for p in model.parameters()),
        sum(p.numel() for p in deploy.parameters()),
    )
    torch.testing.assert_close(deploy(torch.ones(1, 3, 64, 64)), model(torch.ones(1, 3, 64, 64)))


if __name__ == "__main__":
    main()
