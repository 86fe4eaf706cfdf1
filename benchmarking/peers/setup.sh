#!/usr/bin/env bash
# Build one venv per peer under benchmarking/peers/.venvs/<name> (see README.md here).
#
#   bash benchmarking/peers/setup.sh                 # every peer
#   bash benchmarking/peers/setup.sh litdata mosaic  # some of them
#
# Why venvs: some peers conflict with requirements-lock.txt (mosaicml-streaming wants numpy 2.1 and
# crc32c 2.8). Each venv sees the system site-packages, so the lock's torch, torchvision and Pillow
# are reused, and whatever the peer pins differently is installed into the venv, where it shadows the
# system copy. torch and torchvision are held at the system's versions by a constraints file: a peer
# that wants another torch fails here instead of pulling gigabytes. Idempotent: a venv whose
# requirements and constraints have not changed and whose import works is left alone.
# Needs: `pip install -r requirements-lock.txt` first, and access to PyPI.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-python3}"
VENVS="$HERE/.venvs"
ALL=(webdataset litdata mosaic s3torch_map s3torch_iterable)

module_of() {
  case "$1" in
    webdataset) echo webdataset ;;
    litdata) echo litdata ;;
    mosaic) echo streaming ;;
    s3torch_map|s3torch_iterable) echo s3torchconnector ;;
    *) return 1 ;;
  esac
}

if [ "$#" -gt 0 ]; then PEERS=("$@"); else PEERS=("${ALL[@]}"); fi
mkdir -p "$VENVS"

# torch/torchvision/Pillow exactly as installed from the lock.
CONSTRAINTS="$VENVS/constraints.txt"
"$PY" - > "$CONSTRAINTS.tmp" <<'PYEOF' || { echo "setup.sh: install requirements-lock.txt first" >&2; exit 2; }
from importlib.metadata import version
for name in ("torch", "torchvision", "pillow"):
    print(f"{name}=={version(name)}")
PYEOF
mv "$CONSTRAINTS.tmp" "$CONSTRAINTS"

failed=()
for peer in "${PEERS[@]}"; do
  if ! mod="$(module_of "$peer")"; then
    echo "setup.sh: unknown peer '$peer' (known: ${ALL[*]})" >&2; failed+=("$peer"); continue
  fi
  venv="$VENVS/$peer"
  req="$HERE/requirements-$peer.txt"
  stamp="$(cat "$req" "$CONSTRAINTS" | sha256sum | cut -c1-16)"
  check() { "$venv/bin/python" -c "import $mod, importlib.metadata as m; print(m.version('$(head -1 "$req" | cut -d= -f1)'))"; }
  if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.peer-stamp" 2>/dev/null)" = "$stamp" ] && v="$(check 2>/dev/null)"; then
    echo "[$peer] up to date ($v)"; continue
  fi
  echo "[$peer] building $venv"
  rm -rf "$venv"
  if "$PY" -m venv --system-site-packages "$venv" \
     && "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" -c "$CONSTRAINTS" \
     && v="$(check)"; then
    echo "$stamp" > "$venv/.peer-stamp"
    echo "[$peer] ok ($v)"
  else
    echo "[$peer] FAILED" >&2; failed+=("$peer")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "setup.sh: failed: ${failed[*]}" >&2; exit 1
fi
