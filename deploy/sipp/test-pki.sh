#!/usr/bin/env bash
# Make a throwaway test PKI in DIR: an ECDSA P-256 CA (ca.pem, ca.key) and two leaves signed
# by it, gw.{pem,key} and trunk.{pem,key}, each with subjectAltName DNS:localhost and
# IP:127.0.0.1, valid two days. Used by interop.sh and benches/sbc_compare. Needs openssl.
#
#   deploy/sipp/test-pki.sh DIR [CA-NAME]
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 DIR [CA-NAME]" >&2; exit 2; }
mkdir -p "$1"
cd "$1"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=${2:-sbc-edge test CA}" -keyout ca.key -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
  "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth,clientAuth" >leaf.ext
for n in gw trunk; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$n.localhost" \
    -keyout "$n.key" -out "$n.csr"
  openssl x509 -req -in "$n.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile leaf.ext -out "$n.pem"
done
