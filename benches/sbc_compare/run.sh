#!/usr/bin/env bash
# Whole-stack comparison: sbc-edge against Kamailio + rtpengine on this machine, same
# calls, same run, one table. See benches/sbc_compare/README.md.
#
#   benches/sbc_compare/run.sh [--quick] [--recording] [--runs N] [--mem-calls N] [--skip-build]
#                              [--work DIR] [--json FILE]
#
# Needs (Debian): kamailio kamailio-tls-modules rtpengine-daemon sip-tester stunnel4
# openssl python3, and cargo (it builds the release gateway and the media_load bench;
# CARGO_TARGET_DIR is respected). Not part of .ci/run: a full run takes ~20 minutes.
# --recording: sbc-edge only, SIPREC recording off against on (a sipp SRS); needs no
# Kamailio or rtpengine, ~11 minutes.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
command -v python3 >/dev/null || { echo "sbc_compare: python3 not found" >&2; exit 2; }
# Both relays hold 4 UDP sockets per call: the memory figure needs every descriptor the
# hard limit allows (sbc-edge and rtpengine inherit it from here).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 "$HERE/compare.py" "$@"
