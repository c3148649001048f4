#!/usr/bin/env bash
# One training step of the default model's UNet (batch 64), candle vs PyTorch, on this CPU:
# runs examples/candle_train_step.rs, then examples/torch_train_step.py, one after the other,
# and prints both medians and the ratio candle/torch.
#
#   bash examples/train_step_bench.sh
#
# Environment: STEPS (timed steps, default 5), WARMUP (default 2), BATCH (default 64),
# THREADS (default 2), PYTHON (default /work/venv/bin/python), CARGO_TARGET_DIR (default
# /work/target-rel). The candle example is built first if its binary is missing, so the
# measurement never includes a build; build it beforehand when the machine is shared.
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=${STEPS:-5}
WARMUP=${WARMUP:-2}
BATCH=${BATCH:-64}
THREADS=${THREADS:-2}
PYTHON=${PYTHON:-/work/venv/bin/python}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-rel}
BIN="$CARGO_TARGET_DIR/release/examples/candle_train_step"
if [[ ! -x "$BIN" ]]; then
    cargo build --release --example candle_train_step
fi

ARGS=(--batch "$BATCH" --warmup "$WARMUP" --steps "$STEPS")
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
field() { awk -v k="$1" '$1 == k { v = $2 } END { print v }' "$2"; }

echo "== candle ($BIN)"
RAYON_NUM_THREADS=$THREADS "$BIN" "${ARGS[@]}" | tee "$OUT/candle"
echo "== torch ($PYTHON examples/torch_train_step.py)"
OMP_NUM_THREADS=$THREADS "$PYTHON" examples/torch_train_step.py "${ARGS[@]}" | tee "$OUT/torch"

candle_s=$(field s/step "$OUT/candle")
torch_s=$(field s/step "$OUT/torch")
candle_p=$(field params "$OUT/candle")
torch_p=$(field params "$OUT/torch")
echo "== result (batch $BATCH, $THREADS threads, median of $STEPS steps after $WARMUP warm-up)"
echo "candle s/step: $candle_s"
echo "torch  s/step: $torch_s"
echo "ratio candle/torch: $(awk -v a="$candle_s" -v b="$torch_s" 'BEGIN { printf "%.2f", a / b }')"
if [[ "$candle_p" == "$torch_p" ]]; then
    echo "parameters: $candle_p in both"
else
    echo "parameters differ: candle $candle_p, torch $torch_p" >&2
    exit 1
fi
