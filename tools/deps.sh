#!/usr/bin/env bash
# Install what rill needs to build, test and run: Debian packages with apt-get,
# front-end packages with npm.  Idempotent and quick when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(
  build-essential pkg-config clang libclang-rt-14-dev
  libzmq3-dev libwebsockets-dev libwebsockets-evlib-ev libopenblas-dev libmsgpack-dev libcjson-dev
  libinih-dev libcmocka-dev libpcre2-dev liburing-dev
  python3 python3-pytest python3-websockets python3-msgpack python3-numpy python3-jinja2
  chromium chromium-driver firefox-esr webkit2gtk-driver xvfb prometheus nodejs npm iproute2 procps
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node and npm may come from elsewhere than Debian (they do on our machines).
if command -v node >/dev/null && command -v npm >/dev/null; then
  tmp=(); for p in "${missing[@]}"; do [[ $p == nodejs || $p == npm ]] || tmp+=("$p"); done
  missing=("${tmp[@]+"${tmp[@]}"}")
fi
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}" >&2
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || true
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# Front-end libraries for the gateway's pages (uPlot for the dashboard).
if [ -f gateway/web/package.json ]; then
  if [ ! -d gateway/web/node_modules ] || [ gateway/web/package.json -nt gateway/web/node_modules ]; then
    echo "deps: npm install in gateway/web" >&2
    (cd gateway/web && npm install --no-audit --no-fund --loglevel=error >&2)
    touch gateway/web/node_modules
  fi
fi
