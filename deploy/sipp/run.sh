#!/usr/bin/env bash
# Run one sipp scenario against an sbc-edge gateway over SIP/TLS (caller side, default),
# or run the trunk side (--role uas) that the gateway relays calls to.
#
#   deploy/sipp/run.sh SCENARIO [options] [-- extra sipp arguments]
#
# SCENARIO: basic | hold | cancel | prack | flood, or the path of a scenario XML file.
#   (UAC: uac_SCENARIO.xml; UAS: uas_SCENARIO.xml, flood uses uas_basic.xml.)
#
# TLS: Debian's sipp (package sip-tester) has no TLS. If the local sipp has TLS (`-t l1`
# appears in `sipp -h`), run.sh uses it directly; otherwise it starts stunnel in client mode
# (plain TCP from sipp -> TLS to the gateway) for the duration of the run. With --tcp, it
# uses a plain-TCP entry someone else already wraps in TLS (interop.sh does that).
#
# Prints sipp's final screens and a one-line summary; exits non-zero if any call failed,
# if fewer calls succeeded than asked for, or if sipp/stunnel could not start. Every step
# is bounded in time (--timeout).
#
# Options (caller side, the default role):
#   -g, --gateway HOST:PORT  gateway SIPS listener                  [127.0.0.1:5061]
#       --tcp HOST:PORT      send plain TCP here instead (an existing TLS wrapper; no stunnel)
#       --ca FILE            CA to verify the gateway certificate (default: not verified)
#       --tls-name NAME      name checked in the gateway certificate and sent as SNI
#                            (SNI also selects the tenant when it is recognised by SNI)
#       --cert FILE --key FILE  client certificate + key (tenants recognised by certificate)
#       --native-tls / --stunnel  force sipp's own TLS / stunnel      [auto]
#   -r, --rate CPS           calls per second                        [10]
#   -m, --calls N            number of calls                         [100]
#   -l, --limit N            max simultaneous calls (sipp -l)        [sipp default]
#   -d, --duration MS        pause length: call length (basic, flood), each hold step
#                            (hold), ringing before CANCEL (cancel)   [1000]
#   -s, --service USER       Request-URI user part (routes match its prefix) [15551230000]
#       --local-ip IP        IP sipp binds and writes in Via/Contact [127.0.0.1]
#       --stunnel-port PORT  local port of the stunnel client        [a free one in 20000-29999]
#       --recv-timeout MS    a call fails if an expected message is this late [10000]
#       --timeout SECS       hard bound on the whole run            [calls/rate + 60 + ...]
#       --out DIR            keep logs, screens and stats here       [a new temp dir]
#       --trace              also log every SIP message (sipp -trace_msg) into --out
#   -h, --help
# Options for --role uas (the tenant's trunk behind the gateway):
#       --role uas
#       --listen HOST:PORT   where sipp listens (plain TCP)          [127.0.0.1:5072]
#       --tls-listen HOST:PORT  also start stunnel in server mode here (TLS -> --listen);
#                            needs --cert/--key (a certificate the route's ca_file trusts)
#       --contact HOST:PORT  address written in the UAS Contact     [--tls-listen or --listen]
#       --udp                listen on plain UDP instead of TCP (a PBX inside, reached by
#                            a route target sip:HOST:PORT;transport=udp)
#   -m N ends after N calls; without -m it runs until SIGTERM/SIGINT/SIGUSR1 or --timeout.
#
# Examples:
#   deploy/sipp/run.sh basic -g 127.0.0.1:5061 --ca certs/ca.pem -r 25 -m 500
#   deploy/sipp/run.sh flood -g 127.0.0.1:5061 -r 200 -m 2000 -d 200
#   deploy/sipp/run.sh hold --role uas --tls-listen 127.0.0.1:5062 --cert trunk.pem --key trunk.key
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
die() { echo "run.sh: $*" >&2; exit 2; }

role=uac
scenario=""
gateway=127.0.0.1:5061
tcp_entry=""
ca=""
tls_name=""
cert=""
key=""
tls_mode=auto
rate=10
calls=""
limit=""
duration=1000
service=15551230000
local_ip=127.0.0.1
stunnel_port=""
recv_timeout=10000
run_timeout=""
out=""
trace=0
listen=127.0.0.1:5072
tls_listen=""
contact=""
uas_transport=t1
extra=()

need_arg() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --role) need_arg "$@"; role=$2; shift ;;
    -g|--gateway) need_arg "$@"; gateway=$2; shift ;;
    --tcp) need_arg "$@"; tcp_entry=$2; shift ;;
    --ca) need_arg "$@"; ca=$2; shift ;;
    --tls-name) need_arg "$@"; tls_name=$2; shift ;;
    --cert) need_arg "$@"; cert=$2; shift ;;
    --key) need_arg "$@"; key=$2; shift ;;
    --native-tls) tls_mode=native ;;
    --stunnel) tls_mode=stunnel ;;
    -r|--rate) need_arg "$@"; rate=$2; shift ;;
    -m|--calls) need_arg "$@"; calls=$2; shift ;;
    -l|--limit) need_arg "$@"; limit=$2; shift ;;
    -d|--duration) need_arg "$@"; duration=$2; shift ;;
    -s|--service) need_arg "$@"; service=$2; shift ;;
    --local-ip) need_arg "$@"; local_ip=$2; shift ;;
    --stunnel-port) need_arg "$@"; stunnel_port=$2; shift ;;
    --recv-timeout) need_arg "$@"; recv_timeout=$2; shift ;;
    --timeout) need_arg "$@"; run_timeout=$2; shift ;;
    --out) need_arg "$@"; out=$2; shift ;;
    --trace) trace=1 ;;
    --listen) need_arg "$@"; listen=$2; shift ;;
    --tls-listen) need_arg "$@"; tls_listen=$2; shift ;;
    --contact) need_arg "$@"; contact=$2; shift ;;
    --udp) uas_transport=u1 ;;
    --) shift; extra=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$scenario" ] || die "one scenario only (got $scenario and $1)"; scenario=$1 ;;
  esac
  shift
done
[ -n "$scenario" ] || { usage >&2; exit 2; }
case "$role" in uac|uas) ;; *) die "--role is uac or uas" ;; esac
for n in "$rate" "$duration" "$recv_timeout" ${calls:+"$calls"} ${limit:+"$limit"} \
         ${run_timeout:+"$run_timeout"} ${stunnel_port:+"$stunnel_port"}; do
  [[ "$n" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "not a number: $n"
done
command -v sipp >/dev/null || die "sipp not found (Debian: apt-get install sip-tester)"

# Scenario file.
if [ -f "$scenario" ]; then
  sf=$scenario
  name=$(basename "$scenario" .xml)
else
  name=$scenario
  case "$role:$scenario" in
    uas:flood) sf=$HERE/uas_basic.xml ;;
    *) sf=$HERE/${role}_${scenario}.xml ;;
  esac
  [ -f "$sf" ] || die "no scenario $sf (basic, hold, cancel, prack, media, flood or a file)"
fi

host_of() { local a=$1; a=${a%:*}; a=${a#[}; echo "${a%]}"; }
port_of() { echo "${1##*:}"; }
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
for f in ca cert key; do
  if [ -n "${!f}" ]; then
    [ -r "${!f}" ] || die "--$f ${!f}: not readable"
    printf -v "$f" '%s' "$(abspath "${!f}")"
  fi
done

if [ -z "$out" ]; then out=$(mktemp -d "${TMPDIR:-/tmp}/sbc-sipp.XXXXXX"); fi
mkdir -p "$out"
out=$(cd "$out" && pwd)

# Everything started here is stopped on exit.
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    # bounded: at most ~3 s, then SIGKILL
    for _ in $(seq 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT

# tcp_open HOST PORT: true if something accepts TCP there.
tcp_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

free_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 10000))
    tcp_open 127.0.0.1 "$p" || { echo "$p"; return 0; }
  done
  die "no free local port found"
}

stunnel_bin() {
  if command -v stunnel4 >/dev/null; then echo stunnel4
  elif command -v stunnel >/dev/null; then echo stunnel
  else die "stunnel not found (Debian: apt-get install stunnel4)"; fi
}

# render TEMPLATE OUTPUT NAME=VALUE...: substitute @NAME@ (values may span lines).
render() {
  local tpl out_file text kv
  tpl=$1; out_file=$2; shift 2
  text=$(cat "$tpl")
  for kv in "$@"; do text=${text//@${kv%%=*}@/${kv#*=}}; done
  printf '%s\n' "$text" >"$out_file"
}

# start_stunnel CONF LOG: start it, wait (bounded) until it has read its configuration.
start_stunnel() {
  local conf=$1 log=$2 bin
  bin=$(stunnel_bin)
  : >"$log"
  # it logs to the "output" file; stderr only matters if it fails before opening that
  "$bin" "$conf" >"$log.stderr" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    if grep -q "Configuration successful" "$log" 2>/dev/null; then return 0; fi
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  echo "run.sh: stunnel did not start ($conf); its log:" >&2
  cat "$log" "$log.stderr" >&2
  exit 3
}

sipp_has_tls() { sipp -h 2>&1 | grep -q 'l1: TLS'; }

# summary CSV ROLE: one line from sipp's -trace_stat file; sets $summary_ok (0/1).
summarize() {
  local csv=$1
  summary_ok=1
  [ -s "$csv" ] || { echo "== $name ($role): no statistics written"; return; }
  awk -F';' -v name="$name" -v role="$role" -v want="${calls:-0}" -v target="$rate" '
    function epoch(s,  a, n) { n = split(s, a, "\t"); return a[n] + 0 }
    function ms(s,  a) { split(s, a, ":"); return ((a[1] * 60 + a[2]) * 60 + a[3]) * 1000 + a[4] / 1000 }
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    {
      n++
      t[n] = epoch($col["CurrentTime"])
      c[n] = (role == "uac") ? $col["OutgoingCall(C)"] + 0 : $col["IncomingCall(C)"] + 0
      last = $0
    }
    END {
      split(last, f, ";")
      total = c[n]; ok = f[col["SuccessfulCall(C)"]] + 0; failed = f[col["FailedCall(C)"]] + 0
      # Measured rate: over the rows strictly inside the call-creation window when there
      # are at least two (dumps are 1 s apart), else over the whole creation window.
      first = 0; lastin = 0; a = 0; b = 0
      for (i = 1; i <= n; i++) {
        if (c[i] == 0) a = i
        if (c[i] > 0 && c[i] < total) { if (!first) first = i; lastin = i }
        if (!b && c[i] == total && total > 0) b = i
      }
      rate = 0
      if (first && lastin > first && t[lastin] > t[first]) rate = (c[lastin] - c[first]) / (t[lastin] - t[first])
      else if (b && a && t[b] > t[a]) rate = (c[b] - c[a]) / (t[b] - t[a])
      printf "== %s (%s): calls=%d successful=%d failed=%d", name, role, total, ok, failed
      if (role == "uac") printf " target_rate=%s cps measured_rate=%.1f cps", target, rate
      else printf " measured_rate=%.1f cps", rate
      printf " rtd_avg=%.1f ms retrans=%d", ms(f[col["ResponseTime1(C)"]]), f[col["Retransmissions(C)"]]
      split("FailedUnexpectedMessage FailedTimeoutOnRecv FailedTcpConnect FailedTcpClosed FailedCannotSendMessage FailedRegexpDoesntMatch FailedRegexpHdrNotFound FailedCallRejected FailedOutboundCongestion", why, " ")
      for (k in why) { v = f[col[why[k] "(C)"]] + 0; if (v) printf " %s=%d", why[k], v }
      v = f[col["OutOfCallMsgs(C)"]] + 0; if (v) printf " OutOfCallMsgs=%d", v
      v = f[col["DeadCallMsgs(C)"]] + 0; if (v) printf " DeadCallMsgs=%d", v
      printf "\n"
      bad = (failed > 0) || (want > 0 && ok < want)
      exit bad ? 1 : 0
    }' "$csv" && summary_ok=0 || true
}

stats_csv=$out/$name-$role.csv
screen=$out/$name-$role.screen
common=(-sf "$sf" -nostdin
        -trace_stat -stf "$stats_csv" -fd 1
        -trace_screen -screen_file "$screen"
        -trace_err -error_file "$out/$name-$role.errors.log"
        -trace_logs -log_file "$out/$name-$role.logs.log")
[ "$trace" = 1 ] && common+=(-trace_msg -message_file "$out/$name-$role.messages.log")
[ -n "$limit" ] && common+=(-l "$limit")

if [ "$role" = uac ]; then
  : "${calls:=100}"; common+=(-m "$calls")
  if [ -z "$run_timeout" ]; then
    # time to place the calls + their length (hold has 3 pauses) + margin
    run_timeout=$(awk -v m="$calls" -v r="$rate" -v d="$duration" \
      'BEGIN { printf "%d", m / (r > 0 ? r : 1) + 3 * d / 1000 + 60 }')
  fi
  transport=t1
  sipp_args=("${common[@]}" -i "$local_ip" -key gw "$gateway" -s "$service"
             -r "$rate" -d "$duration" -recv_timeout "$recv_timeout"
             -timeout "${run_timeout}s" -timeout_error)

  if [ -n "$tcp_entry" ]; then
    target=$tcp_entry
    echo "run.sh: sipp -t t1 -> $tcp_entry (plain TCP; TLS to $gateway is provided outside)"
  elif [ "$tls_mode" = native ] || { [ "$tls_mode" = auto ] && sipp_has_tls; }; then
    sipp_has_tls || die "--native-tls: this sipp has no TLS"
    # sipp's TLS needs its own certificate even as a client; it does not verify the server.
    if [ -z "$cert" ]; then
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=sipp -keyout "$out/sipp.key" -out "$out/sipp.pem" 2>/dev/null
      cert=$out/sipp.pem; key=$out/sipp.key
    fi
    transport=l1
    sipp_args+=(-tls_cert "$cert" -tls_key "$key")
    target=$gateway
    echo "run.sh: sipp native TLS (-t l1) -> $gateway (server certificate NOT verified)"
  else
    [ -n "$stunnel_port" ] || stunnel_port=$(free_port)
    gw_host=$(host_of "$gateway")
    if [ -n "$ca" ]; then
      if [ -n "$tls_name" ]; then verify="CAfile = $ca"$'\n'"verifyChain = yes"$'\n'"checkHost = $tls_name"
      elif [[ "$gw_host" =~ ^[0-9.]+$|: ]]; then verify="CAfile = $ca"$'\n'"verifyChain = yes"$'\n'"checkIP = $gw_host"
      else verify="CAfile = $ca"$'\n'"verifyChain = yes"$'\n'"checkHost = $gw_host"; fi
    else
      verify="verify = 0"
      echo "run.sh: warning: no --ca, the gateway certificate is not verified" >&2
    fi
    sni_line=""
    if [ -n "$tls_name" ]; then sni_line="sni = $tls_name"
    elif ! [[ "$gw_host" =~ ^[0-9.]+$|: ]]; then sni_line="sni = $gw_host"; fi
    client_cert=""
    [ -n "$cert" ] && client_cert="cert = $cert"$'\n'"key = ${key:-$cert}"
    render "$HERE/stunnel-client.conf.in" "$out/stunnel-client.conf" \
      "LOG=$out/stunnel-client.log" "ACCEPT=127.0.0.1:$stunnel_port" "CONNECT=$gateway" \
      "VERIFY=$verify" "SNI=$sni_line" "CLIENT_CERT=$client_cert"
    start_stunnel "$out/stunnel-client.conf" "$out/stunnel-client.log"
    target=127.0.0.1:$stunnel_port
    echo "run.sh: sipp -t t1 -> stunnel 127.0.0.1:$stunnel_port -> TLS $gateway"
  fi
  echo "run.sh: $name: $calls calls at $rate cps, -d $duration ms, logs in $out"
  set +e
  timeout -k 10 $((run_timeout + 20)) sipp "${sipp_args[@]}" -t "$transport" "${extra[@]}" "$target" \
    >/dev/null 2>"$out/$name-$role.stderr"
  rc=$?
  set -e
else
  # UAS: the tenant's trunk. Optional stunnel server in front.
  if [ -n "$tls_listen" ]; then
    [ -n "$cert" ] && [ -n "$key" ] || die "--tls-listen needs --cert and --key"
    render "$HERE/stunnel-server.conf.in" "$out/stunnel-server.conf" \
      "LOG=$out/stunnel-server.log" "ACCEPT=$tls_listen" "CONNECT=$listen" \
      "CERT=$cert" "KEY=$key"
    start_stunnel "$out/stunnel-server.conf" "$out/stunnel-server.log"
  fi
  : "${contact:=${tls_listen:-$listen}}"
  : "${run_timeout:=3600}"
  sipp_args=("${common[@]}" -t "$uas_transport" -i "$(host_of "$listen")" -p "$(port_of "$listen")"
             -key contact "$contact" -recv_timeout "$recv_timeout" -timeout "${run_timeout}s")
  [ -n "$calls" ] && sipp_args+=(-m "$calls")
  proto=TCP; [ "$uas_transport" = u1 ] && proto=UDP
  echo "run.sh: UAS $name on $proto $listen${tls_listen:+ (TLS $tls_listen via stunnel)}, Contact $contact, logs in $out"
  sipp "${sipp_args[@]}" "${extra[@]}" >/dev/null 2>"$out/$name-$role.stderr" &
  spid=$!
  pids+=("$spid")
  # SIGTERM/SIGINT/SIGUSR1 to run.sh: ask sipp to finish its calls and quit (its SIGUSR1),
  # then SIGKILL after 15 s. Hard bound: --timeout + 20 s.
  hard_deadline=$((SECONDS + run_timeout + 20))
  stop_uas() {
    kill -USR1 "$spid" 2>/dev/null || true
    hard_deadline=$((SECONDS + 15 < hard_deadline ? SECONDS + 15 : hard_deadline))
  }
  trap stop_uas TERM INT USR1
  while kill -0 "$spid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$hard_deadline" ]; then
      echo "run.sh: UAS did not stop in time, killing it" >&2
      kill -9 "$spid" 2>/dev/null || true
    fi
    sleep 0.2 || true   # a group-wide SIGTERM/SIGINT also hits sleep; keep looping
  done
  set +e
  wait "$spid"
  rc=$?
  set -e
  trap - TERM INT USR1
fi

if [ -s "$screen" ]; then
  # The last scenario screen and statistics screen (sipp appends one set per dump).
  awk '/Scenario Screen/ { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }' "$screen" \
    | grep -v -e 'Press \[q\]' -e 'Waiting for active calls' || true
fi
if [ -s "$out/$name-$role.stderr" ]; then
  grep -v -e '^Resolving remote host' "$out/$name-$role.stderr" | head -20 >&2 || true
fi
summarize "$stats_csv"
if [ "$name" = flood ] && [ "$role" = uac ] && [ -s "$screen" ]; then
  # Rows of the message table: "503 <---------- COUNT ..." (admitted calls: the BYE row).
  awk '/Scenario Screen/ { r503 = 0; bye = 0 }
       $1 == "503" && $2 ~ /^<-/ { r503 = $3 }
       $1 == "BYE" && $2 ~ /->$/ { bye = $3 }
       END { printf "== flood: admitted (BYE sent)=%d refused with 503=%d\n", bye, r503 }' "$screen"
fi
if [ "$rc" != 0 ]; then
  echo "run.sh: sipp exit status $rc (0: all calls succeeded; 1: some failed; 124/137: timed out)" >&2
  [ -s "$out/$name-$role.errors.log" ] && { echo "-- first unexpected messages:" >&2; head -40 "$out/$name-$role.errors.log" >&2; }
  exit 1
fi
[ "$summary_ok" = 0 ] || exit 1
exit 0
