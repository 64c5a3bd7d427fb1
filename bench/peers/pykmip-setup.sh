#!/bin/sh
# Prepares a scratch folder for the PyKMIP server (Debian's python3-pykmip) and runs it there:
#
#   bench/peers/pykmip-setup.sh DIR [PORT]     (PORT absent or 0: a free port is chosen)
#
# Before exec'ing the server it prints one line, `port N`, so the caller knows where to connect;
# the server then keeps this process id (exec), which is what the caller samples for CPU time.
# Nothing is written outside DIR: PyKMIP's defaults (/etc/pykmip/server.conf,
# /var/log/pykmip/server.log, /tmp/pykmip.database) are all overridden below.
set -eu

dir=${1:?usage: pykmip-setup.sh DIR [PORT]}
port=${2:-0}
mkdir -p "$dir/certs" "$dir/policies"
dir=$(cd "$dir" && pwd)
c=$dir/certs

# PyKMIP's config accepts only 1..65534, so "any free port" has to be picked here. Another process
# could take it before the server binds; the caller sees that as the server exiting early.
if [ "$port" = 0 ]; then
  port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi

# TLS with client certificates is the only transport PyKMIP serves. P-256 keys, because the
# TLS1.2 auth suite offers ECDHE-ECDSA-AES128-GCM-SHA256, an AEAD suite (its RSA choices are CBC);
# tls_cipher_suites below picks it, as the cheapest suite PyKMIP allows (left to its own order it
# settles on ECDHE-ECDSA-AES128-SHA256, CBC with HMAC).
# The client certificate must carry extendedKeyUsage=clientAuth (enable_tls_client_auth, on by
# default and left on); its CN is the identity that owns the keys it creates, so create and get
# must use the same certificate.
if [ ! -s "$c/client.crt" ]; then
  key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
  key "$c/ca.key"
  openssl req -x509 -new -key "$c/ca.key" -subj /CN=bench-ca -days 30 -out "$c/ca.crt" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
  for who in server client; do
    key "$c/$who.key"
    openssl req -new -key "$c/$who.key" -subj "/CN=bench-$who" -out "$c/$who.csr"
    if [ "$who" = server ]; then
      ext="extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost"
    else
      ext="extendedKeyUsage=clientAuth"
    fi
    printf "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n$ext\n" > "$c/$who.ext"
    openssl x509 -req -in "$c/$who.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial \
      -days 30 -extfile "$c/$who.ext" -out "$c/$who.crt" 2>/dev/null
  done
fi

# policy_path: an empty folder of our own. Without it the server's policy monitor (a child process
# that rescans every second) would list the current directory for *.json policy files.
# logging_level INFO is the server's default; it writes a few lines per request to server.log.
cat > "$dir/server.conf" <<EOF
[server]
hostname=127.0.0.1
port=$port
certificate_path=$c/server.crt
key_path=$c/server.key
ca_path=$c/ca.crt
auth_suite=TLS1.2
tls_cipher_suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
policy_path=$dir/policies
enable_tls_client_auth=True
logging_level=${PYKMIP_LOG_LEVEL:-INFO}
database_path=$dir/pykmip.db
EOF

echo "port $port"
# cryptography warns on stderr about the Blowfish, CAST5 and IDEA ciphers PyKMIP imports.
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
exec /usr/bin/pykmip-server -f "$dir/server.conf" -l "$dir/server.log"
