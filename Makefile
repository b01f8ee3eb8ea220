# Convenience targets; each one is a script under scripts/ (or one go
# command) that works without make too.
.PHONY: test test-short quickstart demo bench bench-quick fuzz

test:        ## the whole suite, as CI runs it; ends with a summary of skipped tests
	./scripts/test.sh

test-short:  ## the fast loop: no Consul, no binary builds, no fault suite (those tests skip)
	go test -short ./...

quickstart:  ## the Go demo app and one sidecar in standalone mode
	./scripts/quickstart.sh

demo:        ## three app + sidecar pairs against a local Consul, then a handover
	./scripts/demo.sh

bench:       ## the full benchmark (several minutes)
	./scripts/bench.sh

bench-quick: ## the benchmark's quick mode, as CI runs it
	./scripts/bench.sh -quick

fuzz:        ## each Go fuzz target for FUZZTIME (default 30s), e.g. make fuzz FUZZTIME=2m
	./scripts/fuzz.sh
