// Package naive is the baseline leadercron is measured against: a leader
// built the way most teams first build one, on Consul's api.Lock and
// robfig/cron, with no slot claims and no local lease.
//
// Run campaigns with api.Lock (default options apart from the TTL and
// lock-delay given), fires the cron while api.Lock's lost-lock channel is
// open, and campaigns again when it closes. Triggers use leadercron's own
// app client, so the app sees the same headers and body as from
// leadercron: the job, the slot, the fencing token (the ModifyIndex of the
// lock key read after acquiring), a deadline and the Idempotency-Key.
//
// Guarantees: Run returns only when its context ends, after stopping the
// cron and unlocking (which releases the key without lock-delay and
// destroys the session).
//
// Not guaranteed, on purpose, because this is the approach leadercron
// replaces: that only one process fires (api.Lock's lost-lock channel is
// fed by a blocking query, so a leader cut off from Consul keeps firing
// while a peer takes the lock, hashicorp/consul#18271); that a slot fires
// at most once (there is no claim: a new leader may fire a slot the old
// one fired, and a slot missed during a handover is lost); that the
// fencing token is the index of the acquiring write (it is read after the
// acquire, so a write in between would raise it). Do not use it for
// anything but comparisons and fault-injection baselines.
//
// It lives under tools/, beside the benchmark (tools/bench), because it is
// a measuring stick, not part of the product: the leadercron binary never
// imports it.
package naive

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/robfig/cron/v3"

	"github.com/leadercron/leadercron/internal/appclient"
)

// Options configure a naive leader: api.Lock + robfig/cron, no slot
// claims, no local lease.
type Options struct {
	Client     *api.Client
	Key        string            // lock key
	ID         string            // sidecar id, sent in Leadercron-Id
	SessionTTL time.Duration     // e.g. 10s
	LockDelay  time.Duration     // e.g. 5s; 0 means Consul's default (15s)
	Jobs       map[string]string // job name -> cron spec with a seconds field
	AppURL     string            // POST AppURL/jobs/<name>
	HTTPClient *http.Client
	Log        hclog.Logger
}

// triggerTimeout is the deadline sent with every trigger.
const triggerTimeout = time.Minute

// retryWait is the pause after a failed campaign (Consul unreachable, say).
const retryWait = time.Second

// newParser reads specs with a seconds field, and descriptors.
func newParser() cron.Parser {
	return cron.NewParser(cron.Second | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)
}

// Run campaigns with api.Lock, runs the cron while it believes it leads
// (until the lost-lock channel closes), and campaigns again; returns when
// ctx ends (then it stops the cron and unlocks). It returns an error only
// for invalid options.
func Run(ctx context.Context, o Options) error {
	if o.Client == nil || o.Key == "" || o.ID == "" || o.SessionTTL <= 0 || o.LockDelay < 0 {
		return errors.New("naive: Client, Key, ID and a positive SessionTTL are required")
	}
	base, err := url.Parse(o.AppURL)
	if err != nil {
		return fmt.Errorf("naive: parse app URL: %w", err)
	}
	schedules := make(map[string]cron.Schedule, len(o.Jobs))
	for name, spec := range o.Jobs {
		s, err := newParser().Parse(spec)
		if err != nil {
			return fmt.Errorf("naive: parse schedule of job %s: %w", name, err)
		}
		schedules[name] = s
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{}
	}
	if o.Log == nil {
		o.Log = hclog.NewNullLogger()
	}
	app := appclient.New(base, o.ID, o.HTTPClient)

	for ctx.Err() == nil {
		if err := term(ctx, o, app, schedules); err != nil {
			o.Log.Warn("campaign failed", "key", o.Key, "error", err)
			select {
			case <-ctx.Done():
			case <-time.After(retryWait):
			}
		}
	}
	return nil
}

// term campaigns once and, if it gets the lock, leads until the lost-lock
// channel closes or ctx ends.
func term(ctx context.Context, o Options, app *appclient.Client, schedules map[string]cron.Schedule) error {
	lock, err := o.Client.LockOpts(&api.LockOptions{
		Key:         o.Key,
		Value:       []byte(o.ID),
		SessionName: "naive " + o.ID,
		SessionTTL:  o.SessionTTL.String(),
		LockDelay:   o.LockDelay,
	})
	if err != nil {
		return fmt.Errorf("lock options: %w", err)
	}
	lost, err := lock.Lock(ctx.Done())
	if err != nil {
		return fmt.Errorf("acquire %s: %w", o.Key, err)
	}
	if lost == nil { // ctx ended while waiting
		return nil
	}
	var token uint64
	if pair, _, err := o.Client.KV().Get(o.Key, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx)); err == nil && pair != nil {
		token = pair.ModifyIndex
	}
	o.Log.Info("leading", "key", o.Key, "fencing_token", token)

	c := cron.New(cron.WithLocation(time.UTC))
	for name, s := range schedules {
		c.Schedule(s, cron.FuncJob(func() {
			slot := currentSlot(s, time.Now())
			res := app.Trigger(context.Background(), appclient.Trigger{
				Job: name, Slot: slot, FencingToken: token, Deadline: time.Now().Add(triggerTimeout), Attempt: 1,
			})
			if res.Err != nil {
				o.Log.Warn("trigger failed", "job", name, "slot", slot, "error", res.Err)
			}
		}))
	}
	c.Start()

	select {
	case <-lost:
		o.Log.Warn("lock lost", "key", o.Key)
	case <-ctx.Done():
		o.Log.Info("stopping", "key", o.Key)
	}
	<-c.Stop().Done() // runs in flight finish (each is bounded by its deadline)
	if err := lock.Unlock(); err != nil && !errors.Is(err, api.ErrLockNotHeld) {
		o.Log.Warn("unlock failed", "key", o.Key, "error", err)
	}
	return nil
}

// currentSlot is the latest scheduled instant of s at or before now: the
// slot robfig/cron is firing (it does not pass it to the job). Exact when
// the cron fires less than a second late.
func currentSlot(s cron.Schedule, now time.Time) time.Time {
	now = now.UTC()
	t := s.Next(now.Truncate(time.Second).Add(-time.Second))
	if t.After(now) {
		return now.Truncate(time.Second)
	}
	return t
}
