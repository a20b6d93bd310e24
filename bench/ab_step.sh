#!/bin/sh
# Before/after a change, side by side: bench/step.py --only CONFIG for the source of REV and for
# the working tree, alternated ROUNDS times (each mode in a fresh process), then the medians.
#   sh bench/ab_step.sh REV [CONFIG] [ROUNDS]      e.g. sh bench/ab_step.sh c2c8e3d demo 3
set -e
REV=$1; CONF=${2:-demo}; ROUNDS=${3:-3}
PY=${PYTHON:-.venv/bin/python}
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
mkdir "$TMP/before" && git archive "$REV" src | tar -x -C "$TMP/before"
r=1
while [ $r -le "$ROUNDS" ]; do
  PYTHONPATH="$TMP/before/src" $PY bench/step.py --only "$CONF" > "$TMP/before-$r.json" 2>/dev/null
  PYTHONPATH="$PWD/src" $PY bench/step.py --only "$CONF" > "$TMP/after-$r.json" 2>/dev/null
  r=$((r + 1))
done
$PY - "$TMP" "$CONF" <<'PY'
import glob, json, statistics, sys
tmp, conf = sys.argv[1], sys.argv[2]
out = {}
for v in ("before", "after"):
    rs = [json.load(open(f))["configs"][conf] for f in sorted(glob.glob(f"{tmp}/{v}-*.json"))]
    runs = {m: [r[m]["seconds_per_step"] for r in rs] for m in ("hsae", "independent", "saelens")}
    med = {m: statistics.median(x) for m, x in runs.items()}
    # the modes of one round ran minutes apart, not hours: the median of the rounds' own ratios
    # is the steadier figure on a machine whose speed drifts
    paired = {o: statistics.median(h / x for h, x in zip(runs["hsae"], runs[o])) for o in ("independent", "saelens")}
    out[v] = {"median_s": med, "runs_s": runs, "hsae_over_independent": med["hsae"] / med["independent"],
              "hsae_over_saelens": med["hsae"] / med["saelens"],
              "paired_hsae_over_independent": paired["independent"], "paired_hsae_over_saelens": paired["saelens"]}
print(json.dumps(out, indent=1))
PY
