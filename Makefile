# Developer entry points. The work is done by the scripts in deploy/local/;
# the header of each says what it does and which variables it reads.

SHELL := /bin/bash
.DEFAULT_GOAL := help
BUF := .tools/bin/buf

.PHONY: help up down logs migrate tools lint test deploy-check smoke smoke-selftest rest-checks sweep bench chaos

help:
	@echo 'make up              build (release), migrate and start order-svc, processor-svc, relay'
	@echo 'make down            stop them'
	@echo 'make logs            follow their logs (.run/logs)'
	@echo 'make migrate         build (debug) and run both migrate subcommands'
	@echo 'make tools           install buf, grpcurl, cargo-nextest into .tools/bin'
	@echo 'make lint            cargo fmt --check, clippy -D warnings, buf lint, buf breaking'
	@echo 'make test            every test: buf lint/breaking, fmt, clippy, nextest, AsyncAPI, README smoke, REST checks, sweep'
	@echo 'make deploy-check    static checks of the Helm chart, Dockerfile and compose file'
	@echo 'make smoke           run the README walk-through against fresh binaries'
	@echo 'make smoke-selftest  test the README smoke runner itself'
	@echo 'make rest-checks     schemathesis on each /openapi.json, /docs in headless Chromium'
	@echo 'make sweep           remove leftover test databases, queues and exchanges'
	@echo 'make bench           build (release) and benchmark the real binaries: target/bench/ (docs/BENCH.md)'
	@echo 'make chaos           build (release), 5,000 orders while relay, processor, broker and DB connections fail; print the ledger'

up:
	@bash deploy/local/up.sh

down:
	@bash deploy/local/down.sh

logs:
	@compgen -G '.run/logs/*.log' >/dev/null || { echo "no logs in .run/logs: run 'make up' first" >&2; exit 1; }
	tail -F .run/logs/*.log

migrate:
	cargo build --workspace --bins
	@source deploy/local/lib.sh && bin=$$(om_target_dir)/debug && \
	  echo "$$bin/order-svc migrate" && "$$bin/order-svc" migrate && \
	  echo "$$bin/processor-svc migrate" && "$$bin/processor-svc" migrate

tools:
	@bash deploy/local/tools.sh

lint:
	@bash deploy/local/tools.sh buf
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(BUF) lint
	bash deploy/local/contract-check.sh

test:
	@bash deploy/local/test.sh

deploy-check:
	@bash deploy/check.sh

smoke:
	@bash deploy/local/readme-smoke.sh

smoke-selftest:
	@bash deploy/local/readme-smoke-selftest.sh

rest-checks:
	@bash deploy/local/rest-checks.sh

sweep:
	@bash deploy/local/sweep.sh

bench:
	@bash deploy/local/bench.sh

chaos:
	@bash deploy/local/chaos.sh
