#!/bin/sh
# Makes what the compose cluster's nodes share: a private CA, one certificate per node
# for cluster mutual TLS (its IP address as subjectAltName: peers dial addresses),
# the cluster secret and the admin token. Run by the `certs` service of compose.yaml,
# or by hand: `sh deploy/make-certs.sh DIR`. Existing files are kept (a re-run after
# `docker compose down` does not change the cluster's identity).
set -eu
dir=${1:-/certs}
mkdir -p "$dir"
cd "$dir"
umask 077
if [ ! -f ca.pem ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout ca.key -out ca.pem -days 3650 -subj '/CN=tsunagu-cluster-ca' 2>/dev/null
fi
# node name and the address it listens on for the cluster (compose.yaml's ipv4_address).
for pair in node-1:172.28.0.21 node-2:172.28.0.22 node-3:172.28.0.23; do
    name=${pair%%:*}
    ip=${pair#*:}
    [ -f "$name.pem" ] && continue
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$name.key" -out "$name.csr" -subj "/CN=$name" 2>/dev/null
    printf 'subjectAltName=IP:%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$ip" > "$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out "$name.pem" -days 825 -extfile "$name.ext" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
done
[ -f cluster_secret ] || openssl rand -hex 24 > cluster_secret
[ -f admin_token ] || openssl rand -hex 24 > admin_token
# The nodes run as uid 10001 (see Dockerfile); the CA key stays readable by root only.
chown 10001:10001 node-*.key node-*.pem ca.pem cluster_secret admin_token 2>/dev/null || true
chmod 0400 ca.key
echo "certificates in $dir: $(ls | tr '\n' ' ')"
