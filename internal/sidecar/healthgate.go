package sidecar

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/appclient"
	"github.com/leadercron/leadercron/internal/config"
)

// healthGate polls LEADERCRON_APP_HEALTH_URL. The app is unhealthy until
// its first success, and again after AppHealthFailures failures in a row.
type healthGate struct {
	client   *appclient.Client
	cfg      config.Config
	log      hclog.Logger
	mu       sync.Mutex
	healthy  bool
	failures int
	changed  chan struct{} // closed and replaced at every change
}

func newHealthGate(client *appclient.Client, cfg config.Config, log hclog.Logger) *healthGate {
	return &healthGate{client: client, cfg: cfg, log: log, changed: make(chan struct{})}
}

func (g *healthGate) run(ctx context.Context) {
	t := time.NewTicker(g.cfg.AppHealthInterval)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, g.cfg.AppHealthInterval)
		err := g.client.Healthy(pctx, g.cfg.AppHealthURL)
		cancel()
		if ctx.Err() != nil {
			return
		}
		g.observe(err)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (g *healthGate) observe(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	was := g.healthy
	if err == nil {
		g.failures = 0
		g.healthy = true
	} else {
		g.failures++
		g.log.Debug("app health check failed", "failures", g.failures, "error", err)
		if g.failures >= g.cfg.AppHealthFailures {
			g.healthy = false
		}
	}
	if g.healthy != was {
		if g.healthy {
			g.log.Info("app healthy")
		} else {
			g.log.Warn("app unhealthy", "failures", g.failures, "error", err)
		}
		close(g.changed)
		g.changed = make(chan struct{})
	}
}

func (g *healthGate) state() (bool, <-chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.healthy, g.changed
}

// waitHealthy waits until the app is healthy; false means ctx ended.
func (g *healthGate) waitHealthy(ctx context.Context) bool {
	for {
		ok, changed := g.state()
		if ok {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-changed:
		}
	}
}

// waitUnhealthy waits until the app is unhealthy; false means ctx ended.
func (g *healthGate) waitUnhealthy(ctx context.Context) bool {
	for {
		ok, changed := g.state()
		if !ok {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-changed:
		}
	}
}
