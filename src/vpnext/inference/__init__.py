"""Using a trained model: the Python API (:class:`Segmenter`) and the image conversions it accepts."""

from vpnext.inference.images import ImageInput, to_rgb
from vpnext.inference.segmenter import EVAL_ARGS, Segmenter

__all__ = ["EVAL_ARGS", "ImageInput", "Segmenter", "to_rgb"]
