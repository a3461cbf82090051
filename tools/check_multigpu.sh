#!/usr/bin/env bash
# DDP and FSDP against one GPU end to end (losses, resume after kill -9, final eval and export, optional scaling):
#   bash tools/check_multigpu.sh [--nproc 2] [--scaling off|on|only] [--out DIR] [extra `tnl train` overrides]
# The same as `python -m tools.check_multigpu ...`; see tools/check_multigpu.py for the checks and options.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m tools.check_multigpu "$@"
