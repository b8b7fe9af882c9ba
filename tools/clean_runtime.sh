#!/usr/bin/env bash
# Remove what Ray and vLLM leave behind when a test or a run is killed: Ray sessions, vLLM shared
# memory and semaphores, stray IPC sockets. Safe to run at any time when no job is running.
set -u
cd "$(dirname "$0")/.."
[ -x .venv/bin/ray ] && timeout 60 .venv/bin/ray stop --force >/dev/null 2>&1
rm -rf /tmp/ray/session_* 2>/dev/null
find /dev/shm -maxdepth 1 \( -name 'psm_*' -o -name 'sem.mp-*' -o -name 'vllm*' \) -user "$(id -u)" -delete 2>/dev/null
find /tmp -maxdepth 1 -type s -user "$(id -u)" -delete 2>/dev/null
exit 0
