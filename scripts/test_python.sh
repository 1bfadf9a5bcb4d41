#!/usr/bin/env bash
# Builds the hdp Python package from this clone (`pip install ./python`: maturin builds the
# native module in release mode, sharing cargo's target/ with `cargo build --release`) into a
# virtual environment, then runs the Python tests. With --with-torch it also installs torch and
# transformers there (about 3 GB from the registry on the first run, about a minute to download
# here; later runs reuse pip's cache), so the hdp.torch and hdp.transformers tests run; without
# them those tests are skipped and say so. HDP_VENV=path uses your own environment.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${HDP_VENV:-$root/target/pyenv}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q numpy pytest
if [ "${1:-}" = "--with-torch" ]; then
    "$venv/bin/python" -m pip install -q torch transformers
fi
"$venv/bin/python" -m pip install -q "$root/python"
# Run from outside the source tree so that `import hdp` finds the installed package.
cd "$venv"
./bin/python -m pytest -q -p no:cacheprovider -rs "$root/python/tests"
