# coldpath: the entry points. `make demo` runs the main job, `make test` passes the tests; both
# start with the idempotent `make setup`, the only step that downloads anything.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
CARGO ?= cargo
FUNCTIONS := embeddings faces captioning clip
# The setup step (tools/setup/: bootstrap.py and the hash-locked requirements it installs).
BOOTSTRAP = $(PYTHON) tools/setup/bootstrap.py
# The environment the binaries need locally (ORT library, model paths), as `export` lines.
ENV = eval "$$($(BOOTSTRAP) env)"

.PHONY: help check-help setup env build demo invoke test lint bench fixtures clean
.DEFAULT_GOAL := help

# The help is the `## ` comment on each target's own line, so a target cannot be added without
# it: `make check-help` (run by `make lint`) fails when a target has none or is not .PHONY.
TARGET_LINE := ^[A-Za-z][A-Za-z0-9_.-]*:([^=]|$$)
help: ## list every target (this list)
	@awk 'BEGIN {FS = ":.*## "} /$(TARGET_LINE).*## / {printf "make %-22s %s\n", $$1, $$2}' $(firstword $(MAKEFILE_LIST))

check-help: ## fail if a target lacks its help comment, is not .PHONY, or a .PHONY name has no rule
	@awk '/^\.PHONY:/ {for (i = 2; i <= NF; i++) phony[$$i] = 1} \
	  /$(TARGET_LINE)/ {t = $$0; sub(/:.*/, "", t); rule[t] = 1; if ($$0 ~ /## /) doc[t] = 1} \
	  END {bad = 0; \
	    for (t in rule) if (!(t in doc)) {print "Makefile: target " t " has no ## help" > "/dev/stderr"; bad = 1} \
	    for (t in rule) if (!(t in phony)) {print "Makefile: target " t " is not .PHONY" > "/dev/stderr"; bad = 1} \
	    for (t in phony) if (!(t in rule)) {print "Makefile: .PHONY " t " has no rule" > "/dev/stderr"; bad = 1} \
	    exit bad}' $(firstword $(MAKEFILE_LIST))

# Fetches and verifies ONNX Runtime, the models and the Python tools the tests, demo, benchmarks
# and fixtures use (not the template linters: setup-infra); a no-op when all is in place.
setup: ## fetch and check everything the tests, demo and benchmarks use (idempotent; the only download)
	@$(BOOTSTRAP) check >/dev/null 2>&1 || $(BOOTSTRAP) setup

env: setup ## print the export lines the binaries need: eval "$(make -s env)"
	@$(BOOTSTRAP) env

build: setup ## release build of the function binaries
	@$(CARGO) build --release --locked $(addprefix --bin ,$(FUNCTIONS)) >&2

# Builds the release binary if needed and runs it on one event; stdout is only the response JSON.
invoke: setup ## run one function on one event: make -s invoke FUNCTION=embeddings EVENT=events/embeddings/direct.json
	@test -n "$(FUNCTION)" -a -n "$(EVENT)" || { echo "usage: make -s invoke FUNCTION=<function> EVENT=<event file>" >&2; exit 2; }
	@$(CARGO) build --release --locked --quiet --bin $(FUNCTION) >&2
	@$(ENV); target/release/$(FUNCTION) invoke "$(EVENT)"

demo: build ## set up, build, invoke every function on its sample events, then search the photos by words
	@$(ENV); export EMBEDDINGS_CLIP=true; for f in $(FUNCTIONS); do \
	  for e in events/$$f/*.json; do \
	    echo "== $$f invoke $$e" >&2; \
	    target/release/$$f invoke "$$e" 2>/dev/null | $(PYTHON) tools/show_response.py; \
	  done; \
	done
	@echo "== captions in the local result sink, .cache/results/captioning/ (the generated tiny model: its words are noise)" >&2
	@for r in .cache/results/captioning/*.json; do $(PYTHON) tools/show_response.py < "$$r"; done
	@echo "== photo search: clip search .cache/results/clip \"a photo of a cat\" (the sample photos' vectors" \
	  "from the uploads above, ranked by the query's; the random-weight test model ranks at random," \
	  "the same flow with published weights is what users run: functions/engines/clip/README.md)" >&2
	@$(ENV); target/release/clip search .cache/results/clip "a photo of a cat" 2>/dev/null | $(PYTHON) tools/show_response.py

# fault-injection: the worker's process tests pause a batch mid-flight, and the HEIC/AVIF decoder
# child aborts, hangs or hogs memory on marker bytes (never in release builds).
test: setup ## set up, then run every test (unit, integration, parity, events)
	@$(ENV); $(CARGO) test --workspace --locked --features coldpath-captioning-function/fault-injection,coldpath-image/fault-injection

# The full chaos soak: 1000 messages, workers killed and stopped at random (make test runs 120).
SOAK_MESSAGES ?= 1000
.PHONY: soak
soak: setup ## the captioning chaos soak: SOAK_MESSAGES (1000) messages, workers killed at random
	@$(ENV); COLDPATH_SOAK_MESSAGES=$(SOAK_MESSAGES) $(CARGO) test --locked -p coldpath-captioning-function \
	  --features fault-injection --test soak -- --nocapture

# The always-on server (functions/hosts/serve; README "The always-on server"): both workloads on the
# setup's models, on 127.0.0.1:$(SERVE_PORT). Ctrl-C or SIGTERM drains it and exits 0.
SERVE_PORT ?= 8080
.PHONY: serve soak-serve
serve: setup ## the always-on server (embeddings + faces) on http://127.0.0.1:8080 (SERVE_PORT)
	@$(CARGO) build --release --locked --quiet -p coldpath-serve --bin coldpath-serve >&2
	@echo "coldpath-serve: http://127.0.0.1:$(SERVE_PORT) (POST /v1/embeddings, /v1/faces; GET /ready, /metrics); Ctrl-C stops it" >&2
	@$(ENV); COLDPATH_SERVE_HOST=$${COLDPATH_SERVE_HOST:-127.0.0.1} PORT=$(SERVE_PORT) \
	  exec target/release/coldpath-serve

# The server's soak: mixed load on both workloads for SERVE_SOAK_SECONDS, answers checked and
# resident memory held flat (make test runs it for 5 s, checking the answers only).
SERVE_SOAK_SECONDS ?= 300
soak-serve: setup ## the server under mixed load for SERVE_SOAK_SECONDS (300), memory held flat
	@$(ENV); COLDPATH_SERVE_SOAK_SECONDS=$(SERVE_SOAK_SECONDS) $(CARGO) test --locked -p coldpath-serve \
	  --test serve soak -- --nocapture

# The server's load benchmark (functions/hosts/serve/benches/load.py, figures in functions/hosts/serve/BENCHMARKS.md):
# wrk against coldpath-serve, the same binary one request at a time, and a Python ONNX Runtime
# server, plus any OpenAI-compatible embeddings server named by BENCH_CONTENDER_CMD or
# BENCH_CONTENDER_URL (load.py's docstring has every variable). wrk is Debian's package at a
# pinned version, installed here (root) when missing.
WRK_VERSION := 4.1.0-3+b2
.PHONY: bench-serve setup-wrk
setup-wrk: ## install Debian's wrk at its pinned version when missing (root; for bench-serve)
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends wrk=$(WRK_VERSION); }

bench-serve: setup setup-wrk ## load benchmark of the server (wrk) against a Python server and BENCH_CONTENDER_*
	@$(CARGO) build --release --locked --quiet -p coldpath-serve --bin coldpath-serve --example floor >&2
	@$(ENV); BENCH_THREADS=$(BENCH_THREADS) .venv/bin/python functions/hosts/serve/benches/load.py

# Hostile load on the release server (functions/hosts/serve/benches/hostile.py): a flood of 30 MB uploads
# against a faces queue of 4, 500 stalled request heads beside normal queries, HEIC through the
# decoder child. Figures: target/bench/serve-hostile.json.
.PHONY: bench-serve-hostile
bench-serve-hostile: setup ## the server under a flood of big uploads and stalled connections
	@$(CARGO) build --release --locked --quiet -p coldpath-serve --bin coldpath-serve >&2
	@$(ENV); .venv/bin/python functions/hosts/serve/benches/hostile.py

lint: check-help check-fixtures ## cargo fmt --check, clippy with warnings as errors, the help and fixture manifest checks
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked --features coldpath-captioning-function/fault-injection,coldpath-image/fault-injection -- -D warnings

# Cold starts compare equal work: one thread each, and no checksum pass over the local bundle
# (the Python equivalent does none); once with the optimised-graph cache warm, once without it.
BENCH_THREADS ?= 1
COLD_RUST = env -u EMBEDDINGS_MODEL_SHA256 target/release/embeddings invoke events/embeddings/direct.json
COLD_PYTHON = .venv/bin/python functions/hosts/embeddings/benches/python_cold.py
COLD_FACES = target/release/faces invoke events/faces/direct.json
COLD_OPENCV = .venv/bin/python functions/hosts/faces/benches/opencv_cold.py events/data/photos/group.jpg
# A fresh Lambda sandbox, as `make package` ships it: the graphs `<binary> prepare` wrote (the
# package's graphs/, read-only) and a writable cache emptied before every run (/tmp), against
# the Python reference from the same empty state.
SANDBOX = target/bench/sandbox
SANDBOX_TMP = target/bench/sandbox-tmp
sandbox = env COLDPATH_PREPARED_MODEL_DIR=$(SANDBOX)/$(1) COLDPATH_OPTIMIZED_MODEL_DIR=$(SANDBOX_TMP)/graphs
bench: build ## side-by-side benchmarks against the Python references, then cold starts
	@$(ENV); export BENCH_THREADS=$(BENCH_THREADS) COLDPATH_INTRA_THREADS=$(BENCH_THREADS); \
	  $(CARGO) bench --locked -p coldpath-embeddings-function --bench embeddings; \
	  $(COLD_RUST) >/dev/null 2>&1; \
	  .venv/bin/python tools/cold_start.py --json target/bench/embeddings-cold-start-no-graph-cache.json \
	    --rust "env -u COLDPATH_OPTIMIZED_MODEL_DIR $(COLD_RUST)" --python "$(COLD_PYTHON)"; \
	  $(COLD_PYTHON) --graph-cache target/bench/python-graph-cache >/dev/null 2>&1; \
	  .venv/bin/python tools/cold_start.py --json target/bench/embeddings-cold-start-best-cache.json \
	    --rust "$(COLD_RUST)" --python "$(COLD_PYTHON) --graph-cache target/bench/python-graph-cache"; \
	  .venv/bin/python tools/cold_start.py --json target/bench/embeddings-cold-start.json \
	    --rust "$(COLD_RUST)" --python "$(COLD_PYTHON)"; \
	  rm -rf $(SANDBOX)/embeddings; env -u COLDPATH_OPTIMIZED_MODEL_DIR target/release/embeddings prepare $(SANDBOX)/embeddings >/dev/null; \
	  .venv/bin/python tools/cold_start.py --json target/bench/embeddings-cold-start-fresh-sandbox.json \
	    --fresh-dir $(SANDBOX_TMP) --rust "$(call sandbox,embeddings) $(COLD_RUST)" --python "$(COLD_PYTHON)"
	@$(ENV); $(CARGO) bench --locked -p coldpath-faces-function --bench faces; \
	  .venv/bin/python tools/cold_start.py --json target/bench/faces-cold-start.json \
	    --rust "$(COLD_FACES)" --python "$(COLD_OPENCV)"; \
	  rm -rf $(SANDBOX)/faces; target/release/faces prepare $(SANDBOX)/faces >/dev/null; \
	  .venv/bin/python tools/cold_start.py --json target/bench/faces-cold-start-fresh-sandbox.json \
	    --fresh-dir $(SANDBOX_TMP) --rust "$(call sandbox,faces) $(COLD_FACES)" --python "$(COLD_OPENCV)"
	@$(ENV); $(CARGO) bench --locked -p coldpath-captioning --bench captioning
	@$(MAKE) --no-print-directory bench-image-formats

# A 12 MP photo as JPEG, HEIC (an iPhone's 512-px tile grid, and one picture) and AVIF: decode
# time and peak memory, each in a fresh process, beside Pillow / pillow-heif on the same files.
.PHONY: bench-image-formats
bench-image-formats: setup ## a 12 MP photo as JPEG, HEIC and AVIF: decode time and memory
	@.venv/bin/python shared/image/fixtures/gen_heif_avif.py --bench-out target/bench/heif >/dev/null
	@$(ENV); $(CARGO) bench --locked -p coldpath-image --bench formats

# Each host's deploy contract (`<binary> contract`: the variables it reads, and the server's
# routes), committed beside its crate for `coldpath check`; each host's tests fail when it is stale.
.PHONY: contracts
contracts: ## regenerate each host's contract.json (the variables it reads, the server's routes)
	@for h in embeddings:embeddings faces:faces captioning:captioning clip:clip serve:coldpath-serve; do \
	  dir=$${h%%:*}; bin=$${h#*:}; \
	  $(CARGO) run --quiet --locked --bin $$bin -- contract > functions/hosts/$$dir/contract.json || exit 1; \
	done

# The benchmark outputs `coldpath plan` reads (infra/placement/measurements.toml names each
# figure's file): copied from target/bench/ after `make bench`, `make bench-captioning-real`,
# `make rehearse-real-size` and `make bench-clip`,
# then the plan is printed for each profile so docs/placement.md can be brought up to date.
PLAN_INPUTS := embeddings.json embeddings-cold-start-fresh-sandbox.json faces.json \
  faces-cold-start-fresh-sandbox.json captioning-real.json captioning-lambda-real-size.json clip.json
.PHONY: plan-inputs
plan-inputs: ## copy the benchmark outputs the plan reads into infra/placement/bench/
	@for f in $(PLAN_INPUTS); do \
	  test -f target/bench/$$f || { echo "target/bench/$$f missing: run make bench (make bench-captioning-real and make rehearse-real-size for captioning, make bench-clip for clip)" >&2; exit 1; }; \
	done
	cp $(addprefix target/bench/,$(PLAN_INPUTS)) infra/placement/bench/
	@for p in infra/placement/profiles/*.toml; do $(CARGO) run --quiet --locked -p coldpath-placement -- plan --profile $$p; done

# Regenerates every committed fixture: each generator in tests/fixtures/generators.toml (the one
# list of them and their outputs), in its order, in its venv (tools/fixtures.py). Each script is
# deterministic, so a clean `git status` afterwards means the fixtures are what the scripts make.
.PHONY: check-fixtures
fixtures: setup setup-fixtures ## regenerate every committed fixture (tests/fixtures/generators.toml)
	$(PYTHON) tools/fixtures.py run

check-fixtures: ## fail if a fixture generator is missing from tests/fixtures/generators.toml
	@$(PYTHON) tools/fixtures.py check

# Everything the project writes outside git: cargo's target/, the four virtualenvs (setup,
# setup-infra, setup-fixtures, setup-deploy), .cache/ (downloads, models, cargo-fuzz, results)
# and the fuzz project's outputs; .gitignore lists the same paths.
VENVS := .venv .venv-infra .venv-fixtures .venv-deploy
clean: ## remove every build output, virtualenv and download the project made
	$(CARGO) clean
	rm -rf $(VENVS) .cache fuzz/target fuzz/artifacts fuzz/coverage

# Placement (infra/placement, infra/): lint both CloudFormation templates, scan them with
# checkov (skips are listed with reasons in infra/README.md), and check that infra/template.yaml
# and the GPU worker's env agree with each function's [package.metadata.coldpath] declaration.
# The linters have their own hash-locked venv, .venv-infra (tools/setup/requirements-infra.txt), installed
# by the idempotent setup-infra; `make setup` and `make test` never fetch them.
.PHONY: setup-infra check-infra package setup-deploy deploy
setup-infra: ## .venv-infra: cfn-lint and checkov, hash-locked (idempotent)
	@$(BOOTSTRAP) setup-infra

check-infra: setup-infra ## cfn-lint, checkov and `coldpath check` on the templates
	.venv-infra/bin/cfn-lint infra/template.yaml infra/gpu/batch.yaml infra/pod/service.yaml
	.venv-infra/bin/checkov --quiet --compact --skip-download --framework cloudformation \
	  -f infra/template.yaml -f infra/gpu/batch.yaml -f infra/pod/service.yaml
	$(CARGO) run --quiet --locked -p coldpath-placement -- check

# Lambda zips (embeddings and faces with their models and prepared graphs), the ONNX Runtime
# layer and the image-codecs layer (HEIC and AVIF decoders, for faces and captioning), with
# Lambda's size limits checked; cargo-lambda comes from .venv-deploy (setup-deploy).
package: setup setup-deploy ## Lambda zips (models, prepared graphs) and the ONNX Runtime and image-codecs layers, size-checked
	$(PYTHON) tools/package.py

# The deploy toolchain (SAM CLI, cargo-lambda) in its own hash-locked venv, .venv-deploy
# (tools/setup/requirements-deploy.txt). `make deploy CAPTIONING_MODEL=<hoisted bundle>` validates, packages,
# publishes the captioning bundle under a content-named key, then deploys with infra/samconfig.toml
# pointing at it (tools/deploy.py; the README's Deployment section). The default CAPTIONING_MODEL
# has random weights and is refused unless ALLOW_RANDOM_WEIGHTS=1. Needs AWS credentials;
# DEPLOY_FLAGS=--dry-run prints the steps.
setup-deploy: ## .venv-deploy: the SAM CLI and cargo-lambda, hash-locked (idempotent)
	@$(BOOTSTRAP) setup-deploy

CAPTIONING_MODEL ?= $(CAPTIONING_REAL)-hoisted
# The CLIP bundle (Immich's layout) both towers serve; the default is the tiny random-weight
# fixture, refused unless ALLOW_RANDOM_WEIGHTS=1. CLIP_MODEL= (empty) names no CLIP bundle.
CLIP_MODEL ?= tests/fixtures/clip/vit-b-32-tiny
deploy: setup setup-deploy ## validate, package, publish the captioning and CLIP models, sam deploy: CAPTIONING_MODEL=<dir> CLIP_MODEL=<dir>
	.venv-deploy/bin/python tools/deploy.py --captioning-model $(CAPTIONING_MODEL) \
	  $(if $(CLIP_MODEL),--clip-model $(CLIP_MODEL)) \
	  $(if $(filter 1,$(ALLOW_RANDOM_WEIGHTS)),--allow-random-weights) $(DEPLOY_FLAGS)

# A user's first day, offline (tools/rehearse.py; infra/README.md "Rehearsal"): `sam validate
# --lint` and `sam build`, then each packaged zip run as Lambda lays it out (/var/task, /opt, an
# empty /tmp, the template's env, MemorySize) in a private mount namespace, under a Runtime API
# emulator, against moto's S3 and SQS: make deploy's publish-then-switch order, a Function URL
# request, a photo upload to faces and to the caption queue, the GPU pool's controller on an
# account with no GPU quota, a poison message to the DLQ. Needs root (mount namespace, cgroup).
# REHEARSE_FLAGS=--skip-sam skips the SAM CLI; --keep keeps target/rehearse/sandboxes.
.PHONY: rehearse
rehearse: setup setup-deploy package ## offline first day: each zip in a Lambda-shaped sandbox against moto (root)
	.venv-deploy/bin/python tools/rehearse.py $(REHEARSE_FLAGS)

# Fuzzing (fuzz/, a cargo-fuzz project outside the workspace; see fuzz/README.md). The stable
# toolchain runs cargo-fuzz with RUSTC_BOOTSTRAP=1; the pinned cargo-fuzz is installed into
# .cache/cargo-fuzz on first use. `make fuzz` runs each target FUZZ_SECONDS (600) one after the
# other; `make fuzz-smoke` runs each FUZZ_SMOKE_SECONDS (20) from its committed corpus (CI).
# New inputs go to fuzz/target/corpus/<target>, never into the committed fuzz/corpus/<target>.
.PHONY: fuzz fuzz-smoke fuzz-build
CARGO_FUZZ_VERSION := 0.13.2
FUZZ_TARGETS := image_decode embeddings_request faces_request captioning_message clip_request tokenizer
FUZZ_SECONDS ?= 600
FUZZ_SMOKE_SECONDS ?= 20
FUZZ_RSS_MB ?= 2048
FUZZ_ENV = export PATH="$(CURDIR)/.cache/cargo-fuzz/bin:$$PATH" RUSTC_BOOTSTRAP=1
fuzz_run = $(FUZZ_ENV); $(ENV); for t in $(FUZZ_TARGETS); do \
	  case $$t in image_decode) d=image;; tokenizer) d=tokenizer;; *) d=json;; esac; \
	  mkdir -p fuzz/target/corpus/$$t; \
	  echo "== fuzz $$t ($(1) s)" >&2; \
	  nice -n 19 cargo fuzz run --fuzz-dir fuzz $$t \
	    $(CURDIR)/fuzz/target/corpus/$$t $(CURDIR)/fuzz/corpus/$$t -- \
	    -dict=$(CURDIR)/fuzz/dict/$$d.dict -max_total_time=$(1) -timeout=10 \
	    -rss_limit_mb=$(FUZZ_RSS_MB) -print_final_stats=1; \
	done

fuzz-build: setup ## install the pinned cargo-fuzz and build every fuzz target
	@test -x .cache/cargo-fuzz/bin/cargo-fuzz || \
	  $(CARGO) install --locked --root .cache/cargo-fuzz cargo-fuzz@$(CARGO_FUZZ_VERSION)
	@$(FUZZ_ENV); nice -n 19 cargo fuzz build --fuzz-dir fuzz

fuzz: fuzz-build ## run every cargo-fuzz target FUZZ_SECONDS (600) (fuzz/README.md)
	@$(call fuzz_run,$(FUZZ_SECONDS))

fuzz-smoke: fuzz-build ## run every cargo-fuzz target FUZZ_SMOKE_SECONDS (20) from its committed corpus
	@$(call fuzz_run,$(FUZZ_SMOKE_SECONDS))

# Captioning fixtures from the real exporter (tests/fixtures/captioning/gen_optimum_fixtures.py):
# random ViT + GPT-2 models exported by optimum, with transformers' generate() as the reference.
# torch, transformers and optimum live in their own hash-locked venv, .venv-fixtures
# (tools/setup/requirements-fixtures.txt), installed by setup-fixtures; `make setup` and `make test` never
# fetch them. `make bench-captioning-real` builds the real-size ViT-GPT2 (random weights, ~1.1 GB)
# into .cache/models/ once, rewrites a copy with tools/hoist_cross_attention.py (the model to
# deploy) and measures both (functions/engines/captioning/BENCHMARKS.md).
CAPTIONING_REAL ?= .cache/models/vit-gpt2-random
.PHONY: setup-fixtures fixtures-captioning bench-captioning-real
setup-fixtures: ## .venv-fixtures (torch, transformers, optimum) and the fixture scripts' inputs
	@$(BOOTSTRAP) setup-fixtures

fixtures-captioning: setup setup-fixtures ## regenerate only the optimum-exported captioning fixtures
	nice -n 10 $(PYTHON) tools/fixtures.py run gen_optimum_fixtures.py gen_hoisted_fixtures.py

# CLIP and SigLIP fixtures from open_clip (tests/fixtures/clip/gen_clip_fixtures.py), same venv.
.PHONY: fixtures-clip
fixtures-clip: setup setup-fixtures ## regenerate only the CLIP and SigLIP fixtures (open_clip's models and references)
	nice -n 10 $(PYTHON) tools/fixtures.py run gen_clip_fixtures.py

# The CLIP engine's benchmark (functions/engines/clip/benches/clip.rs, figures in
# functions/engines/clip/BENCHMARKS.md): real-size random-weight ViT-B-32 and ViT-B-16-SigLIP built by
# open_clip in Immich's layout (~1.4 GB, not committed), then the engine beside the same towers
# driven from Python (onnxruntime + open_clip + PIL, benches/clip_peer.py in .venv-fixtures).
CLIP_BENCH_MODELS := target/bench/clip-models
.PHONY: bench-clip-models bench-clip
bench-clip-models: setup-fixtures ## (re)build the real-size random-weight CLIP and SigLIP models into target/bench/clip-models
	nice -n 10 .venv-fixtures/bin/python functions/engines/clip/benches/make_bench_models.py --out $(CLIP_BENCH_MODELS)

$(CLIP_BENCH_MODELS)/siglip-b-16/visual/model.onnx: | setup-fixtures
	nice -n 10 .venv-fixtures/bin/python functions/engines/clip/benches/make_bench_models.py --out $(CLIP_BENCH_MODELS)

bench-clip: setup $(CLIP_BENCH_MODELS)/siglip-b-16/visual/model.onnx ## CLIP engine against the same towers from Python: query, photo, batches, cold start, memory
	@$(ENV); BENCH_THREADS=$(BENCH_THREADS) $(CARGO) bench --locked -p coldpath-clip --bench clip

$(CAPTIONING_REAL)/encoder_model.onnx: | setup-fixtures
	nice -n 10 .venv-fixtures/bin/python tests/fixtures/captioning/gen_optimum_fixtures.py --real-size $(CAPTIONING_REAL)

bench-captioning-real: setup $(CAPTIONING_REAL)/encoder_model.onnx ## the real-size captioning model (random weights, ~1.1 GB, built once)
	@$(ENV); nice -n 10 .venv-fixtures/bin/python functions/engines/captioning/benches/real_size.py \
	  --model $(CAPTIONING_REAL) --hoisted $(CAPTIONING_REAL)-hoisted

# Captioning as deployed at real size (tools/rehearse.py --real-size; infra/README.md "Real-size
# rehearsal"): the packaged function in the Lambda-shaped sandbox with the real-size ViT-GPT2
# (random weights, ~1.1 GB, hoisted) published to moto's S3 and fetched into an empty /tmp,
# Lambda's 10 s init limit, MemorySize and EphemeralStorage, then an SQS batch of real photos
# with a 12 MP HEIC: init, first caption and peak memory as JSON (target/bench/
# captioning-lambda-real-size.json, read by `coldpath plan` after `make plan-inputs`). Root.
.PHONY: rehearse-real-size
$(CAPTIONING_REAL)-hoisted/decoder_cross_model.onnx: $(CAPTIONING_REAL)/encoder_model.onnx
	.venv/bin/python tools/hoist_cross_attention.py $(CAPTIONING_REAL) $(CAPTIONING_REAL)-hoisted

rehearse-real-size: setup setup-deploy package $(CAPTIONING_REAL)-hoisted/decoder_cross_model.onnx ## captioning's real-size model in the Lambda-shaped sandbox: init, first caption, memory (root)
	@.venv/bin/python shared/image/fixtures/gen_heif_avif.py --bench-out target/bench/heif >/dev/null
	.venv-deploy/bin/python tools/rehearse.py --real-size $(CAPTIONING_REAL)-hoisted $(REHEARSE_FLAGS)
