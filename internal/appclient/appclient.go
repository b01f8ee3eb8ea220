// Package appclient talks to the co-located app: it triggers one run of a
// job (POST /jobs/{name}) and drains the app (POST /drain).
//
// Guarantees: Trigger sends exactly one request per call, never retries,
// and gives up at the trigger's deadline; every outcome, including a
// transport error, is returned as a Result. Drain polls until the app
// reports nothing running, or until its context ends.
//
// Not guaranteed: that the app stops a run when Trigger gives up at the
// deadline (the app receives the deadline and must honour it), or that the
// app's answer to /drain is true.
package appclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"
)

// Outcomes of a trigger.
const (
	OutcomeFired   = "fired"   // 2xx: the app ran it, or accepted it (202)
	OutcomeSkipped = "skipped" // 409: the app says the job already runs
	OutcomeFailed  = "failed"  // anything else, transport errors included
)

// Client is an HTTP client for the app.
type Client struct {
	base *url.URL
	id   string
	http *http.Client
}

// New returns a Client for the app at base. id is this sidecar's identity,
// sent as Leadercron-Id. hc is the HTTP client to use; its own timeout, if
// any, is on top of the per-call deadlines.
func New(base *url.URL, id string, hc *http.Client) *Client {
	return &Client{base: base, id: id, http: hc}
}

// Trigger is one run request.
type Trigger struct {
	Job          string
	Slot         time.Time
	FencingToken uint64
	Deadline     time.Time
	Attempt      int
}

// IdempotencyKey is <job>@<slot>, the same on every sidecar.
func (t Trigger) IdempotencyKey() string { return t.Job + "@" + t.slot() }

func (t Trigger) slot() string { return t.Slot.UTC().Format(time.RFC3339) }

// body is the JSON body of a trigger; it repeats the headers.
type body struct {
	Job            string `json:"job"`
	Slot           string `json:"slot"`
	FencingToken   uint64 `json:"fencing_token"`
	Deadline       string `json:"deadline"`
	IdempotencyKey string `json:"idempotency_key"`
	Attempt        int    `json:"attempt"`
}

// Result is what became of one trigger.
type Result struct {
	Outcome  string
	Status   int // 0 when no answer came
	Duration time.Duration
	Err      error // why it failed, when Outcome is failed
}

// Trigger sends one POST /jobs/{name} and waits for the answer until
// t.Deadline or ctx ends.
func (c *Client) Trigger(ctx context.Context, t Trigger) Result {
	ctx, cancel := context.WithDeadline(ctx, t.Deadline)
	defer cancel()
	start := time.Now()
	res := c.trigger(ctx, t)
	res.Duration = time.Since(start)
	return res
}

func (c *Client) trigger(ctx context.Context, t Trigger) Result {
	deadline := t.Deadline.UTC().Format(time.RFC3339Nano)
	payload, err := json.Marshal(body{
		Job: t.Job, Slot: t.slot(), FencingToken: t.FencingToken,
		Deadline: deadline, IdempotencyKey: t.IdempotencyKey(), Attempt: t.Attempt,
	})
	if err != nil {
		return Result{Outcome: OutcomeFailed, Err: fmt.Errorf("encode trigger: %w", err)}
	}
	u := c.base.JoinPath("jobs", t.Job)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(payload))
	if err != nil {
		return Result{Outcome: OutcomeFailed, Err: fmt.Errorf("build trigger request: %w", err)}
	}
	h := req.Header
	h.Set("Content-Type", "application/json")
	h.Set("Leadercron-Job", t.Job)
	h.Set("Leadercron-Slot", t.slot())
	h.Set("Leadercron-Fencing-Token", strconv.FormatUint(t.FencingToken, 10))
	h.Set("Leadercron-Deadline", deadline)
	h.Set("Leadercron-Id", c.id)
	h.Set("Idempotency-Key", t.IdempotencyKey())

	resp, err := c.http.Do(req)
	if err != nil {
		return Result{Outcome: OutcomeFailed, Err: fmt.Errorf("post %s: %w", u.Path, err)}
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	res := Result{Status: resp.StatusCode}
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		res.Outcome = OutcomeFired
	case resp.StatusCode == http.StatusConflict:
		res.Outcome = OutcomeSkipped
	default:
		res.Outcome = OutcomeFailed
		res.Err = fmt.Errorf("post %s: app answered %d: %s", u.Path, resp.StatusCode, bytes.TrimSpace(snippet))
	}
	return res
}

// drainRequestTimeout bounds one /drain request, so that an app that hangs
// on one poll still gets polled again before the drain deadline.
const drainRequestTimeout = 5 * time.Second

// ErrDrainTimeout is returned by Drain when its context ends before the app
// reports that nothing runs.
var ErrDrainTimeout = errors.New("app still running jobs at the drain deadline")

// DrainResult is how a drain ended.
type DrainResult struct {
	Polls   int
	Running int  // the last count the app reported
	Gone    bool // the app refused the connection: it is gone, so nothing runs
}

// Drain posts /drain every interval until the app answers 200 with
// {"running": 0}, or refuses the connection (it is gone: drained). When ctx
// ends first it returns ErrDrainTimeout, wrapped with the last count and
// error seen.
func (c *Client) Drain(ctx context.Context, interval time.Duration) (DrainResult, error) {
	var (
		res     DrainResult
		lastErr error
	)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return res, fmt.Errorf("%w (running %d, last error: %v)", ErrDrainTimeout, res.Running, lastErr)
			}
			return res, fmt.Errorf("%w (running %d)", ErrDrainTimeout, res.Running)
		case <-timer.C:
		}
		res.Polls++
		running, err := c.drainOnce(ctx)
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			res.Gone = true
			return res, nil
		case err != nil:
			// A poll cut short by ctx says nothing about the app: keep
			// what the app said before, for the timeout error.
			if lastErr == nil || ctx.Err() == nil {
				lastErr = err
			}
		case running == 0:
			res.Running = 0
			return res, nil
		default:
			res.Running = running
		}
		timer.Reset(interval)
	}
}

func (c *Client) drainOnce(ctx context.Context) (int, error) {
	rctx, cancel := context.WithTimeout(ctx, drainRequestTimeout)
	defer cancel()
	u := c.base.JoinPath("drain")
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, u.String(), nil)
	if err != nil {
		return 0, fmt.Errorf("build drain request: %w", err)
	}
	req.Header.Set("Leadercron-Id", c.id)
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("post %s: %w", u.Path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return 0, fmt.Errorf("post %s: app answered %d", u.Path, resp.StatusCode)
	}
	var v struct {
		Running *int `json:"running"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&v); err != nil || v.Running == nil {
		return 0, fmt.Errorf("post %s: answer is not {\"running\": N}", u.Path)
	}
	return *v.Running, nil
}

// Healthy sends GET u (LEADERCRON_APP_HEALTH_URL) and returns nil if the
// app answered 2xx before ctx ended.
func (c *Client) Healthy(ctx context.Context, u *url.URL) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("build health request: %w", err)
	}
	req.Header.Set("Leadercron-Id", c.id)
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("get %s: %w", u.Redacted(), err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("get %s: app answered %d", u.Redacted(), resp.StatusCode)
	}
	return nil
}
