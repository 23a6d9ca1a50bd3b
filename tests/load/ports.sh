# Loopback ports for the benchmark scripts (sourced after deploy/local/common.sh, for die).

# A TCP port on 127.0.0.1 that nothing listens on.
free_port() {
  local port _
  for _ in $(seq 1 50); do
    port=$((20000 + RANDOM % 12000)) # below the ephemeral range
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      printf '%s' "$port"
      return 0
    fi
  done
  die "no free TCP port found"
}

# Waits (at most 30 s) until something listens on port $1 of 127.0.0.1.
wait_port() {
  local _
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  die "nothing listens on port $1"
}
