#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install snncc with everything it needs,
# lava-nc included. lava-nc 0.10.0 declares Python < 3.11, so it is installed without its
# metadata checks; its run-time dependencies are listed in requirements-lava.txt.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SNNCC_VENV:-$repo/.venv}"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "snncc needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
# torch first, pinned: anything looser can pull a multi-GB CUDA build.
"${pip[@]}" install "torch==2.13.0"
"${pip[@]}" install -r "$repo/requirements-lava.txt"
"${pip[@]}" install --no-deps --ignore-requires-python "lava-nc==0.10.0"
"${pip[@]}" install -e "$repo[test]"
# An editable install leaves snncc's bytecode to its first imports, which never write it where
# PYTHONDONTWRITEBYTECODE is set: every snncc process (and each test's) would compile its
# sources again, about 0.1 s each. Compiled once here; Python skips a cache its source outdates.
"$venv/bin/python" -m compileall -q "$repo/snncc" "$repo/frontends" "$repo/passes" "$repo/backends"
# lava-dl's netx loader (tests/test_netx.py loads snncc's netx files with it), --no-deps
SNNCC_VENV="$venv" bash "$repo/scripts/lava_dl_env.sh" >/dev/null
# last, so that no later pip run reports their undeclared (unused) dependencies as conflicts.
# The front-end adapters for these libraries are tested against their own modules; --no-deps so
# that none of them can replace the CPU torch or numpy < 2 (norse needs nirtorch at import).
"${pip[@]}" install --no-deps "spikingjelly==2.0.0" "snntorch==1.0.0" "norse==1.1.0" \
  "nirtorch==2.6"
# spikingjelly 0.0.0.0.14, whose clock_driven API the official Spikformer, Spike-Driven
# Transformer and QKFormer code imports, in a directory of its own (the package's name is 2.0's):
# tests/test_spikingjelly_legacy.py puts it ahead of 2.0 on a test process's path
legacy_sj="$venv/spikingjelly-0.0.0.0.14"
if [ ! -d "$legacy_sj/spikingjelly/clock_driven" ]; then
  "${pip[@]}" install --no-deps --upgrade --target "$legacy_sj" "spikingjelly==0.0.0.0.14"
fi
# nir 1.0.4 (what sinabs pins) in its own small environment, to test --nir-compat nir-1.0.4
SNNCC_NIR104_VENV="$venv/nir104" PYTHON="$python" bash "$repo/scripts/nir104_env.sh" >/dev/null
echo "snncc installed in $venv (activate with: source $venv/bin/activate)"
