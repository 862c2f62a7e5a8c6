#!/bin/sh
# keepalived notify hook of an sbc-edge hot standby pair (keepalived-node-*.conf):
#   sbc-edge-notify.sh master|backup|fault
# master: this node now holds the virtual IP; claim and install the peer's calls through
# the local admin plane (`sbc-edge cluster takeover`, i.e. POST /v1/cluster/takeover).
# The takeover is idempotent, so it is retried a few times when the gateway or Redis does
# not answer at once (bounded: ATTEMPTS tries, PAUSE seconds apart). Every outcome goes to
# syslog (tag sbc-edge-notify); the gateway itself logs and audits the takeover.
# backup / fault: logged only (a node that lost the VIP while holding calls finds them
# claimed by its peer and fences them by itself: RUNBOOK.md "Bringing a node back").
set -u

SBC_EDGE=${SBC_EDGE:-/usr/bin/sbc-edge}
ADMIN=${SBC_EDGE_ADMIN:-http://127.0.0.1:9090}
TOKEN_FILE=${SBC_EDGE_TOKEN_FILE:-/etc/sbc-edge/private/takeover.token}
ATTEMPTS=${SBC_EDGE_TAKEOVER_ATTEMPTS:-5}
PAUSE=${SBC_EDGE_TAKEOVER_PAUSE:-0.2}

log() { logger -t sbc-edge-notify -- "$*" 2>/dev/null || echo "sbc-edge-notify: $*" >&2; }

case "${1:-}" in
  master)
    i=1
    while [ "$i" -le "$ATTEMPTS" ]; do
      if out=$("$SBC_EDGE" cluster takeover --admin "$ADMIN" --token-file "$TOKEN_FILE" 2>&1); then
        log "VIP here: $out"
        exit 0
      fi
      log "VIP here: takeover attempt $i of $ATTEMPTS failed: $out"
      # 409: this gateway is not a standby; retrying cannot help.
      case "$out" in *"409:"*) exit 1 ;; esac
      i=$((i + 1))
      sleep "$PAUSE"
    done
    log "VIP here but the takeover failed $ATTEMPTS times: run 'sbc-edge cluster takeover' by hand (RUNBOOK.md)"
    exit 1
    ;;
  backup|fault)
    log "VRRP state $1: this node does not hold the VIP"
    ;;
  *)
    echo "usage: $0 master|backup|fault" >&2
    exit 2
    ;;
esac
