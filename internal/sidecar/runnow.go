package sidecar

import (
	"context"
	"time"

	"github.com/leadercron/leadercron/internal/fate"
	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/ledger"
	"github.com/leadercron/leadercron/internal/metrics"
	"github.com/leadercron/leadercron/internal/scheduler"
)

// watchRequests fires the fleet's run-now requests (leadercron run <job>)
// while leading: a blocking query on <prefix>/requests/, and for each
// request a Txn that takes it under the lock, so it fires exactly once.
func (s *Sidecar) watchRequests(ctx context.Context, term Term) {
	s.markRequests(ctx)
	var index uint64
	var last time.Time
	for ctx.Err() == nil {
		// At most one list per second, whatever wakes it (without the
		// marker, any write under the prefix: every claim).
		if wait := time.Second - time.Since(last); wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		last = time.Now()
		rctx, cancel := context.WithTimeout(ctx, requestsTimeout)
		reqs, next, err := s.ledger.Requests(rctx, index)
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

// markRequests writes the requests folder's marker once per leadership.
// Without it the watch still works, woken by every claim and history
// write and paced to one list a second; so a failure is only logged.
func (s *Sidecar) markRequests(ctx context.Context) {
	mctx, cancel := context.WithTimeout(ctx, markTimeout)
	defer cancel()
	if err := s.ledger.MarkRequests(mctx); err != nil && ctx.Err() == nil {
		s.m.ConsulError(metrics.OpWatchRequests)
		s.log.Warn("mark the run-now requests folder failed: its watch wakes on every write under the prefix", "error", err)
	}
}

// markTimeout bounds the marker's one write: a healthy agent answers in
// milliseconds; past this the watch starts without it.
const markTimeout = 5 * time.Second

// takeRequest takes one run-now request and fires it. The take is not
// cut short by the leadership ending (see leader.Term.TakeRequest), and a
// request taken as it ends still fires inside the drain: a request is
// never used up without firing or a record saying why.
func (s *Sidecar) takeRequest(ctx context.Context, term Term, r kvlayout.Request) {
	took, err := term.TakeRequest(ctx, r.Job, r.ModifyIndex)
	switch {
	case err != nil && scheduler.NotApplied(err):
		s.log.Warn("take run request refused; left in place", "job", r.Job, "request", r.ID, "error", err)
	case err != nil:
		s.log.Warn("take run request: outcome unknown", "job", r.Job, "request", r.ID, "error", err)
		s.sched.RequestLost(r.Job, r.At, r.ID, term.Token(), fate.TakeUnknown)
	case took:
		s.log.Info("run request taken", "job", r.Job, "request", r.ID, "by", r.By, "requested_at", r.At.UTC())
		_ = s.sched.RunNow(ctx, term, r.Job, r.At, r.ID) // the job is known
	}
}

func (s *Sidecar) knownJob(job string) bool {
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

// requestsTimeout bounds one blocking list of run-now requests: it must
// exceed ledger.RequestsWait plus the up to RequestsWait/16 of jitter that
// Consul adds; the 5 s beyond that cover a slow answer, and a black-holed
// connection is given up after it instead of waiting for TCP.
const requestsTimeout = ledger.RequestsWait + ledger.RequestsWait/16 + 5*time.Second
