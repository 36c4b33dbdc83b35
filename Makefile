# mirrorproxy — `make` lists the targets.
GO      ?= go
PKGS    ?= ./...
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# golangci-lint: the version CI installs (lint-install) and .golangci.yml is
# written for. It is a tool, not a module of go.mod: docs/DEPENDENCIES.md.
GOLANGCI_LINT_VERSION ?= v2.15.0
GOBIN_DIR     := $(or $(shell $(GO) env GOBIN),$(shell $(GO) env GOPATH)/bin)
GOLANGCI_LINT ?= $(GOBIN_DIR)/golangci-lint

.PHONY: help build test test-short verify lint lint-install fmt vet demo bench fuzz clean-testenv chaos

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

build: ## build bin/mirrorproxy
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o bin/mirrorproxy ./cmd/mirrorproxy

test: ## run every test with the race detector (needs rabbitmq-server)
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

test-short: ## unit tests only, no brokers
	$(GO) test -short -count=1 $(PKGS)

verify: ## gofmt, vet, go.mod tidy, generated code current
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) mod tidy -diff
	$(GO) test -count=1 -run 'TestGeneratedCodeIsCurrent' ./proxy/amqp/...

lint: ## golangci-lint with .golangci.yml (make lint-install installs the pinned version)
	@if [ ! -x "$(GOLANGCI_LINT)" ]; then echo "$(GOLANGCI_LINT) not found: run make lint-install (golangci-lint $(GOLANGCI_LINT_VERSION))"; exit 1; fi
	@have=$$("$(GOLANGCI_LINT)" version --short 2>/dev/null); if [ "v$$have" != "$(GOLANGCI_LINT_VERSION)" ]; then \
		echo "warning: golangci-lint $$have, .golangci.yml is written for $(GOLANGCI_LINT_VERSION) (make lint-install)"; fi
	"$(GOLANGCI_LINT)" run ./...

lint-install: ## install the pinned golangci-lint (GOLANGCI_LINT_VERSION) into GOBIN, unless that version is there
	@have=$$("$(GOLANGCI_LINT)" version --short 2>/dev/null || true); \
	if [ "v$$have" = "$(GOLANGCI_LINT_VERSION)" ]; then echo "golangci-lint $(GOLANGCI_LINT_VERSION) already installed ($(GOLANGCI_LINT))"; \
	else $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION); fi

demo: build ## start a mirrored group (3 local RabbitMQ nodes and sidecars), run a client through it
	$(GO) run ./cmd/mirrorproxy demo

bench: build ## direct vs bare TCP hop vs proxy, interleaved (see docs/PERFORMANCE.md)
	$(GO) run ./cmd/mirrorproxy bench

fuzz: ## run the codec fuzzer for a while
	$(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime 2m ./proxy/amqp/

clean-testenv: ## remove test brokers, containers and networks left by killed test runs
	$(GO) run ./testenv/cmd/testenv cleanup

chaos: ## the long chaos suite: every fault kind on master and mirror, a mixed run, RabbitMQ's own queues (~30 min; docs/RELIABILITY.md)
	$(GO) test -race -count=1 -timeout 60m -v -run 'TestChaos' ./failover/chaos/ -args -chaos.long $(CHAOS_ARGS)

sim-long: ## the gm ring's seeded simulation over 50000 seeds (CI runs 2000)
	$(GO) test -count=1 -run TestSimProperties ./gm -long -timeout 60m

.PHONY: images
images: ## build the docker backend's images (broker from Debian packages, sidecar from the binary), cached by content
	@if ! command -v mmdebstrap >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing mmdebstrap (builds the broker image)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap; \
	fi
	$(GO) run ./testenv/cmd/testenv images
