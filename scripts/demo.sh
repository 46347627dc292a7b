#!/usr/bin/env bash
# The main job in the lab: installs what is missing, builds, and shows
# blocked names answered by the kernel, a flood being limited, and the
# verdict log. Needs root. Everything it creates is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec /usr/bin/python3 integration/demo.py "$@"
