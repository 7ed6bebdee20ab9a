"""The ``vpnext`` command: LightningCLI subcommands plus a small registry of extra tools.

``vpnext fit|validate|test|predict`` run :class:`~vpnext.training.SegmentationModule` on
:class:`~vpnext.data.SegDataModule` (synthetic data by default) through LightningCLI, so every
constructor argument is a ``--model.*``/``--data.*``/``--trainer.*`` option or a YAML key.

Any other first word(s) listed in :data:`EXTRA_COMMANDS` run a tool's own ``main(argv)`` instead
(imported only when called, so one tool's imports or import errors never affect the others). To
add a command, add ``"name": "package.module:function"`` (the function takes the remaining
arguments as a list and returns an exit code) and document it in ``docs/training.md``.

Every run writes into its own directory (see :func:`resolve_run_dir`); errors a user can fix
(bad config keys or values, missing files) end the process with one ``vpnext: error:`` line and a
non-zero exit code. ``--debug`` or ``VPNEXT_DEBUG=1`` shows the full traceback instead.
"""

from vpnext.cli.main import (
    EXTRA_COMMANDS,
    SUBCOMMANDS,
    main,
)

# The run-directory API is re-exported: scripts and tests know it as part of the CLI.
from vpnext.run_dir import (
    RUN_DIR_ENV,
    InitOptions,
    RunOptions,
    UserError,
    find_last_checkpoint,
    resolve_run_dir,
    resume_command,
)

__all__ = [
    "EXTRA_COMMANDS",
    "RUN_DIR_ENV",
    "SUBCOMMANDS",
    "InitOptions",
    "RunOptions",
    "UserError",
    "find_last_checkpoint",
    "main",
    "resolve_run_dir",
    "resume_command",
]
