"""``python -m vpnext.cli ...``: the ``vpnext`` command."""

from vpnext.cli.main import main

raise SystemExit(main())
