"""Facts every layer shares, defined once: the results file, exit codes, pre-emption signals.

Standard library only, so that the command line, the tools (report, sweep) and the training
callbacks read the same names without importing one another.
"""

from __future__ import annotations

__all__ = [
    "CLASSES_KEY",
    "COVERAGE_KEYS",
    "PREEMPTED_EXIT_CODE",
    "PREEMPTION_SIGNALS",
    "RESULTS_FILE",
    "SCHEMA_VERSION",
]

#: The file every ``vpnext fit|validate|test`` run writes into its run directory (docs/training.md).
RESULTS_FILE = "results.json"
#: Bump when a field of ``results.json`` changes meaning or disappears (adding fields keeps it).
SCHEMA_VERSION = 1
#: What ``results.json`` says about the images behind ``mIoU`` (see docs/training.md).
COVERAGE_KEYS = ("images_evaluated", "images_distinct", "split_size", "partial", "images_repeated")

#: Checkpoint entry with the class names and palette (``{"names": [...], "palette": [[r, g, b], ...]}``).
CLASSES_KEY = "classes"

#: Exit code of a run stopped by a pre-emption signal after writing a resumable checkpoint
#: (``EX_TEMPFAIL`` of sysexits.h: "temporary failure, try again"); the sweep runner resumes it.
PREEMPTED_EXIT_CODE = 75
#: Signals that stop a fit (and a sweep) with a checkpoint; loader workers ignore them.
PREEMPTION_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")
