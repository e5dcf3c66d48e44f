#!/usr/bin/env bash
# corridor beside its peers, in one run, on one topology.
#
#   sudo benches/lab/run.sh [--seconds N] [--workers] [IMPL ...]
#
# IMPL: plain (the veth itself, no tunnel), corridor, wireguard-go, boringtun, tinc, nebula.
# Default: all of them. Each one gets the topology of ../shared/lab/peers.sh (sourced from the
# repository's parent: namespaces lab-a and lab-b, a veth "WAN" 192.168.77.1 <-> .2, inner
# addresses 10.77.0.1 <-> .2, MTU 1420) and iperf3 from lab-a to lab-b for N seconds (default
# 8), with one stream and with four (-P 4). It prints a table: Gbit/s; CPU seconds per GB
# carried, of the tunnel's own processes (utime + stime from /proc/PID/stat of every process in
# the two namespaces before iperf3 starts, i.e. the tunnel daemons; n/a for plain veth, which
# has none); and corridor's throughput as a multiple of each row's. Last, the ceiling: the
# ChaCha20-Poly1305 speed of one core of this machine (`corridor bench --aead-only`), and
# corridor's throughput as a fraction of it.
#
# corridor runs as two gateway processes, gateway A inside lab-a and gateway B inside lab-b,
# each serving one app whose namespace is the lab namespace itself: the TUN device corridor0
# is created in lab-a with 10.77.0.1/32 and a route to 10.77.0.2/32 (and the reverse in
# lab-b). The policy allows TCP (any port) and ICMP from A to B; replies pass by connection
# tracking; policy enforcement stays on.
#
# Needs root, iproute2, iperf3 and python3. The corridor binary is $CORRIDOR_BIN, or built here
# (cargo build --release -p corridor into target/lab-bin). Peers that are not installed are
# reported as such; install them with:
#   apt-get install -y wireguard-go wireguard-tools iperf3 tinc nebula
#   cargo install boringtun-cli --locked
#
# --workers: corridor's packet workers. Two tenants on the same two gateways (the second on
# corridor1, 10.77.1.1 <-> .2), one iperf3 stream per tenant at the same time, first with
# `workers = 1`, then with `workers = 2`, in the same run; prints each tenant's Gbit/s, the
# aggregate, and the ratio of the aggregates. Without IMPL it runs only this comparison.
# KEEP_STATUS=PREFIX keeps gateway B's `corridor status --json` of each as PREFIX-w1.json and
# PREFIX-w2.json (per worker: its tenants, datagrams received, handed over).
set -u

die() { echo "run.sh: $*" >&2; exit 1; }

SECS=8; IMPLS=(); WORKERS_CMP=
while [ $# -gt 0 ]; do
  case $1 in
    --seconds) [ $# -ge 2 ] || die "--seconds needs a number"; SECS=$2; shift 2 ;;
    --workers) WORKERS_CMP=1; shift ;;
    -h|--help) sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    plain|corridor|wireguard-go|boringtun|tinc|nebula) IMPLS+=("$1"); shift ;;
    *) die "unknown argument $1 (IMPL: plain corridor wireguard-go boringtun tinc nebula)" ;;
  esac
done
case $SECS in ''|*[!0-9]*|0) die "--seconds takes a whole number of seconds, at least 1" ;; esac
[ ${#IMPLS[@]} -gt 0 ] || [ -n "$WORKERS_CMP" ] || IMPLS=(plain corridor wireguard-go boringtun tinc nebula)

ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel 2>/dev/null) ||
  die "cannot find the repository root (run it from a checkout of corridor)"
PEERS="$ROOT/../shared/lab/peers.sh"
[ -f "$PEERS" ] || die "the peers' lab is missing: expected $PEERS (the shared lab next to the repository)"
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, TUN devices): sudo $0 $*"
for tool in ip iperf3 python3; do
  command -v "$tool" >/dev/null || die "needs $tool (apt-get install -y iproute2 iperf3 python3)"
done

# lab_up, lab_down, lab_iperf, wait_ping, up_<peer>; A, B, IA, IB, WA, WB, WORK.
# shellcheck source=/dev/null
. "$PEERS" --lib || die "cannot source $PEERS"
cleanup() { lab_down; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'echo "interrupted: removing the lab" >&2; exit 130' INT TERM

# The corridor binary: given, or a release build of this checkout (never the test build, which
# carries the virtual clock and refuses to run a gateway).
CORRIDOR=${CORRIDOR_BIN:-}
if [ -z "$CORRIDOR" ]; then
  if command -v cargo >/dev/null; then
    echo "building corridor (cargo build --release -p corridor) ..." >&2
    (cd "$ROOT" && cargo build --release --locked -q -p corridor --target-dir "$ROOT/target/lab-bin") >&2 &&
      CORRIDOR="$ROOT/target/lab-bin/release/corridor"
  fi
fi

installed() {
  case $1 in
    plain) return 0 ;;
    corridor) [ -n "$CORRIDOR" ] && [ -x "$CORRIDOR" ] ;;
    wireguard-go) command -v wireguard-go >/dev/null && command -v wg >/dev/null ;;
    boringtun) command -v wg >/dev/null &&
      { command -v boringtun-cli >/dev/null || [ -x "$HOME/.cargo/bin/boringtun-cli" ]; } ;;
    tinc) command -v tincd >/dev/null ;;
    nebula) command -v nebula >/dev/null && command -v nebula-cert >/dev/null ;;
  esac
}

# Two gateways of one tenant: gw-a in lab-a, gw-b in lab-b; keys made by `corridor keys generate`.
# With $1 = 2, a second tenant "lab2" on corridor1 (10.77.1.1 <-> .2); $2 = the gateways'
# `workers` setting (default: theirs, "auto").
up_corridor() {
  local d="$WORK/corridor" ka kb s ns tenants=${1:-1} workers=${2:-}
  rm -rf "$d"
  mkdir -p "$d/policy/tenants" || return 1
  if [ "$tenants" = 2 ]; then
    cat >"$d/policy/tenants/lab2.toml" <<EOF
name = "lab2"
address-space = ["10.77.1.0/24"]

[[endpoint]]
name = "app2-a"
gateway = "gw-a"
netns = "$A"
interface = "corridor1"
addresses = ["10.77.1.1/32"]

[[endpoint]]
name = "app2-b"
gateway = "gw-b"
netns = "$B"
interface = "corridor1"
addresses = ["10.77.1.2/32"]

[[allow]]
from = "app2-a"
to = "app2-b"
protocol = "tcp"

[[allow]]
from = "app2-a"
to = "app2-b"
protocol = "icmp"
EOF
  fi
  cat >"$d/policy/tenants/lab.toml" <<EOF
name = "lab"
address-space = ["10.77.0.0/24"]

[[endpoint]]
name = "app-a"
gateway = "gw-a"
netns = "$A"
addresses = ["$IA/32"]

[[endpoint]]
name = "app-b"
gateway = "gw-b"
netns = "$B"
addresses = ["$IB/32"]

[[allow]]                 # iperf3: its control connection and its data streams, any port
from = "app-a"
to = "app-b"
protocol = "tcp"

[[allow]]                 # the lab pings before it measures
from = "app-a"
to = "app-b"
protocol = "icmp"
EOF
  gateways() {
    printf '[[gateway]]\nname = "gw-a"\nendpoint = "%s:51820"\n%s\n\n' "$WA" "$1"
    printf '[[gateway]]\nname = "gw-b"\nendpoint = "%s:51820"\n%s\n' "$WB" "$2"
  }
  gateways "" "" >"$d/policy/gateways.toml"
  ka=$("$CORRIDOR" keys generate --policy "$d/policy" --gateway gw-a --out "$d/keys/gw-a" 2>>"$d/keys.log") || return 1
  kb=$("$CORRIDOR" keys generate --policy "$d/policy" --gateway gw-b --out "$d/keys/gw-b" 2>>"$d/keys.log") || return 1
  gateways "$ka" "$kb" >"$d/policy/gateways.toml"
  for s in a b; do
    if [ $s = a ]; then ns=$A; else ns=$B; fi
    printf 'name = "gw-%s"\nkey-dir = "%s"\nlisten = "0.0.0.0:51820"\ncontrol-socket = "%s"\npolicy = "%s"\nmtu = 1420\n' \
      $s "$d/keys/gw-$s" "$d/gw-$s.sock" "$d/policy" >"$d/gw-$s.toml"
    [ -n "$workers" ] && echo "workers = $workers" >>"$d/gw-$s.toml"
    ip netns exec "$ns" env RUST_LOG=warn "$CORRIDOR" gateway run --config "$d/gw-$s.toml" \
      </dev/null >"$d/gw-$s.log" 2>&1 &
  done
  for _ in $(seq 1 50); do
    ip -n "$A" link show corridor0 >/dev/null 2>&1 && ip -n "$B" link show corridor0 >/dev/null 2>&1 &&
      { [ "$tenants" = 1 ] || { ip -n "$A" link show corridor1 && ip -n "$B" link show corridor1; } >/dev/null 2>&1; } &&
      { echo "$IB"; return 0; }
    sleep 0.2
  done
  cat "$d"/gw-*.log >&2
  return 1
}

# utime + stime (ticks of 1/100 s) of the given processes, summed.
cpu_ticks() {
  local t=0 p v
  for p in "$@"; do
    v=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null) && t=$((t + v))
  done
  echo $t
}

# AEAD ceiling: one core, 1420-byte buffers, the best core of this machine.
CEILING=""; CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
if [ -n "$CORRIDOR" ] && [ -x "$CORRIDOR" ]; then
  echo "measuring the AEAD ceiling (corridor bench --aead-only) ..." >&2
  read -r CEILING CPU_MODEL < <("$CORRIDOR" bench --aead-only --seconds 2 --json 2>/dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin)
print(r["ceiling"]["aead_1420_gbit_per_s"], r["machine"]["cpu_model"] or "unknown CPU")')
fi

declare -A G1 G4 C1 C4 NOTE
for impl in "${IMPLS[@]}"; do
  if ! installed "$impl"; then
    NOTE[$impl]="not installed"
    [ "$impl" = corridor ] && NOTE[$impl]="not built (no cargo here: set CORRIDOR_BIN)"
    continue
  fi
  echo "$impl ..." >&2
  lab_up || die "cannot create the namespaces"
  addr=$("up_$impl" 2>/dev/null | tail -1)
  if [ -z "$addr" ] || ! wait_ping "$addr"; then
    NOTE[$impl]="failed: the tunnel did not come up"; lab_down; continue
  fi
  # Every process in the two namespaces now is the tunnel's (iperf3 is not started yet).
  mapfile -t pids < <( { ip netns pids "$A"; ip netns pids "$B"; } 2>/dev/null | sort -u)
  for p in 1 4; do
    c0=$(cpu_ticks "${pids[@]}")
    rate=$(lab_iperf "$addr" "$SECS" -P "$p")
    c1=$(cpu_ticks "${pids[@]}")
    cpu=$(awk -v r="$rate" -v s="$SECS" -v c=$((c1 - c0)) -v n="${#pids[@]}" 'BEGIN {
      if (n == 0 || r !~ /^[0-9.]+$/ || r == 0) print "n/a"; else printf "%.2f", (c / 100) / (r * s / 8) }')
    if [ "$p" = 1 ]; then G1[$impl]=$rate; C1[$impl]=$cpu; else G4[$impl]=$rate; C4[$impl]=$cpu; fi
    sleep 1
  done
  lab_down
done

# corridor as a multiple of x: "1.23x", or "-" when either is missing.
ratio() { awk -v c="${1:-}" -v x="${2:-}" 'BEGIN {
  if (c ~ /^[0-9.]+$/ && x ~ /^[0-9.]+$/ && x > 0) printf "%.2fx", c / x; else print "-" }'; }

if [ ${#IMPLS[@]} -gt 0 ]; then
echo
echo "corridor lab, $(date -u +%Y-%m-%d), ${CPU_MODEL:-unknown CPU}, $(nproc) CPUs, kernel $(uname -r)"
echo "iperf3 lab-a -> lab-b through each tunnel, $SECS s per run, MTU 1420; CPU = the tunnel's processes"
printf '%-14s %10s %10s %10s %10s %12s %12s\n' "" "1 stream" "" "4 streams" "" "corridor is" ""
printf '%-14s %10s %10s %10s %10s %12s %12s\n' "impl" "Gbit/s" "CPU s/GB" "Gbit/s" "CPU s/GB" "(1 stream)" "(4 streams)"
for impl in "${IMPLS[@]}"; do
  name=$impl; [ "$impl" = plain ] && name="plain veth"
  if [ -n "${NOTE[$impl]:-}" ]; then printf '%-14s %s\n' "$name" "${NOTE[$impl]}"; continue; fi
  printf '%-14s %10s %10s %10s %10s %12s %12s\n' "$name" "${G1[$impl]}" "${C1[$impl]}" "${G4[$impl]}" "${C4[$impl]}" \
    "$(ratio "${G1[corridor]:-}" "${G1[$impl]}")" "$(ratio "${G4[corridor]:-}" "${G4[$impl]}")"
done
if [ -n "$CEILING" ]; then
  awk -v a="$CEILING" -v c1="${G1[corridor]:-}" -v c4="${G4[corridor]:-}" 'BEGIN {
    printf "AEAD ceiling: ChaCha20-Poly1305 on one core of this machine, 1420-byte packets: %.2f Gbit/s\n", a
    if (c1 ~ /^[0-9.]+$/ && a > 0) printf "corridor reaches %.1f%% of it with 1 stream, %.1f%% with 4 streams\n", 100 * c1 / a, 100 * c4 / a }'
else
  echo "AEAD ceiling: not measured (no corridor binary)"
fi
fi

# --workers: two tenants, one stream each at the same time, workers = 1 then 2.
rate_of() { python3 -c 'import json,sys
try:
    e=json.load(open(sys.argv[1]))["end"]; print(round((e.get("sum_received") or e["sum"])["bits_per_second"]/1e9,3))
except Exception: print("failed")' "$1"; }
if [ -n "$WORKERS_CMP" ]; then
  if ! installed corridor; then
    echo "workers comparison: corridor not built (no cargo here: set CORRIDOR_BIN)"
    exit 0
  fi
  declare -A W1 W2 WT
  for w in 1 2; do
    echo "corridor, two tenants, workers = $w ..." >&2
    lab_up || die "cannot create the namespaces"
    if ! up_corridor 2 "$w" >/dev/null 2>&1 || ! wait_ping "$IB" || ! wait_ping 10.77.1.2; then
      echo "workers = $w: the tunnels did not come up" >&2; cat "$WORK"/corridor/gw-*.log >&2; lab_down; continue
    fi
    ip netns exec "$B" iperf3 -s -1 -D -B "$IB" -p 5201 >/dev/null 2>&1
    ip netns exec "$B" iperf3 -s -1 -D -B 10.77.1.2 -p 5202 >/dev/null 2>&1
    sleep 0.5
    ip netns exec "$A" timeout $((SECS + 10)) iperf3 -c "$IB" -p 5201 -t "$SECS" -J >"$WORK/w$w-1.json" 2>/dev/null &
    p1=$!
    ip netns exec "$A" timeout $((SECS + 10)) iperf3 -c 10.77.1.2 -p 5202 -t "$SECS" -J >"$WORK/w$w-2.json" 2>/dev/null &
    p2=$!
    wait $p1 $p2
    W1[$w]=$(rate_of "$WORK/w$w-1.json"); W2[$w]=$(rate_of "$WORK/w$w-2.json")
    WT[$w]=$(awk -v a="${W1[$w]}" -v b="${W2[$w]}" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/) print a + b; else print "failed" }')
    ip netns exec "$B" "$CORRIDOR" status --socket "$WORK/corridor/gw-b.sock" --json >"$WORK/w$w-status.json" 2>/dev/null || true
    [ -n "${KEEP_STATUS:-}" ] && cp "$WORK/w$w-status.json" "$KEEP_STATUS-w$w.json"
    lab_down
    sleep 1
  done
  echo
  echo "corridor workers, $(date -u +%Y-%m-%d), ${CPU_MODEL:-unknown CPU}, $(nproc) CPUs, kernel $(uname -r)"
  echo "two tenants on the same two gateways, one iperf3 stream each at the same time, $SECS s, MTU 1420"
  printf '%-12s %12s %12s %12s\n' "" "tenant lab" "tenant lab2" "aggregate"
  printf '%-12s %12s %12s %12s\n' "workers" "Gbit/s" "Gbit/s" "Gbit/s"
  for w in 1 2; do
    printf '%-12s %12s %12s %12s\n' "$w" "${W1[$w]:-failed}" "${W2[$w]:-failed}" "${WT[$w]:-failed}"
  done
  awk -v a="${WT[1]:-}" -v b="${WT[2]:-}" 'BEGIN {
    if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && a > 0) printf "workers = 2 carries %.2fx the aggregate of workers = 1\n", b / a
    else print "ratio: -" }'
fi
