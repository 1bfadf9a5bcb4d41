#!/usr/bin/env bash
# Builds the hdp Python package from this clone (`pip install ./python`: maturin builds the
# native module in release mode, sharing cargo's target/ with `cargo build --release`) into a
# virtual environment, then runs the Python tests. The torch and transformers tests run only
# where those packages are installed in that environment (HDP_VENV=path to use your own).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${HDP_VENV:-$root/target/pyenv}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q numpy pytest
"$venv/bin/python" -m pip install -q "$root/python"
# Run from outside the source tree so that `import hdp` finds the installed package.
cd "$venv"
./bin/python -m pytest -q -p no:cacheprovider -rs "$root/python/tests"
