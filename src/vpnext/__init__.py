"""vpnext: VPNeXt semantic segmentation for the plain Vision Transformer."""

__version__ = "0.1.0"
