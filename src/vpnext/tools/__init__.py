"""Command-line tools and helpers: MAC counting (``flops``), sweeps, report tables.

Submodules are imported explicitly (``from vpnext.tools.report import load_runs``) so that light
tools such as ``report`` do not pull in torch.
"""
