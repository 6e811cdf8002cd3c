# shellcheck shell=bash
# Shared by scripts/matmul-compare and scripts/heat-bench (sourced, not run):
# building, running every version of a workload once, medians, emulated
# hosts behind the delay link (benches/src/bin/delay-link.rs), calibration,
# and the chart.
#
# Runners print rank 0's result line ("heat rank 0: ..." / "matmul rank
# 0: ..."); PROG is a c-tests/bin program, OPTS its options:
#   run_threads PROG NP OPTS...   one process, NP threads (heat_threads, matmul_threads)
#   run_native  PROG NP OPTS...   NP System V processes on the native kernel
#   run_mpi     PROG NP OPTS...   mpirun, on loopback or across the emulated hosts
#   run_dsm     PROG NP OPTS...   the System V binary under libkdipc.so: `kdipc run`
#                                 on loopback, or ranks on hosts 1, 2 (round-robin)
#                                 with the nameserver on host 0

set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
kdipc=$CARGO_TARGET_DIR/release/kdipc
lib=$CARGO_TARGET_DIR/release/libkdipc.so
delay_link=$CARGO_TARGET_DIR/release/delay-link
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Open MPI ranks spin while they wait and are bound to cores: on a shared
# machine (and with the delay link needing a CPU to forward packets) a
# spinning, pinned rank takes the CPU from the one it waits for. Yielding
# and unbound ranks were 2-3x faster here, so the MPI baseline uses both.
mpi_opts=(--mca mpi_yield_when_idle 1 --bind-to none)

hosts=0          # 1: distributed versions across emulated hosts
delay_us=50      # one-way delay per direction on the emulated link
work=$(mktemp -d /tmp/kdipc-bench-XXXXXX)
key_base=$(( 0x52000000 + ($$ & 0xfff) * 0x1000 ))
key_count=0

progress() { echo "$*" >&2; }
die() { echo "$(basename "$0"): $*" >&2; exit 2; }

build() {
  started="$(date -u '+%F %H:%M UTC'), $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), Linux $(uname -r), load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
  progress "building (cargo build --release, c-tests/build.sh)..."
  cargo build --release --quiet --workspace --bins
  c-tests/build.sh >/dev/null
  for p in heat_mpi matmul_mpi; do
    [ -x "c-tests/bin/$p" ] || die "c-tests/bin/$p missing: install Open MPI (apt-get install openmpi-bin libopenmpi-dev)"
  done
}

next_key() { key_count=$(( key_count + 1 )); printf '0x%x' $(( key_base + key_count * 16 )); }

# Median of numbers on stdin.
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.6f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# Seconds for a table: 4 significant digits.
secs() { awk -v t="$1" 'BEGIN { printf (t < 0.01 ? "%.6f" : "%.4g"), t }'; }

# A field of a result line: `field time` -> 1.234 (the unit s dropped).
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" | sed 's/s$//'; }

rank0() {
  local out
  out=$(grep ' rank 0:' "$1" || true)
  [ -n "$out" ] || { cat "$1" >&2; die "no result line (output above)"; }
  echo "$out"
}

run_threads() {
  local prog=$1 np=$2; shift 2
  "c-tests/bin/$prog" "$@" "$np" >"$work/out" 2>&1 || { cat "$work/out" >&2; die "$prog failed"; }
  rank0 "$work/out"
}

run_native() {
  local prog=$1 np=$2 key pids=() r; shift 2
  key=$(next_key)
  for ((r = np - 1; r >= 0; r--)); do
    KDIPC_NATIVE=1 "c-tests/bin/$prog" "$@" "$r" "$np" "$key" >"$work/out.$r" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || { cat "$work"/out.* >&2; die "$prog (native) failed"; }; done
  rank0 "$work/out.0"
}

run_mpi() {
  local prog=$1 np=$2; shift 2
  if [ "$hosts" = 1 ]; then
    local hl=() r
    for ((r = 0; r < np; r++)); do hl+=("$(host_ip $(( 1 + r % 2 )))"); done
    ip netns exec "$(host_ns 0)" mpirun "${mpi_opts[@]}" --mca plm_rsh_agent "$work/agent" \
      --host "$(IFS=,; echo "${hl[*]}")" -np "$np" --mca btl self,tcp \
      --mca btl_tcp_if_include "$net.0/24" --mca oob_tcp_if_include "$net.0/24" \
      "c-tests/bin/$prog" "$@" >"$work/out" 2>&1 || { cat "$work/out" >&2; die "$prog (MPI, hosts) failed"; }
  else
    local over=()
    [ "$np" -le "$(nproc)" ] || over=(--oversubscribe)
    mpirun "${mpi_opts[@]}" "${over[@]}" -np "$np" "c-tests/bin/$prog" "$@" >"$work/out" 2>&1 \
      || { cat "$work/out" >&2; die "$prog (MPI) failed"; }
  fi
  rank0 "$work/out"
}

run_dsm() {
  local prog=$1 np=$2 key; shift 2
  key=$(next_key)
  if [ "$hosts" = 1 ]; then
    local pids=() r h
    for ((r = np - 1; r >= 0; r--)); do
      h=$(( 1 + r % 2 ))
      ip netns exec "$(host_ns $h)" env LD_PRELOAD="$lib" KDIPC_NAMESERVER="$(host_ip 0):7350" \
        KDIPC_BIND="$(host_ip $h):0" KDIPC_CERT_DIR="$work/certs" \
        "c-tests/bin/$prog" "$@" "$r" "$np" "$key" >"$work/out.$r" 2>&1 &
      pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || { cat "$work"/out.* >&2; die "$prog (DSM, hosts) failed"; }; done
    rank0 "$work/out.0"
  else
    "$kdipc" run -n "$np" -- "c-tests/bin/$prog" "$@" '{rank}' "$np" "$key" >"$work/out" 2>&1 \
      || { cat "$work/out" >&2; die "$prog (DSM) failed"; }
    rank0 "$work/out"
  fi
}

# ---- emulated hosts: 3 namespaces joined by the delay link -----------------

tag=kbn$(( $$ % 100000 ))
net=10.215.$(( $$ % 250 ))
host_ns() { echo "$tag-h$1"; }
host_ip() { echo "$net.$(( $1 + 1 ))"; }
link_pid='' ns_pid='' echo_pid=''

link_up() { # DELAY_US
  : >"$work/link.out"
  "$delay_link" --delay-us "$1" "$(host_ns 0)=$(host_ip 0)/24" "$(host_ns 1)=$(host_ip 1)/24" \
    "$(host_ns 2)=$(host_ip 2)/24" >"$work/link.out" 2>&1 &
  link_pid=$!
  local i
  for ((i = 0; i < 100; i++)); do
    grep -q ready "$work/link.out" && return
    kill -0 "$link_pid" 2>/dev/null || break
    sleep 0.05
  done
  cat "$work/link.out" >&2; die "delay-link did not start"
}

link_down() { [ -z "$link_pid" ] || { kill "$link_pid"; wait "$link_pid" 2>/dev/null || true; link_pid=''; }; }

# Median UDP round trip (64 B) host 1 -> host 2 through the link, in µs.
udp_rtt() {
  command -v python3 >/dev/null || { echo "n/a (python3 missing)"; return; }
  cat >"$work/udp.py" <<'EOF'
import socket, statistics, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if sys.argv[1] == "echo":
    s.bind((sys.argv[2], 7399))
    while True:
        d, a = s.recvfrom(65536)
        s.sendto(d, a)
s.settimeout(1.0)
rtt = []
for _ in range(1000):
    t = time.perf_counter()
    s.sendto(b"x" * 64, (sys.argv[2], 7399))
    s.recvfrom(65536)
    rtt.append((time.perf_counter() - t) * 1e6)
print("%.0f" % statistics.median(rtt))
EOF
  ip netns exec "$(host_ns 2)" python3 "$work/udp.py" echo "$(host_ip 2)" &
  echo_pid=$!
  sleep 0.3
  ip netns exec "$(host_ns 1)" python3 "$work/udp.py" rtt "$(host_ip 2)" || echo "n/a"
  kill "$echo_pid"; wait "$echo_pid" 2>/dev/null || true; echo_pid=''
}

hosts_up() {
  [ "$(id -u)" = 0 ] || die "--hosts needs root (network namespaces)"
  local i
  for i in 0 1 2; do ip netns add "$(host_ns $i)"; done
  link_up 0
  rtt0=$(udp_rtt)
  link_down
  link_up "$delay_us"
  rtt1=$(udp_rtt)
  progress "emulated hosts: UDP round trip host 1 -> host 2 (python, 64 B, median of 1000): ${rtt0} µs at delay 0, ${rtt1} µs at ${delay_us} µs per direction"
  "$kdipc" certs init "$work/certs" >/dev/null
  : >"$work/nameserver.log"
  ip netns exec "$(host_ns 0)" "$kdipc" nameserver --listen "$(host_ip 0):7350" --cert-dir "$work/certs" \
    >/dev/null 2>"$work/nameserver.log" &
  ns_pid=$!
  for ((i = 0; i < 200; i++)); do grep -q 'listening on' "$work/nameserver.log" && break; sleep 0.05; done
  grep -q 'listening on' "$work/nameserver.log" || { cat "$work/nameserver.log" >&2; die "nameserver did not start"; }
  cat >"$work/agent" <<EOF
#!/bin/sh
# rsh agent for mpirun: HOST COMMAND... runs COMMAND in HOST's namespace,
# with a hostname of its own (so that Open MPI treats it as another node).
host=\$1; shift
case \$host in
$(host_ip 1)) ns=$(host_ns 1) ;;
$(host_ip 2)) ns=$(host_ns 2) ;;
*) echo "agent: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$ns" unshare --uts sh -c "hostname \$ns; \$*"
EOF
  chmod +x "$work/agent"
}

cleanup() {
  [ -z "$echo_pid" ] || kill "$echo_pid" 2>/dev/null || true
  [ -z "$ns_pid" ] || { kill "$ns_pid" 2>/dev/null; wait "$ns_pid" 2>/dev/null || true; }
  link_down
  if [ "$hosts" = 1 ]; then
    local i
    for i in 0 1 2; do ip netns del "$(host_ns $i)" 2>/dev/null || true; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# When and on what the run started (build sets it), for table headers.
stamp() { echo "$started; load average at end $(cut -d' ' -f1-3 /proc/loadavg)"; }

# Where the distributed versions ran, for table headers.
where() {
  if [ "$hosts" = 1 ]; then
    echo "distributed versions across 2 emulated hosts (delay link, ${delay_us} µs per direction; UDP RTT ${rtt0} µs at 0, ${rtt1} µs at ${delay_us})"
  else
    echo "all versions on one machine (loopback)"
  fi
}

# chart PNG TITLE DATAFILE NCOLS: clustered bars from a whitespace table
# (first column the row label, then NCOLS time columns with a header line).
chart() {
  local png=$1 title=$2 data=$3 ncols=$4
  if ! command -v gnuplot >/dev/null; then
    progress "no chart: gnuplot not found (Debian: apt-get install gnuplot-nox)"
    return
  fi
  gnuplot <<EOF
set terminal png size 900,500
set output '$png'
set title '$title'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set ylabel 'time (s), log scale'
set logscale y
set key left top
set grid ytics
plot for [c=2:$(( ncols + 1 ))] '$data' using c:xtic(1) title columnheader
EOF
  progress "chart: $png"
}
