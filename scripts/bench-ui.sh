#!/usr/bin/env bash
# Measures the studio window in a real X display (Xvfb + Mesa's software Vulkan):
#  1. cold start to the first drawn frame, no model (model load excluded), RUNS times;
#  2. one generation session on a model: UI frame time while generating, preview latency,
#     cancel latency (all from `easel bench-ui`, which prints one JSON line each).
#
#   scripts/bench-ui.sh [MODEL_DIR] [SIZE] [STEPS]   (defaults: tests/fixtures/sd-tiny-a 256 30)
#
# Needs: apt-get install xvfb mesa-vulkan-drivers libvulkan1. EASEL_BIN picks the binary
# (default target/release/easel, built if missing); RUNS the cold-start repeats (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-tests/fixtures/sd-tiny-a}
size=${2:-256}
steps=${3:-30}
bin=${EASEL_BIN:-target/release/easel}
[ -x "$bin" ] || cargo build --release --bin easel
scratch=$(mktemp -d)
# -displayfd: Xvfb picks a free display number and writes it once it accepts connections.
Xvfb -displayfd 3 -screen 0 1400x900x24 -nolisten tcp 3>"$scratch/display" >"$scratch/xvfb.log" 2>&1 &
xvfb=$!
for _ in $(seq 100); do [ -s "$scratch/display" ] && break; sleep 0.1; done
[ -s "$scratch/display" ] || { echo "Xvfb did not start:" >&2; cat "$scratch/xvfb.log" >&2; exit 1; }
display=:$(head -n1 "$scratch/display")
trap 'kill $xvfb 2>/dev/null || true; rm -rf "$scratch"' EXIT
export DISPLAY=$display HOME=$scratch/home XDG_RUNTIME_DIR=$scratch/runtime
mkdir -p "$HOME" && mkdir -m 700 "$XDG_RUNTIME_DIR"

echo "# cold start, no model (wall = exec to process exit, includes closing the window)"
for i in $(seq "${RUNS:-5}"); do
  start=$(date +%s.%N)
  report=$(timeout 60 "$bin" bench-ui 2>/dev/null)
  end=$(date +%s.%N)
  echo "$report" | sed "s/}\$/,\"wall_s\":$(echo "$end - $start" | bc)}/"
done

echo "# generating on $model at ${size}px, $steps steps"
timeout 600 "$bin" bench-ui --model "$model" --size "$size" --steps "$steps" 2>/dev/null
