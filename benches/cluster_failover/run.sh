#!/usr/bin/env bash
# Hot standby failover figures (issue #16): N runs of tests/cluster_failover.rs's
# live-call failover in network namespaces (gwA active, gwB its standby, keepalived
# VRRPv3 with 0.1 s adverts, redis-server; gwA's node unplugged and SIGKILLed with an SRTP
# call at 50 packets/s each way), then the per-run values and the medians of:
#   - VIP move:  gwA's death to the VIP on gwB (keepalived alone),
#   - takeover:  duration of gwB's claim + install (`sbc-edge cluster status`, last_takeover),
#   - gap:       largest inter-arrival of authenticated media, each direction,
#   - lost:      packets sent and never received, each direction,
#   - auth failures (SRTP packets that did not authenticate, both sides).
#
# Usage: benches/cluster_failover/run.sh [--runs N] [--debug]
# Needs root, keepalived, redis-server, iproute2 and python3 (for the medians). Release
# build by default (--debug: the debug test binary). Each run takes ~10 s; bounded by
# RUN_TIMEOUT per run.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=5
PROFILE=--release
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="$2"; shift 2 ;;
    --debug) PROFILE=""; shift ;;
    *) echo "usage: $0 [--runs N] [--debug]" >&2; exit 2 ;;
  esac
done
RUN_TIMEOUT=180
TEST=srtp_call_survives_the_active_gateway_dying_and_the_caller_hangs_up_through_the_standby

if [ "$(id -u)" != 0 ]; then echo "$0: needs root (network namespaces)" >&2; exit 1; fi
for b in keepalived redis-server ip python3; do
  command -v "$b" >/dev/null || { echo "$0: $b not installed" >&2; exit 1; }
done

# shellcheck disable=SC2086
cargo test $PROFILE --test cluster_failover --no-run 2>&1 | tail -1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq 1 "$RUNS"); do
  # shellcheck disable=SC2086
  if timeout "$RUN_TIMEOUT" cargo test $PROFILE --test cluster_failover "$TEST" -- \
      --exact --nocapture --test-threads=1 >"$out/run$i.log" 2>&1; then
    verdict=pass
  else
    verdict=FAIL
  fi
  # The line may follow libtest's "test NAME ... " on the same line.
  line=$(grep -o 'FAILOVER_RESULT {.*}' "$out/run$i.log" | head -1 | sed 's/^FAILOVER_RESULT //' || true)
  if [ -z "$line" ]; then
    echo "run $i: $verdict, no figures (the call did not reach the failover); last lines:"
    tail -5 "$out/run$i.log" | sed 's/^/    /'
    line='{}'
  fi
  echo "{\"run\": $i, \"verdict\": \"$verdict\", \"load\": \"$(cut -d' ' -f1 /proc/loadavg)\", \"figures\": $line}" >>"$out/all.jsonl"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$out/all.jsonl" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
cols = [
    ("vip_move_ms", "VIP move ms"),
    ("takeover_ms", "takeover ms"),
    ("gap_caller_to_callee_ms", "gap c->e ms"),
    ("gap_callee_to_caller_ms", "gap e->c ms"),
    ("lost_caller_to_callee", "lost c->e"),
    ("lost_callee_to_caller", "lost e->c"),
    ("auth_failures", "auth fail"),
]
def cell(v):
    return "-" if v is None else (f"{v:.0f}" if isinstance(v, float) else str(v))
print("| run | result | load | " + " | ".join(c[1] for c in cols) + " |")
print("|---|---|---|" + "---|" * len(cols))
for r in runs:
    f = r["figures"]
    print(f"| {r['run']} | {r['verdict']} | {r['load']} | " + " | ".join(cell(f.get(k)) for k, _ in cols) + " |")
med = []
for k, _ in cols:
    vals = [r["figures"][k] for r in runs if isinstance(r["figures"].get(k), (int, float))]
    med.append(cell(float(statistics.median(vals))) if vals else "-")
print(f"| median | {sum(r['verdict'] == 'pass' for r in runs)}/{len(runs)} pass | | " + " | ".join(med) + " |")
EOF
