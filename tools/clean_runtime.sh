#!/usr/bin/env bash
# Remove what Ray and vLLM leave behind when a test or a run is killed: Ray sessions, vLLM shared
# memory and semaphores, stray IPC sockets.
#   tools/clean_runtime.sh                 everything (CI, after all tests; stops any local Ray)
#   tools/clean_runtime.sh --newer FILE    only files created after FILE (end of a test session)
set -u
cd "$(dirname "$0")/.."
newer=()
if [ "${1:-}" = "--newer" ] && [ -e "${2:-}" ]; then
  newer=(-newer "$2")
else
  [ -x .venv/bin/ray ] && timeout 60 .venv/bin/ray stop --force >/dev/null 2>&1
  rm -rf /tmp/ray/session_* 2>/dev/null
fi
uid=$(id -u)
find /dev/shm -maxdepth 1 \( -name 'psm_*' -o -name 'sem.mp-*' -o -name 'vllm*' \) -user "$uid" "${newer[@]}" -delete 2>/dev/null
find /tmp -maxdepth 1 -type s -user "$uid" "${newer[@]}" -delete 2>/dev/null
exit 0
