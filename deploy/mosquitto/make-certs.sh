#!/usr/bin/env bash
# Issues a small PKI for the broker's TLS listeners with openssl: a CA, a server certificate and
# one client certificate per identity. The client certificate's CN is the MQTT username on the
# mTLS listener (use_identity_as_username), so a device's CN must be its device id and services
# use cascade-gateway / cascade-ota / cascade-monitor (see ./acl).
#
#   deploy/mosquitto/make-certs.sh OUT_DIR SERVER_NAME IDENTITY...
#   deploy/mosquitto/make-certs.sh ./certs mqtt.example.net cascade-gateway cam-0001 cam-0002
#
# Writes OUT_DIR/ca.{crt,key}, server.{crt,key} (SAN: SERVER_NAME, localhost, 127.0.0.1) and
# <identity>.{crt,key}. Keys are ECDSA P-256, mode 0600. An existing CA in OUT_DIR is reused, so
# the command can be re-run to add identities. For production, keep the CA key offline (or use
# your own CA/cert-manager); this script is for labs, CI and small sites.
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 OUT_DIR SERVER_NAME [IDENTITY...]" >&2
  exit 2
fi
out=$1
server=$2
shift 2
days=${CASCADE_CERT_DAYS:-825}
mkdir -p "$out"
umask 077

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

valid_id='^[A-Za-z0-9._-]{1,64}$'

if [ ! -f "$out/ca.key" ]; then
  key "$out/ca.key"
  openssl req -x509 -new -key "$out/ca.key" -sha256 -days "$days" -subj "/CN=edge-cascade MQTT CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$out/ca.crt"
fi

sign() { # name subject extfile
  openssl req -new -key "$out/$1.key" -subj "$2" -out "$out/$1.csr"
  openssl x509 -req -in "$out/$1.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
    -sha256 -days "$days" -extfile "$3" -out "$out/$1.crt" 2>/dev/null
  rm -f "$out/$1.csr" "$3"
}

ext=$(mktemp)
cat >"$ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:$server,DNS:localhost,IP:127.0.0.1
EXT
key "$out/server.key"
sign server "/CN=$server" "$ext"

for id in "$@"; do
  if ! [[ $id =~ $valid_id ]]; then
    echo "$0: identity '$id' is not a valid device id (1-64 of A-Z a-z 0-9 . _ -)" >&2
    exit 2
  fi
  ext=$(mktemp)
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' >"$ext"
  key "$out/$id.key"
  sign "$id" "/CN=$id" "$ext"
done
chmod 0644 "$out"/*.crt
echo "wrote $(ls "$out" | wc -l) files to $out"
