#!/bin/sh
# HSAE vs post-hoc on both embedded models at an early, a middle and a late layer (issue 15):
# the same corpus and token budget per store, three seeds each, then one table with chance levels
# (bench/cross_table.py; a rerun skips what is finished).
#   sh bench/cross_model.sh [RUNS_DIR] [TOKENS]    (levels 256..1024, L0 20, 1000 steps of 512 rows; 200 steps is too short: L0 ends at 90-100)
set -e
RUNS=${1:-runs/cross}
TOKENS=${2:-100000}
HSAE=${HSAE:-.venv/bin/hsae}
for ml in gemma3-270m:9 smollm2:15 smollm2:5 gemma3-270m:3 smollm2:25 gemma3-270m:15; do
  m=${ml%%:*}; l=${ml##*:}
  test -f "$RUNS/$m-L$l/acts/manifest.json" || \
    $HSAE collect --model "$m" --layer "$l" --corpus mix --tokens "$TOKENS" --out "$RUNS/$m-L$l/acts" --quiet
  $HSAE ablate --acts "$RUNS/$m-L$l/acts" --variants hsae,post-hoc --seeds 0,1,2 --levels 256,512,1024 \
    --l0 20 --steps 1000 --batch-size 512 --out "$RUNS/$m-L$l/runs" --quiet > /dev/null
done
${PYTHON:-.venv/bin/python} bench/cross_table.py "$RUNS"
