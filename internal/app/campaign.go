package app

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/admin"
	"github.com/leadercron/leadercron/internal/appclient"
	"github.com/leadercron/leadercron/internal/config"
	"github.com/leadercron/leadercron/internal/leader"
)

// Causes that end a campaign without ending the process.
var (
	errHandover  = errors.New("handover requested")
	errUnhealthy = errors.New("app failed its health check")
)

// electorRunner is what campaign needs of an elector: leader.Elector or
// leader.Standalone.
type electorRunner interface {
	Run(ctx context.Context, lead func(context.Context, *leader.Term) error) error
}

// campaign runs elections until ctx ends. It stays out of them while the
// app health gate reports the app unhealthy (and hands leadership over when
// the app turns unhealthy while leading), and for good after POST
// /handover.
func (s *sidecar) campaign(ctx context.Context, elector electorRunner, gate *healthGate) error {
	for {
		if gate != nil && !gate.waitHealthy(ctx) {
			return nil
		}
		cctx, cancel := context.WithCancelCause(ctx)
		done := make(chan struct{})
		if !s.startCampaign(cancel, done) {
			cancel(nil)
			<-ctx.Done() // handed over while not campaigning
			return nil
		}
		if gate != nil {
			go func() {
				if gate.waitUnhealthy(cctx) {
					cancel(errUnhealthy)
				}
			}()
		}
		err := elector.Run(cctx, s.lead)
		cause := context.Cause(cctx)
		cancel(nil)
		s.endCampaign(err)
		close(done)
		switch {
		case err != nil:
			return err
		case ctx.Err() != nil:
			return nil
		case errors.Is(cause, errHandover):
			s.log.Info("handed over: this sidecar will not lead again; waiting for the stop signal")
			<-ctx.Done()
			return nil
		case errors.Is(cause, errUnhealthy):
			s.log.Warn("app unhealthy: out of the election until it recovers", "app_health_url", s.cfg.AppHealthURL.String())
		default:
			return nil
		}
	}
}

// startCampaign records the running campaign; it returns false if the
// sidecar has handed over.
func (s *sidecar) startCampaign(cancel context.CancelCauseFunc, done chan struct{}) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.handedOver {
		return false
	}
	s.cancelCampaign, s.campaignDone, s.campaignErr = cancel, done, nil
	return true
}

func (s *sidecar) endCampaign(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cancelCampaign = nil
	s.campaignErr = err
}

// handover is POST /handover: a leader stops scheduling, waits for its
// runs, drains the app and releases the lock, and the call answers when
// that is done. A standby, or a leader whose lease ended during the
// handover (no drain then: outcome "lost"), answers once the runs it sent
// in earlier leaderships have finished, so that a preStop hook waiting on
// it protects them too. Either way the sidecar does not campaign again.
func (s *sidecar) handover(ctx context.Context) (admin.HandoverResult, error) {
	start := time.Now()
	s.mu.Lock()
	already := s.handedOver
	s.handedOver = true
	cancel, done, leading, lost := s.cancelCampaign, s.campaignDone, s.term != nil, s.lostTerms
	s.mu.Unlock()
	res := admin.HandoverResult{Outcome: "standby"}
	if already {
		res.Outcome = "already"
		return res, nil
	}
	if cancel != nil {
		s.log.Info("handover requested", "leading", leading)
		cancel(errHandover)
		select {
		case <-done:
		case <-ctx.Done():
			return res, ctx.Err()
		}
	} else {
		s.log.Info("handover: not campaigning; will not lead")
	}
	s.mu.Lock()
	err, lostNow := s.campaignErr, s.lostTerms > lost
	s.mu.Unlock()
	switch {
	case err != nil:
		res.Outcome = "failed"
		res.DurationMS = time.Since(start).Milliseconds()
		return res, err
	case leading && !lostNow:
		res.Outcome = "released"
	case leading:
		res.Outcome = "lost"
	}
	if !s.sched.Wait(ctx) {
		return res, fmt.Errorf("handover: runs from an earlier leadership still in flight: %w", ctx.Err())
	}
	res.DurationMS = time.Since(start).Milliseconds()
	return res, nil
}

// healthGate polls LEADERCRON_APP_HEALTH_URL. The app is unhealthy until
// its first success, and again after AppHealthFailures failures in a row.
type healthGate struct {
	app      *appclient.Client
	cfg      config.Config
	log      hclog.Logger
	mu       sync.Mutex
	healthy  bool
	failures int
	changed  chan struct{} // closed and replaced at every change
}

func newHealthGate(app *appclient.Client, cfg config.Config, log hclog.Logger) *healthGate {
	return &healthGate{app: app, cfg: cfg, log: log, changed: make(chan struct{})}
}

func (g *healthGate) run(ctx context.Context) {
	t := time.NewTicker(g.cfg.AppHealthInterval)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, g.cfg.AppHealthInterval)
		err := g.app.Healthy(pctx, g.cfg.AppHealthURL)
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
