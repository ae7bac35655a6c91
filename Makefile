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
	$(PY) scripts/gen-prometheusrule.py

check-gen: setup
	PATH=$(VENV)/bin:$$PATH scripts/check-gen
	$(PY) scripts/gen-prometheusrule.py --check

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy client/sendonce server/sendonce_server tests bench
	$(VENV)/bin/buf lint
	PATH=$(VENV)/bin:$$PATH scripts/buf-breaking

# test-tools first: the Go modules' dependencies (and grpcurl) come from the module proxy there,
# so the tests reach no network (tests/test_proto.py and tests/docs build Go against them).
test: check-gen lint test-tools
	$(MAKE) --no-print-directory test-alerts
	$(VENV)/bin/pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-go

# The Go modules: the client (client/go) and the controller-runtime example
# (examples/go-controller, whose test prints the story's numbers).
GO_MODULES := client/go examples/go-controller

# What the tests need besides the venv: grpcurl for tests/docs (pinned, from the Go module
# proxy; the first install takes a few minutes) and the Go modules' dependencies, fetched here so
# that the tests themselves reach no network. Said out loud, never silently, without Go.
GRPCURL_VERSION := v1.9.4
.PHONY: test-tools
test-tools:
	@if ! command -v go >/dev/null 2>&1; then \
	  echo "SKIPPED: grpcurl and the Go modules' dependencies: no go on PATH"; exit 0; fi; \
	{ command -v grpcurl >/dev/null || test -x "$$(go env GOPATH)/bin/grpcurl" || \
	  go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION); } && \
	for module in $(GO_MODULES); do (cd $$module && go mod download) || exit 1; done

# The alert rules (deploy/monitoring/alerts.yaml): promtool's check and the unit tests of every
# alert. promtool comes with Debian's `prometheus` package (.ci/run installs it); without it the
# target fails under CI=true and says so out loud elsewhere.
.PHONY: test-alerts
test-alerts:
	@if ! command -v promtool >/dev/null 2>&1; then \
	  if [ "$${CI:-}" = true ]; then \
	    echo "promtool not found: apt-get install prometheus (.ci/run does)"; exit 1; fi; \
	  echo "SKIPPED: the alert rules (deploy/monitoring): no promtool on PATH (apt-get install prometheus)"; \
	  exit 0; fi; \
	promtool check rules deploy/monitoring/alerts.yaml && \
	promtool test rules deploy/monitoring/alerts_test.yaml

# gofmt, go vet and the tests of each Go module against real sidecar processes. Said out loud,
# never silently, on a machine without Go.
.PHONY: test-go
test-go: setup
	@if ! command -v go >/dev/null 2>&1; then \
	  echo "SKIPPED: the Go modules ($(GO_MODULES)): no go on PATH"; exit 0; fi; \
	for module in $(GO_MODULES); do \
	  unformatted="$$(cd $$module && gofmt -l .)"; \
	  if [ -n "$$unformatted" ]; then echo "$$unformatted"; echo "gofmt: files above differ in $$module"; exit 1; fi; \
	  verbose=; [ $$module = examples/go-controller ] && verbose=-v; \
	  (cd $$module && go vet ./... && \
	    SENDONCE_SERVER=$(CURDIR)/$(VENV)/bin/sendonce-server go test -count=1 $$verbose ./...) || exit 1; \
	done

# The benchmark (bench/): every scenario in one run, a table, bench/results/latest.json.
.PHONY: bench
bench: setup
	$(PY) -m bench $(BENCH_ARGS)

# Mutation testing of the rules (Python, Lua, the engine budget lines): slow, not in CI.
.PHONY: mutate
mutate: setup
	$(PY) scripts/mutate.py $(MUTATE_ARGS)
