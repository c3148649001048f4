#!/usr/bin/env bash
# Launches the real `easel` binary under Xvfb on the tiny test model, types a prompt, presses
# Ctrl+Enter, waits (bounded) until the image is written to the library, and saves a
# screenshot of the screen.
#
#   scripts/screenshot.sh [OUT.png]        (default target/screenshots/studio.png)
#
# Needs: apt-get install xvfb mesa-vulkan-drivers libvulkan1 imagemagick xdotool
# EASEL_BIN picks the binary (default: target/release/easel, built if missing);
# EASEL_MODEL the model folder (default: tests/fixtures/sd-tiny-a).
# Exit status 0 only when the window appeared, an image was generated and the shot was saved.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/screenshots/studio.png}
bin=${EASEL_BIN:-target/release/easel}
model=${EASEL_MODEL:-tests/fixtures/sd-tiny-a}
[ -x "$bin" ] || cargo build --release --bin easel
mkdir -p "$(dirname "$out")"

for tool in Xvfb xdotool import; do
  command -v "$tool" >/dev/null || { echo "screenshot: $tool is missing (apt-get install xvfb xdotool imagemagick mesa-vulkan-drivers libvulkan1)" >&2; exit 1; }
done

# A private home: the studio's settings and library go to a scratch folder, not the user's.
scratch=$(mktemp -d)
# -displayfd: Xvfb picks a free display number and writes it once it accepts connections.
Xvfb -displayfd 3 -screen 0 1400x900x24 -nolisten tcp 3>"$scratch/display" >"$scratch/xvfb.log" 2>&1 &
xvfb=$!
for _ in $(seq 100); do [ -s "$scratch/display" ] && break; sleep 0.1; done
[ -s "$scratch/display" ] || { echo "Xvfb did not start:" >&2; cat "$scratch/xvfb.log" >&2; exit 1; }
display=:$(head -n1 "$scratch/display")
app=
cleanup() {
  [ -n "$app" ] && kill "$app" 2>/dev/null || true
  kill "$xvfb" 2>/dev/null || true
  rm -rf "$scratch"
}
trap cleanup EXIT
export DISPLAY=$display HOME=$scratch/home XDG_DATA_HOME=$scratch/data XDG_CONFIG_HOME=$scratch/config
export XDG_RUNTIME_DIR=$scratch/runtime
mkdir -p "$HOME" && mkdir -m 700 "$XDG_RUNTIME_DIR"

"$bin" studio --fresh --model "$model" >"$scratch/easel.log" 2>&1 &
app=$!

# Bounded waits everywhere: the window, then the image file.
window=
for _ in $(seq 200); do
  # --onlyvisible: the window must be mapped before it can take the focus.
  window=$(xdotool search --onlyvisible --name '^Easel$' 2>/dev/null | head -n1 || true)
  [ -n "$window" ] && break
  kill -0 "$app" 2>/dev/null || { echo "screenshot: easel exited early:" >&2; cat "$scratch/easel.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$window" ] || { echo "screenshot: no window after 20 s" >&2; cat "$scratch/easel.log" >&2; exit 1; }

# No window manager runs, so give the window the keyboard focus ourselves; input then goes
# through XTEST like a real keyboard and mouse (winit ignores synthetic XSendEvent input).
# On a loaded machine the first attempts can come before the X server sees the window as
# viewable (BadMatch): retry, bounded.
focused=
for _ in $(seq 50); do
  timeout 5 xdotool windowfocus --sync "$window" 2>/dev/null && { focused=1; break; }
  sleep 0.2
done
[ -n "$focused" ] || { echo "screenshot: the window never took the focus" >&2; exit 1; }
sleep 1
# The prompt field is the first text field of the left panel.
xdotool mousemove --window "$window" 150 80 click 1
xdotool type --delay 20 "a red circle on a blue background"
# Ctrl+Enter is ignored until the model has loaded: press again every 5 s, at most 12 times.
found=
for _ in $(seq 12); do
  xdotool key ctrl+Return
  for _ in $(seq 50); do
    found=$(find "$scratch/data" -name '*.png' 2>/dev/null | head -n1 || true)
    [ -n "$found" ] && break 2
    sleep 0.1
  done
done
if [ -z "$found" ]; then
  import -window root "$out" || true
  echo "screenshot: no image generated in 60 s (screen saved to $out)" >&2
  cat "$scratch/easel.log" >&2
  exit 1
fi
sleep 1
import -window root "$out"
echo "screenshot: $out (image written to ${found#"$scratch"/})"
