#!/usr/bin/env bash
# A separate virtual environment with nir==1.0.4 (the version sinabs 3.1.3 pins), numpy < 2 and
# h5py only (never torch), to check that `--nir-compat nir-1.0.4` files load there:
# tests/test_nir_backend.py runs that check when this environment exists and skips it otherwise.
# Default location: .venv/nir104 (inside the ignored .venv/); override with SNNCC_NIR104_VENV.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SNNCC_NIR104_VENV:-$repo/.venv/nir104}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip --disable-pip-version-check -q install --no-deps \
  "nir==1.0.4" "numpy<2" "h5py"
"$venv/bin/python" -c 'import nir, numpy, h5py; assert nir.version == "1.0.4", nir.version
print(f"nir {nir.version}, numpy {numpy.__version__}, h5py {h5py.__version__}")'
echo "nir 1.0.4 environment in $venv"
