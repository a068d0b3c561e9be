#!/usr/bin/env bash
# Download the wheels a GPU lease carries (benchmarks/gpu_lease.sh installs them there without an
# index) into gpu_wheels/ (git-ignored): the pydantic set the GPU host lacks, as cp312 manylinux
# x86_64 wheels, and transformers 5.17.0 (installed there only when the host has another version).
# Also REVISION, the checkout's `git describe --always --dirty`: a lease's copy of the tree has no
# .git, so the suite records this as the library revision (run this script right before a lease).
# The device tool carries at most 64 MiB: the script fails when the folder is larger.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-gpu_wheels}
mkdir -p "$DEST"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$DEST" \
    pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing-extensions==4.16.0 transformers==5.17.0
git describe --always --dirty > "$DEST/REVISION" 2>/dev/null || echo unknown > "$DEST/REVISION"
ls -l "$DEST"
bytes=$(du -sb "$DEST" | cut -f1)
echo "$DEST: $((bytes / 1024)) KiB"
if [ "$bytes" -gt $((64 * 1024 * 1024)) ]; then
    echo "$DEST is over the 64 MiB the device tool carries" >&2
    exit 1
fi
