# The two commands of the README: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test setup lint gen check-gen

$(VENV)/.installed: pyproject.toml client/pyproject.toml server/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=25.1"
	$(PY) -m pip install --quiet -e ./client -e ./server --group dev
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/sendonce-server $(ARGS)

gen: setup
	PATH=$(VENV)/bin:$$PATH scripts/gen-proto

check-gen: setup
	PATH=$(VENV)/bin:$$PATH scripts/check-gen

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy client/sendonce server/sendonce_server tests bench
	$(VENV)/bin/buf lint
	PATH=$(VENV)/bin:$$PATH scripts/buf-breaking

# The Go module's dependencies come from the module proxy first: tests reach no network, and
# tests/test_proto.py builds generated Go against them.
test: check-gen lint
	@if command -v go >/dev/null 2>&1; then cd client/go && go mod download; fi
	$(VENV)/bin/pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-go

# The Go module (client/go): gofmt, go vet and its tests against a real sidecar process. Said
# out loud, never silently, on a machine without Go.
.PHONY: test-go
test-go: setup
	@if ! command -v go >/dev/null 2>&1; then \
	  echo "SKIPPED: the Go module (client/go): no go on PATH"; exit 0; fi; \
	cd client/go && test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt: files above differ"; exit 1; }; \
	go vet ./... && SENDONCE_SERVER=$(CURDIR)/$(VENV)/bin/sendonce-server go test -count=1 ./...

# The benchmark (bench/): every scenario in one run, a table, bench/results/latest.json.
.PHONY: bench
bench: setup
	$(PY) -m bench $(BENCH_ARGS)

# Mutation testing of the rules (Python, Lua, the engine budget lines): slow, not in CI.
.PHONY: mutate
mutate: setup
	$(PY) scripts/mutate.py $(MUTATE_ARGS)
