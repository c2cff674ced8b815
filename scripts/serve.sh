#!/usr/bin/env bash
# The README's serve command for a fresh machine: installs what the build needs
# (scripts/setup.sh), builds the release binary and serves; arguments go to `pensieve serve`.
#
#   bash scripts/serve.sh                       # the recommended model
#   bash scripts/serve.sh --model ./model.gguf  # any `pensieve serve` flags
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
[[ -x "$HOME/.cargo/bin/cargo" ]] && export PATH="$HOME/.cargo/bin:$PATH"
cd "$ROOT"
exec cargo run --release --locked -p pensieve -- serve "$@"
