// Command naive-leader runs the naive baseline (package naive) as a
// process, so benchmarks and fault-injection tests can start, signal and
// kill it like the leadercron binary. Settings come from flags; the Consul
// address and token from the standard CONSUL_HTTP_* variables.
//
//	naive-leader -key leadercron/bench/leader -id a -ttl 10s -lock-delay 5s \
//	    -app-url http://127.0.0.1:8080 -job tick='* * * * * *'
//
// SIGTERM or SIGINT stops the cron, releases the lock and exits 0.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/tools/naive"
)

// jobFlags collects repeated -job name=spec flags.
type jobFlags map[string]string

func (j jobFlags) String() string { return fmt.Sprint(map[string]string(j)) }

func (j jobFlags) Set(v string) error {
	name, spec, ok := strings.Cut(v, "=")
	if !ok || name == "" || spec == "" {
		return fmt.Errorf("want name=spec, got %q", v)
	}
	j[name] = spec
	return nil
}

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("naive-leader", flag.ContinueOnError)
	host, _ := os.Hostname()
	jobs := jobFlags{}
	key := fs.String("key", envOr("NAIVE_KEY", "naive/leader"), "lock key (env NAIVE_KEY)")
	id := fs.String("id", envOr("NAIVE_ID", fmt.Sprintf("%s-%d", host, os.Getpid())), "identity sent as Leadercron-Id (env NAIVE_ID)")
	ttl := fs.Duration("ttl", 10*time.Second, "session TTL")
	lockDelay := fs.Duration("lock-delay", 5*time.Second, "session lock-delay")
	appURL := fs.String("app-url", envOr("NAIVE_APP_URL", "http://127.0.0.1:8080"), "the app (env NAIVE_APP_URL)")
	level := fs.String("log-level", "info", "log level")
	fs.Var(jobs, "job", "name=cron spec with seconds field (repeatable)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "naive", Level: hclog.LevelFromString(*level), JSONFormat: true, Output: os.Stderr})
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Error("consul client", "error", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err = naive.Run(ctx, naive.Options{
		Client: client, Key: *key, ID: *id, SessionTTL: *ttl, LockDelay: *lockDelay,
		Jobs: jobs, AppURL: *appURL, HTTPClient: &http.Client{}, Log: log,
	})
	if err != nil {
		log.Error("naive leader", "error", err)
		return 2
	}
	return 0
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
