"""Lightning training: the LightningModule, optimiser/schedule and run outputs (docs/training.md)."""

from vpnext.schema import RESULTS_FILE
from vpnext.training.checkpoints import LastCheckpoint
from vpnext.training.module import MODEL_ARGS, SegmentationModule
from vpnext.training.optim import build_optimizer, build_param_groups, build_scheduler, warmup_poly_factor
from vpnext.training.results import PredictionWriter, ResultsWriter, read_results

__all__ = [
    "MODEL_ARGS",
    "RESULTS_FILE",
    "LastCheckpoint",
    "PredictionWriter",
    "ResultsWriter",
    "SegmentationModule",
    "build_optimizer",
    "build_param_groups",
    "build_scheduler",
    "read_results",
    "warmup_poly_factor",
]
