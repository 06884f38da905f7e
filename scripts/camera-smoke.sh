#!/usr/bin/env bash
# The V4L2 camera source on a machine without that camera: `inspectd run` must name the missing
# device and say the camera is lost (an alert, spooled: no broker is needed), not crash or hang.
# For the arm64 build under qemu: the camera code path (nokhwa, v4l, its generated bindings)
# runs on the target's instruction set.
#
#   scripts/camera-smoke.sh "INSPECTD COMMAND"   e.g. "qemu-aarch64 -L /usr/aarch64-linux-gnu target/…/inspectd"
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a cmd <<<"${1:?usage: $0 \"INSPECTD COMMAND\"}"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat >"$dir/camera.toml" <<TOML
device_id = "camera-smoke"
[source]
kind = "camera"
device = "/dev/video63"
fps = 5
[model]
path = "$PWD/models/surface-defect-int8.onnx"
[mqtt]
# Nothing listens here: verdicts and alerts wait in the spool.
url = "mqtt://127.0.0.1:9"
[spool]
path = "$dir/spool.redb"
[http]
listen = ""
TOML
INSPECTD_LOG=info timeout -s INT 20 "${cmd[@]}" run -c "$dir/camera.toml" >"$dir/out.log" 2>&1 || true
if grep -q "/dev/video63" "$dir/out.log" && grep -qi "camera" "$dir/out.log" && grep -qi "lost" "$dir/out.log"; then
  echo "camera smoke: the missing /dev/video63 is reported lost: $(grep -i -m1 'lost' "$dir/out.log" | cut -c1-160)"
else
  echo "camera smoke: no 'camera lost' naming /dev/video63 in the daemon's log:" >&2
  cat "$dir/out.log" >&2
  exit 1
fi
