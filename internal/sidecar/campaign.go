package sidecar

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/leadercron/leadercron/internal/admin"
)

// Causes that end a campaign without ending the process.
var (
	errHandover  = errors.New("handover requested")
	errUnhealthy = errors.New("app failed its health check")
)

// campaign runs elections until ctx ends. It stays out of them while the
// app health gate reports the app unhealthy (and hands leadership over when
// the app turns unhealthy while leading), and for good after POST
// /handover.
func (s *Sidecar) campaign(ctx context.Context) error {
	gate := s.gate
	for {
		if gate != nil && !gate.waitHealthy(ctx) {
			return nil
		}
		cctx, cancel := context.WithCancelCause(ctx)
		done := make(chan struct{})
		if !s.startCampaign(cctx, cancel, done) {
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
		err := s.elector.Run(cctx, s.lead)
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
func (s *Sidecar) startCampaign(ctx context.Context, cancel context.CancelCauseFunc, done chan struct{}) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.handedOver {
		return false
	}
	s.campaignCtx, s.cancelCampaign, s.campaignDone, s.campaignErr = ctx, cancel, done, nil
	return true
}

func (s *Sidecar) endCampaign(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.campaignCtx, s.cancelCampaign = nil, nil
	s.campaignErr = err
}

// handover is POST /handover: a leader stops scheduling, waits for its
// runs, drains the app and releases the lock, and the call answers when
// that is done. A standby, or a leader whose lease ended during the
// handover (no drain then: outcome "lost"), answers once the runs it sent
// in earlier leaderships have finished, so that a preStop hook waiting on
// it protects them too. Either way the sidecar does not campaign again.
func (s *Sidecar) handover(ctx context.Context) (admin.HandoverResult, error) {
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
