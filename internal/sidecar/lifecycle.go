package sidecar

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/leadercron/leadercron/internal/appclient"
)

// The lifecycle of one leadership, and of the sidecar around it:
//
//	Run ─ admin server up ─ health gate ─ campaign ┬─ elector.Run ─ lead ─┬─ stop signal: stop claiming,
//	                                               │                      │  wait for triggers in flight,
//	                                               │                      │  drain the app (lock still renewed)
//	                                               │                      └─ lead returns ─ elector releases
//	                                               └─ campaign ends ─ history flushed ─ admin server down
//
// A loss ends lead without a drain; a drain timeout ends it with an error,
// and the elector then leaves the lock to expire.

// lead is the elector's lead function: schedule until the context ends;
// then, unless leadership was lost, wait for triggers in flight and drain
// the app, all within LEADERCRON_DRAIN_TIMEOUT, before returning (after
// which the elector releases the lock).
func (s *Sidecar) lead(ctx context.Context, term Term) error {
	s.setTerm(term)
	defer s.setTerm(nil)
	s.m.LeadershipStarted(term)
	defer s.m.LeadershipEnded()
	// The drain timeout counts from the stop signal: claims and takes
	// still in flight then are inside it.
	stopped := make(chan time.Time, 1)
	defer context.AfterFunc(ctx, func() { stopped <- time.Now() })()
	var watcher sync.WaitGroup
	if s.ledger != nil {
		watcher.Go(func() { s.watchRequests(ctx, term) })
		watcher.Go(func() { s.publishJobTable(ctx, term) }) // jobtable.go
	}
	s.sched.Lead(ctx, term)
	// No run-now request may start after the drain began.
	watcher.Wait()

	if s.lost() {
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
	res, err := s.appClient.Drain(dctx, s.cfg.DrainInterval)
	if err != nil {
		return fmt.Errorf("drain app: %w", err)
	}
	if res.Gone {
		s.log.Warn("app refused the drain connection: it is gone, so nothing runs", "app_url", s.cfg.AppURL.String())
	}
	s.log.Info("app drained", "polls", res.Polls, "duration", time.Since(start).Round(time.Millisecond))
	return nil
}

// lost reports, after the lead context ended, whether leadership was
// lost rather than ended by this sidecar (a stop, a handover, an unhealthy
// app): the campaign's own context is still live only when the elector
// ended the term. A stop racing a loss counts as a stop, so the app is
// drained: the safe side.
func (s *Sidecar) lost() bool {
	s.mu.Lock()
	cctx := s.campaignCtx
	s.mu.Unlock()
	return cctx != nil && cctx.Err() == nil
}
