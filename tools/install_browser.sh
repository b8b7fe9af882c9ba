#!/usr/bin/env bash
# Install Debian's chromium and chromedriver for the page test (tests/integration/test_serve.py) when
# missing; run by tools/setup_env.sh, safe to run again. Needs root (or sudo) and apt; on failure it says
# what to do and exits 0 so the rest of the setup still completes (only the browser test skips).
set -u
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo -n"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "browser: apt-get not found; install Chromium and a matching chromedriver on PATH yourself" \
       "(the Serve page test skips without them)" >&2
  exit 0
fi
echo "browser: installing Debian chromium and chromium-driver (apt-get, once)"
log=$(mktemp)
if DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq >"$log" 2>&1 &&
   DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
     chromium chromium-driver >>"$log" 2>&1; then
  rm -f "$log"
  echo "browser: $(chromium --version 2>/dev/null), $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2)"
else
  echo "browser: could not install chromium/chromium-driver (log: $log). Run as root:" \
       "apt-get update && apt-get install -y chromium chromium-driver" \
       "(the Serve page test skips until both are on PATH)" >&2
fi
exit 0
