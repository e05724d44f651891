#!/usr/bin/env bash
# run_with_redis.sh PROGRAM [ARGS...] — runs PROGRAM against a private redis-server.
#
# Starts `redis-server` (or $LAYERCACHE_REDIS_SERVER) on a free 127.0.0.1 port with no persistence
# and its files in a temporary directory, waits until it answers PING (and checks the answer comes
# from that server), runs `PROGRAM redis://127.0.0.1:PORT ARGS...`, and always stops the server and
# removes the directory — on success, failure, Ctrl-C, and (through a watchdog) when this script is
# killed outright. Exits with PROGRAM's exit code; 1 when the server cannot be started; 77 (ctest's
# skip code for the examples) when redis-server or redis-cli is not installed.
set -euo pipefail

if (($# < 1)); then
  echo "usage: $0 PROGRAM [ARGS...]" >&2
  exit 2
fi
program=$1
shift

server_bin=${LAYERCACHE_REDIS_SERVER:-redis-server}
if ! command -v "$server_bin" >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "run_with_redis.sh: $server_bin or redis-cli not found; skipping" >&2
  exit 77
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/layercache-redis-XXXXXX")
server_pid=""
watchdog_pid=""

# The functions below run from traps and from the start-up loop.
# shellcheck disable=SC2317
stop_server() {
  [[ -n $server_pid ]] || return 0
  if kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do  # up to 5 s for a graceful exit
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

# shellcheck disable=SC2317
cleanup() {
  stop_server
  if [[ -n $watchdog_pid ]]; then
    kill "$watchdog_pid" 2>/dev/null || true
    wait "$watchdog_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# True when the server on $1 answers PING and is the process $2 (another process may have taken
# the port between free_port and the bind).
answers_ping() {
  [[ $(redis-cli -h 127.0.0.1 -p "$1" PING 2>/dev/null) == PONG ]] || return 1
  local pid
  pid=$(redis-cli -h 127.0.0.1 -p "$1" INFO server 2>/dev/null | tr -d '\r' |
        sed -n 's/^process_id://p')
  [[ $pid == "$2" ]]
}

port=""
for attempt in 1 2 3 4 5; do
  candidate=$(free_port)
  "$server_bin" --port "$candidate" --bind 127.0.0.1 --save "" --appendonly no --dir "$tmp" \
    --logfile "$tmp/redis.log" >"$tmp/redis.stdout" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do  # up to 10 s
    kill -0 "$server_pid" 2>/dev/null || break  # exited, e.g. the port was taken meanwhile
    if answers_ping "$candidate" "$server_pid"; then
      port=$candidate
      break
    fi
    sleep 0.1
  done
  [[ -n $port ]] && break
  echo "run_with_redis.sh: redis-server on port $candidate did not come up (attempt $attempt)" >&2
  stop_server
done
if [[ -z $port ]]; then
  echo "run_with_redis.sh: could not start redis-server; its log:" >&2
  tail -n 20 "$tmp/redis.log" "$tmp/redis.stdout" >&2 2>/dev/null || true
  exit 1
fi

# If this script is killed with SIGKILL (no trap runs), the watchdog still stops the server and
# removes its directory.
self=$$
( trap - EXIT INT TERM
  # Alive and not a zombie (a killed script may wait a while to be reaped by its new parent).
  while [[ $(ps -o stat= -p "$self" 2>/dev/null) == [^Z]* ]]; do sleep 0.5; done
  kill -KILL "$server_pid" 2>/dev/null
  sleep 0.5
  rm -rf "$tmp" ) </dev/null >/dev/null 2>&1 &
watchdog_pid=$!

echo "run_with_redis.sh: redis-server pid $server_pid on 127.0.0.1:$port"
set +e
"$program" "redis://127.0.0.1:$port" "$@"
rc=$?
set -e
exit "$rc"
