#!/usr/bin/env bash
# PUBACK -> next publish latency of a daemon draining a backlog (issue 11: no disk I/O on the
# async workers). The daemon replays the samples at 20 fps with fsync = "always", the broker is
# away for 20 s (a backlog builds up in the spool), then a Mosquitto comes up with a subscriber
# and the backlog drains while new verdicts keep being spooled. Prints the daemon's
# `ack_to_publish` quantiles from /metrics.
#   scripts/ack-latency.sh BINARY MODEL.onnx [TAG]
# The binary must record `ack_to_publish` (any build since it was added; for an older build, add
# the same few lines around its PUBACK handling). Needs mosquitto, mosquitto-clients, curl.
set -euo pipefail
BIN=$(realpath "$1"); MODEL=$(realpath "$2"); TAG=${3:-run}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
D=$(mktemp -d /tmp/inspectd-acklat-XXXX)
PORT=18977; HTTP=18978
cat >"$D/cfg.toml" <<CFG
device_id = "acklat-$TAG"
[source]
kind = "replay"
path = "$ROOT/models/samples"
fps = 20
loop = true
[model]
path = "$MODEL"
[mqtt]
url = "mqtt://127.0.0.1:$PORT"
[spool]
path = "$D/spool.redb"
fsync = "always"
[stats]
interval_s = 1
[http]
listen = "127.0.0.1:$HTTP"
CFG
"$BIN" run --config "$D/cfg.toml" 2>"$D/log" &
P=$!
trap 'kill $P ${M:-} ${S:-} 2>/dev/null || true; rm -rf "$D"' EXIT
sleep 20
curl -s "127.0.0.1:$HTTP/metrics" | grep -E "^inspectd_spool_depth" || true
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n' $PORT >"$D/mosq.conf"
/usr/sbin/mosquitto -c "$D/mosq.conf" >/dev/null 2>&1 &
M=$!
sleep 0.5
mosquitto_sub -p $PORT -t 'inspect/#' -q 1 >/dev/null &
S=$!
sleep 15
curl -s "127.0.0.1:$HTTP/metrics" | grep -E 'stage="ack_to_publish"|^inspectd_spool_depth'
