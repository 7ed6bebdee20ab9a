"""``python -m vpnext.ops.native``: build the native CPU kernels now."""

from vpnext.ops.native import main

raise SystemExit(main())
