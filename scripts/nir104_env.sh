#!/usr/bin/env bash
# A separate virtual environment with nir==1.0.4 (the version sinabs 3.1.3 pins), numpy < 2,
# h5py and sinabs 3.1.3 with nirtorch 2.0 (sinabs.to_nir / from_nir work with it and nir 1.0.4;
# nirtorch 2.0.5 and 2.6 pass NIRGraph a type_check argument that 1.0.4 lacks), all --no-deps.
# torch is never installed here: a .pth file appends the main venv's site-packages to the END
# of sys.path, so `import torch` (and matplotlib, which sinabs imports) come from there while
# nir 1.0.4 in this environment's own site-packages wins over the main venv's nir 1.0.8.
# samna (sinabs's hardware back-end) is not needed to import sinabs or use sinabs.to_nir /
# sinabs.from_nir, and is not installed.
# tests/test_nir_backend.py (nir 1.0.4 loads `--nir-compat nir-1.0.4` files) and
# tests/test_sinabs_interop.py use this environment when it exists and skip otherwise.
# Default location: .venv/nir104 (inside the ignored .venv/); override with SNNCC_NIR104_VENV;
# the main venv (for torch) is SNNCC_VENV, default .venv.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SNNCC_NIR104_VENV:-$repo/.venv/nir104}"
main="${SNNCC_VENV:-$repo/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip --disable-pip-version-check -q install --no-deps \
  "nir==1.0.4" "numpy<2" "h5py" "sinabs==3.1.3" "nirtorch==2.0" "pbr"
purelib() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
# a plain path line in a .pth file is appended to sys.path (after the env's own site-packages)
purelib "$main/bin/python" > "$(purelib "$venv/bin/python")/zz_snncc_main_venv.pth"
"$venv/bin/python" -c 'import nir, numpy, h5py, torch, sinabs
assert nir.version == "1.0.4", nir.version
from sinabs import from_nir, to_nir
print(f"nir {nir.version}, numpy {numpy.__version__}, h5py {h5py.__version__}, "
      f"sinabs {sinabs.__version__}, torch {torch.__version__} (from {torch.__file__})")'
echo "nir 1.0.4 + sinabs environment in $venv"
