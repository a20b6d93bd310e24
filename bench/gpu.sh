#!/bin/sh
# Issue 14's GPU check as one prepared script, for a lent device machine (the `device` tool runs it
# from the repository root and brings back what it writes under $OUT: six files, under its limit of 8).
# At most 8 minutes (its time limits sum to 480 s; never yet run on a GPU):
#   - the suite at the paper's dims (bench/run_all.py: step times of the HSAE and of independent
#     levels, FLOP rates against plain matmuls, GPU memory, projected hours for 100M tokens), fp32
#     and bf16, each measurement in a fresh process;
#   - the demo's dims (bench/step.py --only demo), three alternated rounds, fp32 and bf16.
# SAELens and the embedded model are not installed there: those parts come back as "error"
# entries, the rest stands. Record the card and the figures in bench/RESULTS.md's GPU section.
#   sh bench/gpu.sh                    # OUT defaults to runs/gpu; PY to python3
set -u
OUT=${OUT:-runs/gpu}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'; } > "$OUT/card.txt" 2>&1
for dt in float32 bfloat16; do
    # each part under its own limit, so one that hangs cannot take the others' time
    timeout 150 $PY bench/run_all.py --device cuda --dtype "$dt" --steps 20 > "$OUT/paper_$dt.json" 2>> "$OUT/log.txt"
    timeout 90 $PY bench/step.py --only demo --device cuda --dtype "$dt" --rounds 3 > "$OUT/demo_$dt.json" 2>> "$OUT/log.txt"
done
ls -l "$OUT"
