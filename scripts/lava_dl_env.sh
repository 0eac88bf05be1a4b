#!/usr/bin/env bash
# lava-dl 0.6.0 (netx's HDF5 loader), to check that snncc's netx.h5 files load and run in
# lava-dl's own netx: tests/test_netx.py runs that check when lava-dl is installed and skips
# otherwise. Installed into snncc's environment without its dependencies: it pins torch < 2.4,
# torchvision and opencv, which must not replace the CPU torch (torchvision and cv2 are only
# imported by slayer modules netx never uses; snncc.backends.lava.netx_import stands in for
# them while importing netx, so they stay absent for everything else). It declares Python
# < 3.11, like lava-nc. Idempotent.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SNNCC_VENV:-$repo/.venv}"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --no-deps --ignore-requires-python "lava-dl==0.6.0"
"$venv/bin/python" -c 'from snncc.backends.lava.netx_import import netx; print("lava-dl netx:", netx().__name__)'
