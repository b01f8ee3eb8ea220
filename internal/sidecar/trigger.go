package sidecar

import (
	"context"
	"errors"

	"github.com/leadercron/leadercron/internal/appclient"
	"github.com/leadercron/leadercron/internal/fate"
	"github.com/leadercron/leadercron/internal/scheduler"
)

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
