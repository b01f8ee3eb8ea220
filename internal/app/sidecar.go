package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/admin"
	"github.com/leadercron/leadercron/internal/appclient"
	"github.com/leadercron/leadercron/internal/config"
	"github.com/leadercron/leadercron/internal/leader"
	"github.com/leadercron/leadercron/internal/metrics"
	"github.com/leadercron/leadercron/internal/scheduler"
)

// sidecar ties the scheduler, the app client and the status together.
type sidecar struct {
	cfg   config.Config
	log   hclog.Logger
	app   *appclient.Client
	sched *scheduler.Scheduler
	m     *metrics.Metrics

	mu   sync.Mutex
	term *leader.Term // nil while not leading
}

func newSidecar(cfg config.Config, log hclog.Logger, m *metrics.Metrics) *sidecar {
	// No client-wide timeout: every trigger has its own deadline and
	// every drain poll its own timeout.
	app := appclient.New(cfg.AppURL, cfg.ID, &http.Client{})
	jobs := make([]scheduler.Job, len(cfg.Jobs))
	for i, j := range cfg.Jobs {
		jobs[i] = scheduler.Job{Name: j.Name, Spec: j.Spec, Schedule: j.Schedule, Location: j.Location, Timeout: j.Timeout}
	}
	sched := scheduler.New(jobs, triggerer{app}, scheduler.SystemClock{}, log.Named("scheduler"), scheduler.Options{
		// Renewals come every TTL/3 and the lease is TTL*4/5 long, so
		// a healthy leader always has more than TTL/5 left; less means
		// renewals are failing and the lease is about to end.
		LeaseMargin: cfg.SessionTTL / 5,
		Observer:    m,
	})
	return &sidecar{cfg: cfg, log: log, app: app, sched: sched, m: m}
}

// lead is the elector's lead function: schedule until the context ends;
// then, unless leadership was lost, wait for triggers in flight and drain
// the app, all within LEADERCRON_DRAIN_TIMEOUT, before returning (after
// which the elector releases the lock).
func (s *sidecar) lead(ctx context.Context, term *leader.Term) error {
	s.setTerm(term)
	defer s.setTerm(nil)
	s.m.LeadershipStarted(term)
	defer s.m.LeadershipEnded()
	s.sched.Lead(ctx, term)

	cause := context.Cause(ctx)
	if errors.Is(cause, leader.ErrLockLost) {
		// Another sidecar may lead soon; this one stops triggering at
		// once. Runs already sent finish on their own deadlines: the
		// app is not drained, since it will be triggered again if this
		// sidecar leads again.
		return nil
	}

	start := time.Now()
	s.m.DrainStarted()
	defer s.m.DrainDone()
	s.log.Info("draining", "fencing_token", term.Token(), "drain_timeout", s.cfg.DrainTimeout)
	dctx, cancel := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
	defer cancel()
	if !s.sched.Wait(dctx) {
		return fmt.Errorf("wait for triggers in flight: %w", appclient.ErrDrainTimeout)
	}
	res, err := s.app.Drain(dctx, s.cfg.DrainInterval)
	if err != nil {
		return fmt.Errorf("drain app: %w", err)
	}
	if res.Gone {
		s.log.Warn("app refused the drain connection: it is gone, so nothing runs", "app_url", s.cfg.AppURL.String())
	}
	s.log.Info("app drained", "polls", res.Polls, "duration", time.Since(start).Round(time.Millisecond))
	return nil
}

func (s *sidecar) setTerm(t *leader.Term) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.term = t
}

func (s *sidecar) status() admin.Status {
	st := admin.Status{ID: s.cfg.ID, Service: s.cfg.Service, Jobs: []admin.JobStatus{}}
	s.mu.Lock()
	term := s.term
	s.mu.Unlock()
	if term != nil {
		if rem := term.Remaining(); rem > 0 {
			st.Leader = true
			st.FencingToken = term.Token()
			if s.cfg.Lock == config.LockConsul {
				st.LeaseRemainingMS = rem.Milliseconds()
			}
		}
	}
	for _, j := range s.sched.Status() {
		js := admin.JobStatus{Name: j.Name, Schedule: j.Spec, TZ: j.Location, NextSlot: j.NextSlot.UTC()}
		if l := j.Last; l != nil {
			js.Last = &admin.LastSlot{Slot: l.Slot.UTC(), Outcome: l.Outcome, Reason: l.Reason,
				HTTPStatus: l.Status, DurationMS: l.Duration.Milliseconds()}
		}
		st.Jobs = append(st.Jobs, js)
	}
	return st
}

// triggerer adapts the app client to the scheduler's App.
type triggerer struct{ c *appclient.Client }

func (t triggerer) Trigger(ctx context.Context, r scheduler.Run) scheduler.Result {
	res := t.c.Trigger(ctx, appclient.Trigger{Job: r.Job, Slot: r.Slot, FencingToken: r.FencingToken, Deadline: r.Deadline, Attempt: 1})
	return scheduler.Result{Outcome: res.Outcome, Status: res.Status, Duration: res.Duration, Err: res.Err}
}
