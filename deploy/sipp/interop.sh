#!/usr/bin/env bash
# CI interop stage: real sipp calls through the real gateway over TLS, all on loopback.
#
#   sipp UAC --TCP--> stunnel client --TLS--> sbc-edge --TLS--> stunnel server --TCP--> sipp UAS
#   (127.0.0.1:UAC_TCP)              (127.0.0.1:GW)            (127.0.0.1:TRUNK)      (127.0.0.1:UAS)
#
# and, for the UDP variant (a PBX inside over plain UDP; sipp speaks UDP natively):
#
#   sipp UAC --TCP--> stunnel client --TLS--> sbc-edge ==UDP (from its UDP listener GW_UDP)==> sipp UAS
#                                                                                   (127.0.0.1:UDP_UAS)
#
# Stages (each must have zero failed calls on BOTH sipp sides, or the script fails):
#   1. basic call: 500 calls at 25 calls/s
#   2. hold re-INVITE (sendonly, then sendrecv): a few calls
#   3. CANCEL after 180 (UAS answers 487): a few calls
#   3b. reliable 183 and PRACK (RFC 3262; uac_prack.xml, uas_prack.xml): a few calls; the
#      UAS checks that the PRACK's RAck carries its own RSeq (the caller saw another one)
#   4. media: a few calls, one at a time, signalled by sipp (uac_media.xml, uas_media.xml);
#      during each call `sbc-edge media-check` (the SRTP sender/receiver of `sbc-edge call`)
#      plays both ends of its media: SRTP sent to the caller-side relay port with the
#      caller's offered key must arrive decryptable with the gateway's key toward the
#      callee, and the other way; no packet may be missing beyond media-check's loss bound
#   4b. udp: basic calls whose route (called numbers starting with 2) is
#      sip:127.0.0.1:UDP_UAS;transport=udp, the UAS being sipp over plain UDP
#   4c. recording: basic calls of tenant `rec` (recognised by the SNI rec.localhost, sent by a
#      second stunnel client), whose [tenants.recording] (mode always, on_failure required,
#      SRTP) records every call to a sipp SRS (uas_srs.xml) behind a third stunnel in
#      server mode: each call must be answered on the trunk and recorded (INVITE with the
#      multipart SDP + rs-metadata body, 200, ACK, BYE at the call's end) with no failure
#      on any of the three sipp sides
#   5. max-rate probe (informational, never fails CI): a rate ramp of basic calls; reports
#      the highest rate held with zero failures and the CPU used by each process.
#
# Needs: sipp (Debian: sip-tester), stunnel4, openssl, cargo, coreutils timeout.
# Every step is bounded in time; everything started here is stopped on exit.
#
# Environment (all optional):
#   SBC_INTEROP_GW_PORT=5061 SBC_INTEROP_TRUNK_PORT=5062 SBC_INTEROP_UAC_PORT=5071
#   SBC_INTEROP_UAS_PORT=5072          ports on 127.0.0.1
#   SBC_INTEROP_GW_UDP_PORT=5060 SBC_INTEROP_UDP_UAS_PORT=5074  UDP ports on 127.0.0.1
#   SBC_INTEROP_UDP_CALLS=200 SBC_INTEROP_UDP_RATE=20  stage udp size and rate (0 calls: skip)
#   SBC_INTEROP_REC_CALLS=5            calls in stage recording (0: skip)
#   SBC_INTEROP_REC_UAC_PORT=5073 SBC_INTEROP_SRS_PORT=5064 SBC_INTEROP_SRS_SIPP_PORT=5075
#                                      the rec tenant's stunnel client, the SRS's TLS and
#                                      plain ports on 127.0.0.1
#   SBC_INTEROP_CALLS=500 SBC_INTEROP_RATE=25   stage 1 size and rate
#   SBC_INTEROP_SMALL_CALLS=5          calls in stages 2 and 3
#   SBC_INTEROP_MEDIA_CALLS=3          calls in stage 4 (media), each with 1 s of SRTP each way
#   SBC_INTEROP_PROBE_RATES="50 100 200 400 800 1600"  ramp (calls/s); empty: skip stage 4
#   SBC_INTEROP_PROBE_SECS=5           seconds of calls per ramp step
#   SBC_INTEROP_BUILD_TIMEOUT=2400     bound on `cargo build --release` (seconds)
#   SBC_INTEROP_SKIP_BUILD=1           use an already built binary
#   SBC_EDGE_BIN=path                  use this binary (implies no build)
#   SBC_INTEROP_KEEP=1                 keep the work directory even on success
#   CARGO_TARGET_DIR                   respected (binary at $CARGO_TARGET_DIR/release/sbc-edge)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RUN=$HERE/run.sh

GW_PORT=${SBC_INTEROP_GW_PORT:-5061}
TRUNK_PORT=${SBC_INTEROP_TRUNK_PORT:-5062}
UAC_PORT=${SBC_INTEROP_UAC_PORT:-5071}
UAS_PORT=${SBC_INTEROP_UAS_PORT:-5072}
GW_UDP_PORT=${SBC_INTEROP_GW_UDP_PORT:-5060}
UDP_UAS_PORT=${SBC_INTEROP_UDP_UAS_PORT:-5074}
UDP_CALLS=${SBC_INTEROP_UDP_CALLS:-200}
UDP_RATE=${SBC_INTEROP_UDP_RATE:-20}
REC_CALLS=${SBC_INTEROP_REC_CALLS:-5}
REC_UAC_PORT=${SBC_INTEROP_REC_UAC_PORT:-5073}
SRS_PORT=${SBC_INTEROP_SRS_PORT:-5064}
SRS_SIPP_PORT=${SBC_INTEROP_SRS_SIPP_PORT:-5075}
CALLS=${SBC_INTEROP_CALLS:-500}
RATE=${SBC_INTEROP_RATE:-25}
SMALL=${SBC_INTEROP_SMALL_CALLS:-5}
MEDIA_CALLS=${SBC_INTEROP_MEDIA_CALLS:-3}
PROBE_RATES=${SBC_INTEROP_PROBE_RATES-50 100 200 400 800 1600}
PROBE_SECS=${SBC_INTEROP_PROBE_SECS:-5}
BUILD_TIMEOUT=${SBC_INTEROP_BUILD_TIMEOUT:-2400}

say() { printf '\n=== interop: %s\n' "$*"; }
fail() { printf '\n=== interop: FAILED: %s\n' "$*" >&2; failed=1; exit 1; }

for tool in sipp openssl timeout cargo awk curl; do
  command -v "$tool" >/dev/null || { echo "interop: $tool not found" >&2; exit 1; }
done
if command -v stunnel4 >/dev/null; then STUNNEL=stunnel4
elif command -v stunnel >/dev/null; then STUNNEL=stunnel
else echo "interop: stunnel not found (apt-get install stunnel4)" >&2; exit 1; fi

work=$(mktemp -d "${TMPDIR:-/tmp}/sbc-interop.XXXXXX")
failed=0
pids=()        # processes to stop on exit, in reverse order of start
uas_pid=""

stop_pid() { # stop_pid PID: TERM, wait up to 20 s, then KILL
  local p=$1
  kill -TERM "$p" 2>/dev/null || return 0
  for _ in $(seq 200); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}

on_exit() {
  local rc=$? i
  trap - EXIT INT TERM
  [ -n "$uas_pid" ] && stop_pid "$uas_pid"
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[i]}"; done
  if [ "$rc" != 0 ] || [ "$failed" != 0 ]; then
    echo "--- gateway stderr (last 60 lines): $work/gateway.log" >&2
    tail -n 60 "$work/gateway.log" 2>/dev/null >&2 || true
    for f in "$work"/stunnel-*.log; do
      [ -f "$f" ] || continue
      echo "--- $f (last 15 lines)" >&2; tail -n 15 "$f" >&2
    done
    echo "interop: logs kept in $work" >&2
    [ "$rc" != 0 ] || rc=1
  elif [ "${SBC_INTEROP_KEEP:-0}" = 1 ]; then
    echo "interop: logs kept in $work"
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

tcp_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }
wait_port() { # wait_port PORT PID WHAT: bounded wait (20 s) for a listener
  for _ in $(seq 200); do
    tcp_open 127.0.0.1 "$1" && return 0
    kill -0 "$2" 2>/dev/null || fail "$3 exited before listening on 127.0.0.1:$1"
    sleep 0.1
  done
  fail "$3 is not listening on 127.0.0.1:$1 after 20 s"
}
start_stunnel() { # start_stunnel CONF LOG
  : >"$2"
  # it logs to the "output" file; stderr only matters if it fails before opening that
  "$STUNNEL" "$1" >"$2.stderr" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    grep -q "Configuration successful" "$2" && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  cat "$2" "$2.stderr" >&2
  fail "stunnel did not start with $1"
}

for p in "$GW_PORT" "$TRUNK_PORT" "$UAC_PORT" "$UAS_PORT" "$REC_UAC_PORT" "$SRS_PORT" "$SRS_SIPP_PORT"; do
  tcp_open 127.0.0.1 "$p" && fail "127.0.0.1:$p is already in use (override with SBC_INTEROP_*_PORT)"
done

# --- throwaway PKI -------------------------------------------------------------------
say "test PKI in $work"
pki=$work/pki
"$HERE/test-pki.sh" "$pki" "sbc-edge interop test CA" >"$work/pki.log" 2>&1 \
  || { cat "$work/pki.log" >&2; fail "openssl could not make the test PKI"; }

# --- gateway binary --------------------------------------------------------------------
if [ -n "${SBC_EDGE_BIN:-}" ]; then
  bin=$SBC_EDGE_BIN
else
  tdir=${CARGO_TARGET_DIR:-target}
  case "$tdir" in /*) ;; *) tdir=$ROOT/$tdir ;; esac
  bin=$tdir/release/sbc-edge
  if [ "${SBC_INTEROP_SKIP_BUILD:-0}" != 1 ]; then
    say "cargo build --release (bounded: ${BUILD_TIMEOUT}s)"
    (cd "$ROOT" && timeout -k 30 "$BUILD_TIMEOUT" cargo build --release --quiet) \
      || fail "cargo build --release"
  fi
fi
[ -x "$bin" ] || fail "no gateway binary at $bin"

# --- gateway config --------------------------------------------------------------------
cat >"$work/sbc-edge.toml" <<EOF
# sbc-edge interop test configuration (written by deploy/sipp/interop.sh)
[sip]
max_message_bytes = 65536
t1_ms = 500
max_ringing_secs = 180

[[listeners]]
name = "public"
address = "127.0.0.1:$GW_PORT"
certificate = "pki/gw.pem"
private_key = "pki/gw.key"

# inside: a plain UDP listener, for inside networks only; UDP route targets are sent to
# from its socket
[[listeners]]
name = "inside-udp"
transport = "udp"
address = "127.0.0.1:$GW_UDP_PORT"

[[tenants]]
id = "demo"
[tenants.recognition]
source_cidrs = ["127.0.0.0/8"]
[[tenants.routes]]
prefix = ""
target = "sips:127.0.0.1:$TRUNK_PORT"
ca_file = "pki/ca.pem"
# called numbers starting with 2: the PBX inside, over plain UDP (stage udp)
[[tenants.routes]]
prefix = "2"
target = "sip:127.0.0.1:$UDP_UAS_PORT;transport=udp"
[tenants.limits]
# high enough that the max-rate probe measures the path, not admission
calls_per_second = 5000.0
call_burst = 10000
max_concurrent_calls = 50000
max_pending_invites = 50000
# sipp reaches us through one stunnel connection from one source: lift the
# per-connection request rate and allowlist loopback in the flood guard
requests_per_second_per_connection = 100000.0

# stage recording: the same trunk, every call recorded (SIPREC) to the sipp SRS
[[tenants]]
id = "rec"
[tenants.recognition]
sni = ["rec.localhost"]
[[tenants.routes]]
prefix = ""
target = "sips:127.0.0.1:$TRUNK_PORT"
ca_file = "pki/ca.pem"
[tenants.limits]
calls_per_second = 100.0
call_burst = 200
max_concurrent_calls = 1000
max_pending_invites = 1000
requests_per_second_per_connection = 100000.0
[tenants.recording]
srs = ["sips:127.0.0.1:$SRS_PORT"]
mode = "always"
legs = "both"
media = "srtp"
on_failure = "required"
ca_file = "pki/ca.pem"

[flood_guard]
allowlist = ["127.0.0.0/8"]

[media]
# the relay anchors every call's media; keep its ports clear of run.sh's stunnel ports
# (20000-29999), of the kernel's ephemeral range (32768-60999 on Debian: other programs'
# sockets took ports of 40000-49999 and calls were refused) and of the port the sipp
# scenarios' SDP names (16384)
port_min = 10000
port_max = 15999

[admin]
# any free port: the stage reads /metrics at the address the gateway prints
address = "127.0.0.1:0"
audit_log = "audit.log"
EOF
say "sbc-edge check-config"
timeout 30 "$bin" check-config "$work/sbc-edge.toml" || fail "check-config rejected the test config"

# --- the chain, trunk side first -----------------------------------------------------
sed -e "s|@LOG@|$work/stunnel-server.log|" -e "s|@ACCEPT@|127.0.0.1:$TRUNK_PORT|" \
    -e "s|@CONNECT@|127.0.0.1:$UAS_PORT|" -e "s|@CERT@|$pki/trunk.pem|" -e "s|@KEY@|$pki/trunk.key|" \
    "$HERE/stunnel-server.conf.in" >"$work/stunnel-server.conf"
start_stunnel "$work/stunnel-server.conf" "$work/stunnel-server.log"
server_stunnel_pid=${pids[-1]}

say "starting the gateway: $bin --config $work/sbc-edge.toml"
RUST_LOG=${RUST_LOG:-info} "$bin" --config "$work/sbc-edge.toml" \
  >"$work/gateway.out" 2>"$work/gateway.log" &
gw_pid=$!
pids+=("$gw_pid")
wait_port "$GW_PORT" "$gw_pid" "the gateway"
cat "$work/gateway.out"

sed -e "s|@LOG@|$work/stunnel-client.log|" -e "s|@ACCEPT@|127.0.0.1:$UAC_PORT|" \
    -e "s|@CONNECT@|127.0.0.1:$GW_PORT|" -e "s|@SNI@|sni = localhost|" \
    -e "s|@VERIFY@|CAfile = $pki/ca.pem\nverifyChain = yes\ncheckIP = 127.0.0.1|" \
    -e "s|@CLIENT_CERT@||" \
    "$HERE/stunnel-client.conf.in" >"$work/stunnel-client.conf"
start_stunnel "$work/stunnel-client.conf" "$work/stunnel-client.log"
client_stunnel_pid=${pids[-1]}

# --- helpers for one stage -------------------------------------------------------------
start_uas() { # start_uas SCENARIO DIR [run.sh args...]
  local sc=$1 dir=$2
  shift 2
  "$RUN" "$sc" --role uas --listen "127.0.0.1:$UAS_PORT" --contact "127.0.0.1:$TRUNK_PORT" \
    --timeout 900 --out "$dir" "$@" >"$dir.uas.out" 2>&1 &
  uas_pid=$!
  # sipp writes its stat file as soon as it runs; then give it a moment to listen
  for _ in $(seq 100); do
    [ -s "$dir/$sc-uas.csv" ] && break
    kill -0 "$uas_pid" 2>/dev/null || { cat "$dir.uas.out" >&2; fail "sipp UAS ($sc) did not start"; }
    sleep 0.1
  done
  sleep 0.3
}
stop_uas() { # stop_uas: ask the UAS to finish (SIGTERM -> sipp SIGUSR1); print its summary
  local rc=0
  kill -TERM "$uas_pid" 2>/dev/null || true
  for _ in $(seq 250); do kill -0 "$uas_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$uas_pid" 2>/dev/null || true
  wait "$uas_pid" 2>/dev/null || rc=$?
  uas_pid=""
  return "$rc"
}
uas_summary() { grep '^== ' "$1.uas.out" || true; }

stage() { # stage NAME SCENARIO CALLS RATE DURATION [--trace]: UAS + UAC; fail on any failure
  local nm=$1 sc=$2 m=$3 r=$4 d=$5 dir=$work/$1 uac_rc=0 uas_rc=0
  shift 5
  say "stage $nm: $sc, $m calls at $r calls/s, -d $d ms"
  start_uas "$sc" "$dir" "$@"
  timeout -k 10 $((m / r + 120)) "$RUN" "$sc" --tcp "127.0.0.1:$UAC_PORT" \
    -g "127.0.0.1:$GW_PORT" -r "$r" -m "$m" -d "$d" --out "$dir" "$@" >"$dir.uac.out" 2>&1 \
    || uac_rc=$?
  cat "$dir.uac.out"
  stop_uas || uas_rc=$?
  echo "--- trunk side (sipp UAS) of stage $nm:"
  uas_summary "$dir"
  if [ "$uas_rc" != 0 ]; then
    sed -n '/Scenario Screen/,/Statistics Screen/p' "$dir.uas.out" | tail -n 25
    head -n 40 "$dir/$sc-uas.errors.log" 2>/dev/null || true
  fi
  [ "$uac_rc" = 0 ] || fail "stage $nm: calls failed on the caller side (run.sh exit $uac_rc)"
  [ "$uas_rc" = 0 ] || fail "stage $nm: calls failed on the trunk side (run.sh exit $uas_rc)"
  kill -0 "$gw_pid" 2>/dev/null || fail "the gateway exited during stage $nm"
}

stage basic basic "$CALLS" "$RATE" 1000
stage hold hold "$SMALL" 5 300 --trace
stage cancel cancel "$SMALL" 5 300 --trace
stage prack prack "$SMALL" 5 300 --trace

# --- stage media: sipp signals, sbc-edge media-check carries SRTP through the relay ------
# The scenarios write each call's SDP facts to $dir/sdp/{uac,uas}-N (N = call number; one
# call at a time, so N is the same call on both sides): "IP PORT TAG SUITE KEY" of the SDP
# the gateway sent to that side. The keys each sipp side offered or answered are fixed in
# its scenario; read them from there.
scenario_key() { # scenario_key FILE TAG SUITE: the inline key of "a=crypto:TAG SUITE" in FILE
  sed -n "s|.*a=crypto:$2 $3 inline:\([A-Za-z0-9+/=]*\).*|\1|p" "$1" | head -n 1
}
media_stage() {
  local dir=$work/media i f uac_pid uac_rc=0 uas_rc=0 asend
  local aip aport atag asuite akey bip bport btag bsuite bkey
  local uac_128 uac_256 uas_128
  uac_128=$(scenario_key "$HERE/uac_media.xml" 1 AES_CM_128_HMAC_SHA1_80)
  uac_256=$(scenario_key "$HERE/uac_media.xml" 2 AES_256_CM_HMAC_SHA1_80)
  uas_128=$(sed -n 's|.*AES_CM_128_HMAC_SHA1_80 inline:\([A-Za-z0-9+/=]*\).*|\1|p' "$HERE/uas_media.xml" | tail -n 1)
  [ -n "$uac_128" ] && [ -n "$uac_256" ] && [ -n "$uas_128" ] || fail "stage media: keys not found in the media scenarios"
  say "stage media: $MEDIA_CALLS calls one at a time, -d 4000 ms; sbc-edge media-check sends 1 s of SRTP each way through each call's relay ports"
  mkdir -p "$dir/sdp"
  start_uas media "$dir" -- -key media_dir "$dir/sdp"
  timeout -k 10 $((MEDIA_CALLS * 10 + 60)) "$RUN" media --tcp "127.0.0.1:$UAC_PORT" \
    -g "127.0.0.1:$GW_PORT" -r 1 -l 1 -m "$MEDIA_CALLS" -d 4000 --out "$dir" \
    -- -key media_dir "$dir/sdp" >"$dir.uac.out" 2>&1 &
  uac_pid=$!
  local media_failed=0
  for i in $(seq "$MEDIA_CALLS"); do
    for f in uac uas; do
      for _ in $(seq 200); do
        [ -s "$dir/sdp/$f-$i" ] && break
        kill -0 "$uac_pid" 2>/dev/null || break
        sleep 0.05
      done
      [ -s "$dir/sdp/$f-$i" ] || { media_failed=1; echo "call $i: no $f SDP facts in $dir/sdp/$f-$i"; }
    done
    [ "$media_failed" = 0 ] || break
    read -r aip aport atag asuite akey <"$dir/sdp/uac-$i"
    read -r bip bport btag bsuite bkey <"$dir/sdp/uas-$i"
    case "$atag:$asuite" in
      1:AES_CM_128_HMAC_SHA1_80) asend="AES_CM_128_HMAC_SHA1_80:$uac_128" ;;
      2:AES_256_CM_HMAC_SHA1_80) asend="AES_256_CM_HMAC_SHA1_80:$uac_256" ;;
      *) media_failed=1; echo "call $i: the gateway answered the caller with tag $atag $asuite"; break ;;
    esac
    echo "call $i: caller leg relay $aip:$aport ($asuite, tag $atag), callee leg relay $bip:$bport ($bsuite, tag $btag)"
    timeout -k 5 30 "$bin" media-check --a-relay "$aip:$aport" --a-send "$asend" \
      --a-recv "$asuite:$akey" --b-relay "$bip:$bport" \
      --b-send "AES_CM_128_HMAC_SHA1_80:$uas_128" --b-recv "$bsuite:$bkey" --duration 1 \
      || { media_failed=1; echo "call $i: media-check failed"; }
  done
  wait "$uac_pid" || uac_rc=$?
  cat "$dir.uac.out"
  stop_uas || uas_rc=$?
  echo "--- trunk side (sipp UAS) of stage media:"
  uas_summary "$dir"
  [ "$uac_rc" = 0 ] || fail "stage media: calls failed on the caller side (run.sh exit $uac_rc)"
  [ "$uas_rc" = 0 ] || fail "stage media: calls failed on the trunk side (run.sh exit $uas_rc)"
  [ "$media_failed" = 0 ] || fail "stage media: SRTP did not go through the relay both ways (above)"
  kill -0 "$gw_pid" 2>/dev/null || fail "the gateway exited during stage media"
}
if [ "$MEDIA_CALLS" -gt 0 ]; then media_stage; fi

# --- stage udp: TLS outside, sipp UAS over plain UDP inside -------------------------------
udp_stage() {
  local dir=$work/udp uac_rc=0 uas_rc=0
  say "stage udp: $UDP_CALLS basic calls at $UDP_RATE calls/s, TLS outside -> sbc-edge -> UDP inside (sipp UAS on udp 127.0.0.1:$UDP_UAS_PORT, route sip:127.0.0.1:$UDP_UAS_PORT;transport=udp)"
  start_uas basic "$dir" --udp --listen "127.0.0.1:$UDP_UAS_PORT" --contact "127.0.0.1:$UDP_UAS_PORT"
  timeout -k 10 $((UDP_CALLS / UDP_RATE + 120)) "$RUN" basic --tcp "127.0.0.1:$UAC_PORT" \
    -g "127.0.0.1:$GW_PORT" -r "$UDP_RATE" -m "$UDP_CALLS" -d 1000 -s 25551230000 \
    --out "$dir" >"$dir.uac.out" 2>&1 || uac_rc=$?
  cat "$dir.uac.out"
  stop_uas || uas_rc=$?
  echo "--- inside (sipp UAS over UDP) of stage udp:"
  uas_summary "$dir"
  if [ "$uas_rc" != 0 ]; then
    sed -n '/Scenario Screen/,/Statistics Screen/p' "$dir.uas.out" | tail -n 25
    head -n 40 "$dir/basic-uas.errors.log" 2>/dev/null || true
  fi
  [ "$uac_rc" = 0 ] || fail "stage udp: calls failed on the caller side (run.sh exit $uac_rc)"
  [ "$uas_rc" = 0 ] || fail "stage udp: calls failed on the UDP side (run.sh exit $uas_rc)"
  kill -0 "$gw_pid" 2>/dev/null || fail "the gateway exited during stage udp"
}
if [ "$UDP_CALLS" -gt 0 ]; then udp_stage; fi

# --- stage recording: tenant rec's calls recorded to a sipp SRS over TLS (SIPREC) ---------
recording_stage() {
  local dir=$work/recording uac_rc=0 uas_rc=0 srs_rc=0 srs_pid
  say "stage recording: $REC_CALLS calls of tenant rec (SNI rec.localhost) at 2 calls/s, -d 2000 ms; each recorded to the sipp SRS (uas_srs.xml) at sips:127.0.0.1:$SRS_PORT"
  mkdir -p "$dir"
  sed -e "s|@LOG@|$work/stunnel-srs.log|" -e "s|@ACCEPT@|127.0.0.1:$SRS_PORT|" \
      -e "s|@CONNECT@|127.0.0.1:$SRS_SIPP_PORT|" -e "s|@CERT@|$pki/trunk.pem|" -e "s|@KEY@|$pki/trunk.key|" \
      "$HERE/stunnel-server.conf.in" >"$work/stunnel-srs.conf"
  start_stunnel "$work/stunnel-srs.conf" "$work/stunnel-srs.log"
  sed -e "s|@LOG@|$work/stunnel-client-rec.log|" -e "s|@ACCEPT@|127.0.0.1:$REC_UAC_PORT|" \
      -e "s|@CONNECT@|127.0.0.1:$GW_PORT|" -e "s|@SNI@|sni = rec.localhost|" \
      -e "s|@VERIFY@|CAfile = $pki/ca.pem\nverifyChain = yes\ncheckIP = 127.0.0.1|" \
      -e "s|@CLIENT_CERT@||" \
      "$HERE/stunnel-client.conf.in" >"$work/stunnel-client-rec.conf"
  start_stunnel "$work/stunnel-client-rec.conf" "$work/stunnel-client-rec.log"
  "$RUN" "$HERE/uas_srs.xml" --role uas --listen "127.0.0.1:$SRS_SIPP_PORT" \
    --contact "127.0.0.1:$SRS_PORT" --timeout 900 --out "$dir/srs" --trace >"$dir.srs.out" 2>&1 &
  srs_pid=$!
  for _ in $(seq 100); do
    [ -s "$dir/srs/uas_srs-uas.csv" ] && break
    kill -0 "$srs_pid" 2>/dev/null || { cat "$dir.srs.out" >&2; fail "sipp SRS did not start"; }
    sleep 0.1
  done
  sleep 0.3
  start_uas basic "$dir"
  timeout -k 10 $((REC_CALLS + 120)) "$RUN" basic --tcp "127.0.0.1:$REC_UAC_PORT" \
    -g "127.0.0.1:$GW_PORT" -r 2 -m "$REC_CALLS" -d 2000 --out "$dir" --trace \
    >"$dir.uac.out" 2>&1 || uac_rc=$?
  cat "$dir.uac.out"
  stop_uas || uas_rc=$?
  # the BYE to the SRS follows the call's end: give the last one a moment
  sleep 2
  kill -TERM "$srs_pid" 2>/dev/null || true
  for _ in $(seq 250); do kill -0 "$srs_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$srs_pid" 2>/dev/null || true
  wait "$srs_pid" 2>/dev/null || srs_rc=$?
  echo "--- trunk side (sipp UAS) and recording server (sipp SRS) of stage recording:"
  uas_summary "$dir"
  grep '^== ' "$dir.srs.out" || true
  if [ "$srs_rc" != 0 ]; then
    sed -n '/Scenario Screen/,/Statistics Screen/p' "$dir.srs.out" | tail -n 30
    head -n 40 "$dir/srs/uas_srs-uas.errors.log" 2>/dev/null || true
  fi
  [ "$uac_rc" = 0 ] || fail "stage recording: calls failed on the caller side (run.sh exit $uac_rc)"
  [ "$uas_rc" = 0 ] || fail "stage recording: calls failed on the trunk side (run.sh exit $uas_rc)"
  [ "$srs_rc" = 0 ] || fail "stage recording: recordings failed at the SRS (run.sh exit $srs_rc)"
  grep -q "^== uas_srs (uas):.*successful=$REC_CALLS\b" "$dir.srs.out" \
    || fail "stage recording: the SRS did not complete $REC_CALLS recordings"
  kill -0 "$gw_pid" 2>/dev/null || fail "the gateway exited during stage recording"
}
if [ "$REC_CALLS" -gt 0 ]; then recording_stage; fi

# The gateway's own account must agree with sipp's: every basic, hold, prack and media call answered,
# every cancelled call failed 4xx (487), nothing else.
admin=$(sed -n 's|^  admin plane: http://\([^ ]*\) .*|\1|p' "$work/gateway.out" | head -n 1)
[ -n "$admin" ] || fail "the gateway did not print its admin address"
metrics=$(curl -sf "http://$admin/metrics") || fail "GET /metrics on $admin failed"
metric() { printf '%s\n' "$metrics" | awk -v k="$1" '$1 == k { print $2 }'; }
answered=$(metric 'sbc_sip_calls_answered_total{tenant="demo"}')
failed4xx=$(metric 'sbc_sip_calls_failed_total{tenant="demo",class="4xx"}')
echo "gateway metrics: answered=$answered failed_4xx=${failed4xx:-0}"
expected=$((CALLS + 2 * SMALL + MEDIA_CALLS + UDP_CALLS))
[ "${answered:-0}" = "$expected" ] || fail "gateway counted ${answered:-0} answered calls, expected $expected"
[ "${failed4xx:-0}" = "$SMALL" ] || fail "gateway counted ${failed4xx:-0} 4xx calls, expected $SMALL (the CANCELs)"

say "interop PASSED: $CALLS basic calls at $RATE calls/s, $SMALL hold, $SMALL cancel, $SMALL prack, $MEDIA_CALLS with SRTP checked both ways through the relay, $UDP_CALLS to a UDP PBX inside, $REC_CALLS recorded to a SIPREC SRS; no failed call"
summary_line=$(grep '^== basic (uac)' "$work/basic.uac.out" 2>/dev/null || true)

# --- stage 5: max-rate probe (informational) --------------------------------------------
[ -n "$PROBE_RATES" ] || exit 0
hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
ticks() { # ticks PID: user+system CPU ticks so far (0 if gone)
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
uas_sipp_pid() { # the sipp child of the UAS run.sh
  local d
  for d in /proc/[0-9]*; do
    [ "$(cat "$d/comm" 2>/dev/null)" = sipp ] || continue
    tr '\0' ' ' <"$d/cmdline" 2>/dev/null | grep -q -- "$work/probe/" && { echo "${d#/proc/}"; return; }
  done
  echo 0
}
say "stage probe (informational): rate ramp ${PROBE_RATES} calls/s, ${PROBE_SECS}s each, -d 500 ms"
dir=$work/probe
mkdir -p "$dir"
start_uas basic "$dir"
usp=$(uas_sipp_pid)
best=""
best_line=""
for r in $PROBE_RATES; do
  m=$((r * PROBE_SECS))
  t0=$(date +%s.%N)
  g0=$(ticks "$gw_pid"); c0=$(ticks "$client_stunnel_pid"); s0=$(ticks "$server_stunnel_pid"); u0=$(ticks "$usp")
  rc=0
  TIMEFORMAT='%U %S'
  { time timeout -k 10 $((PROBE_SECS + 90)) "$RUN" basic --tcp "127.0.0.1:$UAC_PORT" \
      -g "127.0.0.1:$GW_PORT" -r "$r" -m "$m" -d 500 -l $((r * 4)) --recv-timeout 5000 \
      --timeout $((PROBE_SECS + 60)) --out "$dir/r$r" >"$dir/r$r.out" 2>&1 || rc=$?; } 2>"$dir/r$r.time"
  t1=$(date +%s.%N)
  g1=$(ticks "$gw_pid"); c1=$(ticks "$client_stunnel_pid"); s1=$(ticks "$server_stunnel_pid"); u1=$(ticks "$usp")
  line=$(grep '^== basic (uac)' "$dir/r$r.out" || echo "== basic (uac): no summary (exit $rc)")
  cpu=$(awk -v hz="$hz" -v t0="$t0" -v t1="$t1" -v g="$((g1 - g0))" -v c="$((c1 - c0))" \
            -v s="$((s1 - s0))" -v u="$((u1 - u0))" -v ut="$(tail -n1 "$dir/r$r.time")" '
        BEGIN { w = t1 - t0; split(ut, a, " ")
                printf "CPU over %.1fs (100%% = one core): sipp-uac %.0f%%, sipp-uas %.0f%%, stunnel-client %.0f%%, stunnel-server %.0f%%, sbc-edge %.0f%%",
                  w, 100 * (a[1] + a[2]) / w, 100 * u / hz / w, 100 * c / hz / w, 100 * s / hz / w, 100 * g / hz / w }')
  echo "rate $r: ${line#== basic (uac): }"
  echo "         $cpu"
  held=$(awk -v l="$line" -v r="$r" 'BEGIN { if (match(l, /measured_rate=[0-9.]+/)) { v = substr(l, RSTART + 14, RLENGTH - 14); print (v + 0 >= 0.9 * r) ? 1 : 0 } else print 0 }')
  if [ "$rc" != 0 ] || [ "$held" != 1 ]; then
    echo "         -> not held (exit $rc; logs: $dir/r$r)"
    break
  fi
  best=$r
  best_line="$line | $cpu"
  kill -0 "$gw_pid" 2>/dev/null || { echo "         -> the gateway exited"; break; }
done
stop_uas >/dev/null 2>&1 || true
uas_summary "$dir"
if [ -n "$best" ]; then
  say "max rate held with zero failures: $best calls/s  (${best_line#== basic (uac): })"
else
  say "max rate held with zero failures: below the first probe step"
fi
echo "stage 1 result: ${summary_line#== }"
exit 0
