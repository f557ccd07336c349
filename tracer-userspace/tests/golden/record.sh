#!/usr/bin/env bash
# Re-record the golden fixtures from real traffic (as root, with python3, nginx and curl):
#   bash tracer-userspace/tests/golden/record.sh
# then replay them (`cargo test golden`), review the *.actual.jsonl files the test writes, and
# rename each to *.jsonl when it is right.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tracer="$here/../../../target/release/tracer"
work="$(mktemp -d)" && chmod 755 "$work"  # nginx workers run unprivileged
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

wait_port() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; exit 1; }

record() { # name port command...
  local name="$1" port="$2"; shift 2
  "$tracer" record "$here/$name.rec" --port "$port" --output none 2> "$work/$name.log" &
  local agent=$!
  for _ in $(seq 100); do grep -q ready "$work/$name.log" && break; sleep 0.1; done
  "$@"
  sleep 0.5
  kill -TERM "$agent"; wait "$agent"
}

# Python's http.server answering curl: 200, 404, 501 (POST with a body).
mkdir -p "$work/py" && echo '<p>hello</p>' > "$work/py/index.html"
python3 -m http.server 18431 --bind 127.0.0.1 -d "$work/py" > /dev/null 2>&1 &
wait_port 18431
record python-curl 18431 sh -c '
  curl -s -o /dev/null http://127.0.0.1:18431/index.html?q=1
  curl -s -o /dev/null http://127.0.0.1:18431/missing
  curl -s -o /dev/null -d "a=b" http://127.0.0.1:18431/form'

# nginx with keep-alive, a fixed body, and a 300 kB file both with writev and with sendfile.
mkdir -p "$work/ngx/static"
head -c 300000 /dev/zero | tr '\0' 'b' > "$work/ngx/static/big.bin"
cat > "$work/ngx/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $work/ngx/nginx.pid; error_log $work/ngx/error.log;
events { worker_connections 64; }
http { access_log off; client_body_temp_path $work/ngx/b; proxy_temp_path $work/ngx/p;
  fastcgi_temp_path $work/ngx/f; uwsgi_temp_path $work/ngx/u; scgi_temp_path $work/ngx/s;
  server { listen 127.0.0.1:18432;
    location = / { return 200 "hello from nginx\n"; }
    location /static/ { root $work/ngx; }
    location /sendfile/ { alias $work/ngx/static/; sendfile on; } } }
CONF
/usr/sbin/nginx -c "$work/ngx/nginx.conf" -p "$work/ngx" &
wait_port 18432
record nginx-keepalive 18432 sh -c '
  curl -s -o /dev/null -o /dev/null -o /dev/null \
    http://127.0.0.1:18432/ http://127.0.0.1:18432/static/big.bin http://127.0.0.1:18432/sendfile/big.bin
  curl -s -o /dev/null -I http://127.0.0.1:18432/' 
echo "recorded: $(ls "$here"/*.rec)"
