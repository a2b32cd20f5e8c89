"""The PyTorch models, from the libraries that define them.

- resnext50_32x4d: torchvision's (25,028,904 parameters with 1000 classes, as published),
  with zero-initialised residual BN (see build_model);
- resnest50: timm's `resnest50d` (27,483,240 parameters, the paper's ResNeSt-50 with the
  deep stem and avg-down, which PaddleClas's ResNeSt50 recipe also uses).
"""

from __future__ import annotations

import torch

from kjob_trainer.common.errors import BadInput

PARAMETER_COUNTS_1000 = {"resnext50_32x4d": 25_028_904, "resnest50": 27_483_240}


def build_model(name: str, num_classes: int) -> torch.nn.Module:
    """A freshly initialised model. Raises BadInput for an unknown name."""
    if name == "resnext50_32x4d":
        import torchvision

        # Zero-init of each block's last BN gamma (Goyal et al. 2017; timm's default too):
        # every residual block starts as identity, which keeps early training stable.
        return torchvision.models.resnext50_32x4d(weights=None, num_classes=num_classes, zero_init_residual=True)
    if name == "resnest50":
        import timm

        return timm.create_model("resnest50d", pretrained=False, num_classes=num_classes)
    raise BadInput(f"unknown model {name!r} (choose from {', '.join(PARAMETER_COUNTS_1000)})")


def parameter_groups(model: torch.nn.Module, weight_decay: float, bn_bias_decay: bool) -> list[dict]:
    """SGD parameter groups; with bn_bias_decay=False, 1-D parameters (BN weights, biases)
    get no weight decay (the 'no bias decay' trick of Goyal et al. / NVIDIA's recipes)."""
    if bn_bias_decay:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
