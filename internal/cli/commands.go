package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/leadercron/leadercron/internal/admin"
	"github.com/leadercron/leadercron/internal/config"
	"github.com/leadercron/leadercron/internal/leader"
	"github.com/leadercron/leadercron/internal/sidecar"
)

// validate loads the configuration exactly as a run would and prints every
// job with its next five slots in its own time zone. It does not contact
// Consul or the app.
func validate(ctx context.Context, env map[string]string, stdout, stderr io.Writer) int {
	cfg, _, code := load(ctx, env, stderr)
	if code != ExitOK {
		return code
	}
	fmt.Fprintf(stdout, "service %s, id %s, lock %s", cfg.Service, cfg.ID, cfg.Lock)
	if cfg.Lock == config.LockConsul {
		fmt.Fprintf(stdout, " (key %s, ttl %s, lock-delay %s)", cfg.Keys().Lock(), cfg.SessionTTL, cfg.LockDelay)
	}
	fmt.Fprintf(stdout, "\napp %s, admin %s, drain timeout %s\n", cfg.AppURL, cfg.Listen, cfg.DrainTimeout)
	fmt.Fprintf(stdout, "shutdown budget %s (drain %s + release %s + session destroy %s + history flush %s + admin shutdown %s):"+
		" give the container a stop timeout above it\n", ShutdownBudget(cfg), cfg.DrainTimeout, leader.FinalRequestTimeout,
		leader.FinalRequestTimeout, sidecar.HistoryFlushTimeout, admin.ShutdownTimeout)
	now := time.Now()
	for _, j := range cfg.Jobs {
		fmt.Fprintf(stdout, "\njob %s (%s): %q tz=%s timeout=%s\n", j.Name, j.Var, j.Spec, j.Location, j.Timeout)
		t := now
		for range 5 {
			t = j.Schedule.Next(t.In(j.Location))
			if t.IsZero() {
				fmt.Fprintln(stdout, "  (no further slots)")
				break
			}
			fmt.Fprintf(stdout, "  %s\n", t.In(j.Location).Format(time.RFC3339))
		}
	}
	return ExitOK
}

// healthcheck asks the running sidecar's /healthz; the image has no shell or
// curl, so this is what HEALTHCHECK and ECS health checks run.
func healthcheck(ctx context.Context, env map[string]string, stderr io.Writer) int {
	listen := env["LEADERCRON_LISTEN"]
	if listen == "" {
		listen = "127.0.0.1:9090"
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		fmt.Fprintf(stderr, "leadercron: healthcheck: LEADERCRON_LISTEN=%q: %v\n", listen, err)
		return ExitFailure
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	u := "http://" + net.JoinHostPort(strings.Trim(host, "[]"), port) + "/healthz"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		fmt.Fprintf(stderr, "leadercron: healthcheck: %v\n", err)
		return ExitFailure
	}
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "leadercron: healthcheck: %v\n", err)
		return ExitFailure
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "leadercron: healthcheck: %s answered %d\n", u, resp.StatusCode)
		return ExitFailure
	}
	return ExitOK
}

// envMap turns os.Environ's KEY=VALUE list into a map; a later duplicate
// wins, as getenv would.
func envMap(environ []string) map[string]string {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}
