"""VPNeXt model parts: backbone, context head, VCR, ViTUp/HiCLR, baselines."""

from vpnext.models.backbone import PretrainedWeightsError, ViTBackbone
from vpnext.models.outputs import VPNeXtOutput
from vpnext.models.vpnext import MODEL_ARGS, VPNeXt, resolve_aux_layers

__all__ = [
    "MODEL_ARGS",
    "PretrainedWeightsError",
    "VPNeXt",
    "VPNeXtOutput",
    "ViTBackbone",
    "resolve_aux_layers",
]
