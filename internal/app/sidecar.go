package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/admin"
	"github.com/leadercron/leadercron/internal/appclient"
	"github.com/leadercron/leadercron/internal/config"
	"github.com/leadercron/leadercron/internal/fate"
	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/leader"
	"github.com/leadercron/leadercron/internal/ledger"
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

	store   *ledger.Store  // nil in standalone mode
	history *historyWriter // nil in standalone mode
	gate    *healthGate    // nil without LEADERCRON_APP_HEALTH_URL

	mu             sync.Mutex
	term           *leader.Term // nil while not leading
	cancelCampaign context.CancelCauseFunc
	campaignDone   chan struct{}
	campaignErr    error
	handedOver     bool
	lostTerms      int             // leaderships that ended by a loss, not a drain
	unknownReqs    map[string]bool // run requests for jobs this sidecar does not know, logged once
}

// newSidecar builds the sidecar; store is nil in standalone mode, signer
// nil without LEADERCRON_TRIGGER_SECRET.
func newSidecar(cfg config.Config, log hclog.Logger, m *metrics.Metrics, store *ledger.Store, signer *appclient.Signer) *sidecar {
	// No client-wide timeout: every trigger has its own deadline and
	// every drain poll its own timeout.
	app := appclient.New(cfg.AppURL, cfg.ID, appclient.NewHTTPClient(), appclient.WithSigner(signer))
	jobs := make([]scheduler.Job, len(cfg.Jobs))
	for i, j := range cfg.Jobs {
		jobs[i] = j.Job
	}
	s := &sidecar{cfg: cfg, log: log, app: app, m: m, store: store, unknownReqs: map[string]bool{}}
	opts := scheduler.Options{
		// Renewals come every TTL/4 and the lease is TTL*4/5 long, so
		// a healthy leader always has more than TTL/5 left; less means
		// renewals are failing and the lease is about to end.
		LeaseMargin: cfg.SessionTTL / 5,
		Observer:    m,
	}
	if store != nil {
		s.history = newHistoryWriter(store, cfg.ID, log.Named("history"))
		opts.Recorder = s.history
	}
	if cfg.AppHealthURL != nil {
		s.gate = newHealthGate(app, cfg, log.Named("health"))
	}
	s.sched = scheduler.New(jobs, triggerer{app}, scheduler.SystemClock{}, log.Named("scheduler"), opts)
	return s
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
	// The drain timeout counts from the stop signal: claims and takes
	// still in flight then are inside it.
	stopped := make(chan time.Time, 1)
	defer context.AfterFunc(ctx, func() { stopped <- time.Now() })()
	var watcher sync.WaitGroup
	if s.store != nil {
		watcher.Go(func() { s.watchRequests(ctx, term) })
	}
	s.sched.Lead(ctx, term)
	// No run-now request may start after the drain began.
	watcher.Wait()

	cause := context.Cause(ctx)
	if errors.Is(cause, leader.ErrLockLost) {
		// Another sidecar may lead soon; this one stops triggering at
		// once. Runs already sent finish on their own deadlines: the
		// app is not drained, since it will be triggered again if this
		// sidecar leads again.
		s.mu.Lock()
		s.lostTerms++
		s.mu.Unlock()
		return nil
	}

	start := <-stopped // ctx has ended: the AfterFunc has sent, or is sending
	s.m.DrainStarted()
	defer s.m.DrainDone()
	s.log.Info("stopping: waiting for triggers in flight, then draining the app", "fencing_token", term.Token(),
		"drain_timeout", s.cfg.DrainTimeout, "since_stop", time.Since(start).Round(time.Millisecond))
	dctx, cancel := context.WithDeadline(context.Background(), start.Add(s.cfg.DrainTimeout))
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

// watchRequests fires the fleet's run-now requests (leadercron run <job>)
// while leading: a blocking query on <prefix>/requests/, and for each
// request a Txn that takes it under the lock, so it fires exactly once.
func (s *sidecar) watchRequests(ctx context.Context, term *leader.Term) {
	var index uint64
	var last time.Time
	for ctx.Err() == nil {
		// Consul answers a blocking list of an empty prefix with the
		// whole KV table's index, so the query wakes on every write
		// anywhere in Consul: at most one list per second.
		if wait := time.Second - time.Since(last); wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		last = time.Now()
		rctx, cancel := context.WithTimeout(ctx, requestsTimeout)
		reqs, next, err := s.store.Requests(rctx, index)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.m.ConsulError(metrics.OpWatchRequests)
			s.log.Warn("read run requests failed", "error", err)
			if len(reqs) == 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Second):
				}
				index = 0
				continue
			}
		}
		index = next
		for _, r := range reqs {
			// A request left here is taken by the next leader.
			if ctx.Err() != nil {
				return
			}
			if s.knownJob(r.Job) {
				s.takeRequest(ctx, term, r)
			}
		}
	}
}

// takeRequest takes one run-now request and fires it. The take is not
// cut short by the leadership ending (see leader.Term.TakeRequest), and a
// request taken as it ends still fires inside the drain: a request is
// never used up without firing or a record saying why.
func (s *sidecar) takeRequest(ctx context.Context, term *leader.Term, r kvlayout.Request) {
	took, err := term.TakeRequest(ctx, r.Job, r.ModifyIndex)
	switch {
	case err != nil && leader.NotApplied(err):
		s.log.Warn("take run request refused; left in place", "job", r.Job, "request", r.ID, "error", err)
	case err != nil:
		s.log.Warn("take run request: outcome unknown", "job", r.Job, "request", r.ID, "error", err)
		s.sched.RequestLost(r.Job, r.At, r.ID, term.Token(), fate.TakeUnknown)
	case took:
		s.log.Info("run request taken", "job", r.Job, "request", r.ID, "by", r.By, "requested_at", r.At.UTC())
		_ = s.sched.RunNow(ctx, term, r.Job, r.At, r.ID) // the job is known
	}
}

func (s *sidecar) knownJob(job string) bool {
	for _, j := range s.cfg.Jobs {
		if j.Name == job {
			return true
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.unknownReqs[job] {
		s.unknownReqs[job] = true
		s.log.Warn("run request for a job this sidecar does not have; left in place", "job", job)
	}
	return false
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
	st.Campaigning = s.cancelCampaign != nil
	st.HandedOver = s.handedOver
	s.mu.Unlock()
	if s.gate != nil {
		ok, _ := s.gate.state()
		st.AppHealthy = &ok
	}
	if term != nil {
		if rem := term.Remaining(); rem > 0 {
			st.Leader = true
			st.FencingToken = term.Token()
			if s.cfg.Lock == config.LockConsul {
				st.LeaseRemainingMS = rem.Milliseconds()
			}
		}
	}
	var fleet *ledger.Fleet
	if s.store != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		f, err := s.store.Snapshot(ctx)
		cancel()
		if err != nil {
			st.KVError = err.Error()
		} else {
			fleet = &f
		}
	}
	for _, j := range s.sched.Status() {
		js := admin.JobStatus{Name: j.Name, Schedule: j.Spec, TZ: j.Location, NextSlot: j.NextSlot.UTC(), Running: j.Running}
		if l := j.Last; l != nil {
			js.Last = &admin.LastSlot{Slot: l.Slot.UTC(), Outcome: l.Outcome, Reason: l.Reason,
				HTTPStatus: l.Status, DurationMS: l.Duration.Milliseconds()}
		}
		if fleet != nil {
			paused := false
			history := []kvlayout.Entry{}
			if kv := fleet.Jobs[j.Name]; kv != nil {
				paused = kv.Paused != nil
				history = kv.History[:min(len(kv.History), statusHistory)]
			}
			js.Paused = &paused
			js.History, _ = json.Marshal(history) // plain struct: cannot fail
		}
		st.Jobs = append(st.Jobs, js)
	}
	return st
}

// requestsTimeout bounds one blocking list of run-now requests: it must
// exceed ledger.RequestsWait plus the up to RequestsWait/16 of jitter that
// Consul adds; the 5 s beyond that cover a slow answer, and a black-holed
// connection is given up after it instead of waiting for TCP.
const requestsTimeout = ledger.RequestsWait + ledger.RequestsWait/16 + 5*time.Second

// statusHistory is how many history entries per job /status shows.
const statusHistory = 10

// triggerer adapts the app client to the scheduler's App.
type triggerer struct{ c *appclient.Client }

func (t triggerer) Trigger(ctx context.Context, r scheduler.Run) scheduler.Result {
	res := t.c.Trigger(ctx, appclient.Trigger{Job: r.Job, Slot: r.Slot, FencingToken: r.FencingToken, Deadline: r.Deadline,
		Attempt: r.Attempt, RunNow: r.Request, SendWithin: r.SendWithin})
	out := scheduler.Result{Outcome: res.Outcome, Status: res.Status, Duration: res.Duration, Err: res.Err, Retryable: retryable(res)}
	switch {
	case errors.Is(res.Err, appclient.ErrLeaseEnded):
		// Held up past the lease between the last check and the wire:
		// not sent, so the slot is missed, not failed.
		out.Outcome, out.Reason = fate.Missed, fate.Lease
	case res.Outcome == fate.Failed && res.Delivery == appclient.DeliveryUnknown:
		out.Reason = fate.NoAnswer
	}
	return out
}

// retryable: the request certainly did not reach the app, or the app
// answered 5xx. A trigger that may have reached the app without an answer
// (a reset, a deadline) is not sent again: the app may be running it.
func retryable(res appclient.Result) bool {
	if res.Err == nil || res.Outcome != fate.Failed || errors.Is(res.Err, appclient.ErrLeaseEnded) {
		return false
	}
	if res.Status >= 500 {
		return true
	}
	return res.Delivery == appclient.DeliveryNotSent
}
