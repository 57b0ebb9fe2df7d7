#!/usr/bin/env bash
# build-llamacpp.sh BUILD_DIR — llama.cpp's own llama-bench and llama-server,
# built on this machine for this CPU, to compare rill against (make
# bench-vs-llamacpp; llama-bench as in ../shared/ANCHORS.md).
#
# No llama.cpp is packaged in Debian 12, and only Debian's and npm's
# registries are reachable: the source comes from the npm package
# node-llama-cpp, which ships the llama.cpp tree it binds as a git bundle
# (llama/gitRelease.bundle; 3.21.1 bundles llama.cpp 80fb11a).  Built with
# GGML_NATIVE=ON (every vector extension of this CPU, as ANCHORS' llama.cpp
# was), Release, static, no curl; about 15 minutes on 2 cores, once.
#
# Prints the directory of the binaries (BUILD_DIR/llcpp-src/build/bin).
# Not part of make deps, test or bench.  JOBS (default 2): parallel compiles.
set -euo pipefail

B=${1:?usage: tools/build-llamacpp.sh BUILD_DIR}
mkdir -p "$B"
B=$(cd "$B" && pwd)
V=3.21.1   # the pin tools/bench-llamacpp.mjs installs too
NODE=$B/llcpp-node
SRC=$B/llcpp-src
BIN=$SRC/build/bin

if [ -x "$BIN/llama-server" ] && [ -x "$BIN/llama-bench" ]; then
    echo "$BIN"
    exit 0
fi
BUNDLE=$NODE/node_modules/node-llama-cpp/llama/gitRelease.bundle
if [ ! -f "$BUNDLE" ]; then
    mkdir -p "$NODE"
    cat > "$NODE/package.json" <<JSON
{ "name": "rill-llcpp-bench", "private": true, "type": "module",
  "dependencies": { "node-llama-cpp": "$V", "@node-llama-cpp/linux-x64": "$V" } }
JSON
    echo "build-llamacpp: installing node-llama-cpp@$V into $NODE" >&2
    npm install --prefix "$NODE" --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error >&2
fi
rm -rf "$SRC"
git clone -q "$BUNDLE" "$SRC" 2>/dev/null
echo "build-llamacpp: building llama.cpp $(git -C "$SRC" rev-parse --short HEAD) in $SRC/build" >&2
cmake -S "$SRC" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
cmake --build "$SRC/build" -j "${JOBS:-2}" --target llama-bench llama-server >&2
echo "$BIN"
