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
  # what a killed rollout worker, base build or test start-up leaves (their owners remove them on a clean
  # exit); only here, where no run is left alive: a live worker keeps writing adapter versions into its own
  find /tmp -maxdepth 1 \( -name 'medground-adapters-*' -o -name 'medground-base-*' \
    -o -name 'medground-test-start-*' \) -user "$(id -u)" -exec rm -rf {} + 2>/dev/null
fi
uid=$(id -u)
# Files a live process still maps, holds open or listens on belong to someone's running engine (another
# test session, a benchmark, a served app on the same machine): never delete those. Only files older than
# the snapshot below are candidates: one created while it is taken (an engine starting in another session
# creates its semaphore, then its child opens it) is not in the snapshot yet, and deleting it broke that
# engine's start ("SemLock._rebuild: FileNotFoundError").
snapshot=$(mktemp)
trap 'rm -f "$snapshot"' EXIT
in_use=$( { cat /proc/[0-9]*/maps 2>/dev/null | awk '$6 ~ /^\/dev\/shm\// {print $6}'
            ls -l /proc/[0-9]*/fd 2>/dev/null | grep -o '/dev/shm/[^ ]*'
            awk 'NR > 1 && $8 ~ /^\// {print $8}' /proc/net/unix 2>/dev/null; } | sort -u )
remove_unused() {
  while IFS= read -r -d '' path; do
    grep -qxF -- "$path" <<<"$in_use" || rm -f -- "$path"
  done
}
find /dev/shm -maxdepth 1 \( -name 'psm_*' -o -name 'sem.mp-*' -o -name 'vllm*' -o -name 'deepspeed_allreduce_buffer_*' \) -user "$uid" "${newer[@]}" ! -newer "$snapshot" -print0 2>/dev/null | remove_unused
find /tmp -maxdepth 1 -type s -user "$uid" "${newer[@]}" ! -newer "$snapshot" -print0 2>/dev/null | remove_unused
exit 0
