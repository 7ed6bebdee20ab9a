"""Custom tensor ops: the deformable 3x3 convolution used by the context head and HiCLR."""

from vpnext.ops.deform_conv import DeformConv3x3, DeformImpl, deform_conv3x3, deform_conv_macs

__all__ = ["DeformConv3x3", "DeformImpl", "deform_conv3x3", "deform_conv_macs"]
