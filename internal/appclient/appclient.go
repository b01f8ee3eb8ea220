// Package appclient talks to the co-located app: it triggers one run of a
// job (POST /jobs/{name}) and drains the app (POST /drain).
//
// Guarantees: no layer under Trigger sends a trigger again on its own.
// Each call sends one request, with a single exception: when a kept-alive
// connection turns out dead before a single byte of the trigger was written
// to it, Trigger sends it once more on a fresh connection (nothing reached
// the app, so it cannot run twice). The trigger request is not replayable
// by net/http's Transport (see newTriggerRequest) and redirects are not
// followed. Trigger gives up at the trigger's deadline; every outcome,
// including a transport error, is returned as a Result, whose Delivery
// says whether the app may have received the trigger: DeliveryNotSent (no
// byte reached it: sending again is safe), DeliveryUnknown (it may have run
// it: sending again may run it twice) or DeliveryAnswered. Drain polls
// until the app reports nothing running, or until its context ends.
//
// Not guaranteed: that the app stops a run when Trigger gives up at the
// deadline (the app receives the deadline and must honour it), or that the
// app's answer to /drain is true. DeliveryUnknown does not mean the app got
// the trigger, only that no proof says it did not. DeliveryNotSent relies
// on net/http/httptrace events: the HTTP client given to New must use
// net/http's Transport (wrappers that pass the request's context down are
// fine) and must not retry on its own. Proving that nothing was written on
// a connection that was obtained, and so the resend, needs a connection
// dialed by a NewHTTPClient transport; with any other client such a failure
// is DeliveryUnknown.
//
// With a Signer (WithSigner), every trigger and every /drain poll carries
// Leadercron-Signature, computed once per request built, so the one resend
// above carries a signature of its own; signing adds a header and changes
// nothing of the above (the trigger's GetBody stays nil, its body the same
// bytes). Health checks are not signed: the health URL is the app's public
// health endpoint.
package appclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/leadercron/leadercron/internal/fate"
)

// Delivery says how far a trigger got. Its zero value is DeliveryUnknown,
// so that a Result nobody filled in never claims that a resend is safe.
type Delivery int

// Deliveries of a trigger.
const (
	// DeliveryUnknown: the request may have reached the app, and no answer
	// came. Sending the trigger again may run the job twice.
	DeliveryUnknown Delivery = iota
	// DeliveryNotSent: no byte of the request reached the app: sending the
	// trigger again is safe.
	DeliveryNotSent
	// DeliveryAnswered: the app answered (Result.Status is set).
	DeliveryAnswered
)

// String returns not_sent, unknown or answered.
func (d Delivery) String() string {
	switch d {
	case DeliveryNotSent:
		return "not_sent"
	case DeliveryUnknown:
		return "unknown"
	case DeliveryAnswered:
		return "answered"
	}
	return "Delivery(" + strconv.Itoa(int(d)) + ")"
}

// Client is an HTTP client for the app.
type Client struct {
	base *url.URL
	id   string
	http *http.Client
	// trig is http without redirects, for triggers: the app's answer to the
	// trigger is its answer. A followed 301/302/303 would turn the POST
	// into a GET whose answer would be recorded as the trigger's, and every
	// followed request would fire the httptrace hooks Delivery is decided
	// from a second time.
	trig *http.Client
	// signer signs triggers and drain polls; nil sends them unsigned.
	signer *Signer
}

// Option configures a Client.
type Option func(*Client)

// WithSigner makes the Client sign every trigger and every /drain poll
// with s (nil: unsigned).
func WithSigner(s *Signer) Option { return func(c *Client) { c.signer = s } }

// New returns a Client for the app at base. id is this sidecar's identity,
// sent as Leadercron-Id. hc is the HTTP client to use (nil means
// http.DefaultClient); its own timeout, if any, is on top of the per-call
// deadlines. NewHTTPClient returns the one to use: see the package doc for
// what Trigger needs from any other. opts add a Signer (WithSigner).
func New(base *url.URL, id string, hc *http.Client, opts ...Option) *Client {
	if hc == nil {
		hc = http.DefaultClient
	}
	trig := *hc
	trig.CheckRedirect = noRedirects
	c := &Client{base: base, id: id, http: hc, trig: &trig}
	for _, o := range opts {
		o(c)
	}
	return c
}

func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// idleConnTimeout is how long NewHTTPClient keeps an idle connection to the
// app: 4s, under Node.js's default keepAliveTimeout of 5s, so that the
// sidecar drops an idle connection before a Node app closes it under it.
const idleConnTimeout = 4 * time.Second

// maxIdleConns is how many idle connections to the app NewHTTPClient
// keeps. The sidecar talks to one host, its app, and fires the triggers of
// the jobs that share an instant at once: with Go's default of 2 idle
// connections per host, every such burst dialed all but two of its
// connections anew each time (a fifth of a leader's CPU at 100 slots a
// second, measured with a CPU profile). 128 covers the jobs due at one
// instant in the benchmark's largest fleet; an idle connection costs
// about 10 KB and is dropped after idleConnTimeout.
const maxIdleConns = 128

// NewHTTPClient returns the HTTP client to give New: HTTP/1.1 only, idle
// connections closed after 4s (under Node.js's default keepAliveTimeout of
// 5s, so the sidecar drops an idle connection before a Node app closes it
// under a trigger), and connections that count the bytes written to them,
// which lets Trigger prove that nothing of a failed trigger was written
// (DeliveryNotSent) and resend it on a fresh connection. Do not enable
// HTTP/2 on its transport.
func NewHTTPClient() *http.Client {
	dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	return &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           countWrites(dialer.DialContext),
		Protocols:             &protocols,
		MaxIdleConns:          maxIdleConns,
		MaxIdleConnsPerHost:   maxIdleConns,
		IdleConnTimeout:       idleConnTimeout,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}}
}

// countWrites wraps the connections dial returns in countingConns.
func countWrites(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: conn}, nil
	}
}

// countingConn counts the bytes the operating system accepted for sending
// on a connection: while it has not moved, nothing left this host.
type countingConn struct {
	net.Conn
	written atomic.Int64
	guard   atomic.Pointer[connGuard] // checked once, by the next Write
}

type connGuard struct{ check func() error }

func (c *countingConn) Write(p []byte) (int, error) {
	if g := c.guard.Swap(nil); g != nil {
		if err := g.check(); err != nil {
			return 0, err
		}
	}
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// counterOf returns the countingConn under conn, looking through wrappers
// that expose the connection under them as NetConn (like *tls.Conn), or
// nil if there is none.
func counterOf(conn net.Conn) *countingConn {
	for range 8 {
		switch c := conn.(type) {
		case *countingConn:
			return c
		case interface{ NetConn() net.Conn }:
			conn = c.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// Trigger is one run request.
type Trigger struct {
	Job          string
	Slot         time.Time
	FencingToken uint64
	Deadline     time.Time
	Attempt      int
	// RunNow is the run-now request's id; empty for a scheduled slot.
	RunNow string
	// SendWithin, if positive, is how long after the call the trigger's
	// first byte may still be written: the sender's authority (its lease,
	// less a margin) ends then. A trigger held up past it (a process
	// pause, a slow dial) is not sent at all: ErrLeaseEnded, DeliveryNotSent.
	// It needs connections from NewHTTPClient.
	SendWithin time.Duration
}

// ErrLeaseEnded is the error of a trigger whose first byte would have been
// written after its SendWithin: nothing was sent.
var ErrLeaseEnded = errors.New("trigger not sent: the sender's lease ended before it could be written")

// IdempotencyKey is <job>@<slot> for a scheduled slot, the same on every
// sidecar, and <job>@run-now/<id> for a run-now request: a run-now's slot
// is its request time, which may share its second with a scheduled slot or
// another run-now.
func (t Trigger) IdempotencyKey() string {
	if t.RunNow != "" {
		return t.Job + "@run-now/" + t.RunNow
	}
	return t.Job + "@" + t.slot()
}

func (t Trigger) slot() string { return t.Slot.UTC().Format(time.RFC3339) }

// body is the JSON body of a trigger; it repeats the headers.
type body struct {
	Job            string `json:"job"`
	Slot           string `json:"slot"`
	FencingToken   uint64 `json:"fencing_token"`
	Deadline       string `json:"deadline"`
	IdempotencyKey string `json:"idempotency_key"`
	Attempt        int    `json:"attempt"`
	RunNow         string `json:"run_now,omitempty"`
}

// Result is what became of one trigger.
type Result struct {
	Outcome  fate.Outcome
	Status   int // 0 when no answer came
	Duration time.Duration
	Err      error // why it failed, when Outcome is failed
	// Delivery says whether the app may have received the trigger: only
	// DeliveryNotSent makes sending it again safe.
	Delivery Delivery
}

// Trigger sends one POST /jobs/{name} and waits for the answer until
// t.Deadline or ctx ends. It sends it a second time only when the
// kept-alive connection it used proved dead before any byte of the
// trigger was written to it: then it sends it once more, on a fresh
// connection.
func (c *Client) Trigger(ctx context.Context, t Trigger) Result {
	ctx, cancel := context.WithDeadline(ctx, t.Deadline)
	defer cancel()
	start := time.Now()
	res := c.trigger(ctx, t)
	res.Duration = time.Since(start)
	return res
}

func (c *Client) trigger(ctx context.Context, t Trigger) Result {
	var notAfter time.Time
	if t.SendWithin > 0 {
		notAfter = time.Now().Add(t.SendWithin)
	}
	deadline := t.Deadline.UTC().Format(time.RFC3339Nano)
	payload, err := json.Marshal(body{
		Job: t.Job, Slot: t.slot(), FencingToken: t.FencingToken,
		Deadline: deadline, IdempotencyKey: t.IdempotencyKey(), Attempt: t.Attempt, RunNow: t.RunNow,
	})
	if err != nil {
		return Result{Outcome: fate.Failed, Delivery: DeliveryNotSent, Err: fmt.Errorf("encode trigger: %w", err)}
	}
	res, deadReused := c.send(ctx, c.trig, t, deadline, payload, notAfter)
	if !deadReused || ctx.Err() != nil || errors.Is(res.Err, ErrLeaseEnded) {
		return res
	}
	// The one resend. send reports deadReused only when the connection had
	// served earlier requests and its byte counter shows that not one byte
	// of this trigger was written to it: the app cannot have seen any of
	// it (it is the Transport's own nothingWrittenError case, which it no
	// longer retries by itself since the request has no GetBody). If any
	// byte may have been written, deadReused is false and there is no
	// resend. It goes on a fresh connection, never an idle one that may be
	// just as dead, and the resend itself is never resent.
	fresh := c.freshClient()
	if fresh == nil {
		return res
	}
	again, _ := c.send(ctx, fresh, t, deadline, payload, notAfter)
	if again.Err != nil && again.Status == 0 {
		again.Err = fmt.Errorf("%w (sent again on a fresh connection, after a kept-alive one failed before any byte was written: %v)", again.Err, res.Err)
	}
	return again
}

// freshClient returns a client like c.trig whose every request dials a
// connection of its own, or nil if c's transport is not an *http.Transport.
func (c *Client) freshClient() *http.Client {
	rt := c.trig.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	tr, ok := rt.(*http.Transport)
	if !ok {
		return nil
	}
	tr = tr.Clone() // same dialer, so the fresh connection counts too
	tr.DisableKeepAlives = true
	hc := *c.trig
	hc.Transport = tr
	return &hc
}

// newTriggerRequest builds the trigger request, not replayable by net/http.
//
// net/http's Transport sends a request again by itself, on a new
// connection, when a reused connection fails (shouldRetryRequest in
// net/http/transport.go): always if nothing was written (nothingWrittenError)
// and the body can be rewound (GetBody set), and also after the request was
// written, when the server closed or reset the connection before the first
// answer byte (errServerClosedIdle, transportReadFromServerError), if the
// request is replayable (Request.isReplayable in net/http/request.go): a
// GET-like method, or any method with an Idempotency-Key header, provided
// the body is empty or GetBody is set. The trigger carries Idempotency-Key
// (part of the app contract), and NewRequestWithContext sets GetBody for a
// *bytes.Reader body, so a trigger the app had read and then lost the
// connection of (handler panic, WriteTimeout shorter than the job, a proxy
// reset) was sent a second time inside the same Do. With GetBody nil the
// body (non-empty) cannot be rewound, so isReplayable is false and the
// Transport never resends the trigger, nor follows a 307/308 with it
// (http.Client needs GetBody for that). The body stays a *bytes.Reader, so
// the bytes on the wire are the same.
//
// With a Signer, the request is signed last, over the headers set here
// and payload, the body's bytes.
func (c *Client) newTriggerRequest(ctx context.Context, t Trigger, deadline string, payload []byte) (*http.Request, error) {
	u := c.base.JoinPath("jobs", t.Job)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(payload))
	if err != nil {
		return nil, err
	}
	req.GetBody = nil // not replayable: see above
	h := req.Header
	h.Set("Content-Type", "application/json")
	h.Set("Leadercron-Job", t.Job)
	h.Set("Leadercron-Slot", t.slot())
	h.Set("Leadercron-Fencing-Token", strconv.FormatUint(t.FencingToken, 10))
	h.Set("Leadercron-Deadline", deadline)
	h.Set("Leadercron-Id", c.id)
	h.Set("Idempotency-Key", t.IdempotencyKey())
	h.Set(HeaderAttempt, strconv.Itoa(t.Attempt))
	if t.RunNow != "" {
		h.Set("Leadercron-Run-Now", t.RunNow)
	}
	if c.signer != nil {
		c.signer.Sign(req, payload)
	}
	return req, nil
}

// send sends the trigger once through hc. deadReused reports that it
// failed on a reused connection to which not one byte of it was written.
func (c *Client) send(ctx context.Context, hc *http.Client, t Trigger, deadline string, payload []byte, notAfter time.Time) (_ Result, deadReused bool) {
	p := &probe{notAfter: notAfter}
	req, err := c.newTriggerRequest(httptrace.WithClientTrace(ctx, p.trace()), t, deadline, payload)
	if err != nil {
		return Result{Outcome: fate.Failed, Delivery: DeliveryNotSent, Err: fmt.Errorf("build trigger request: %w", err)}, false
	}
	resp, err := hc.Do(req)
	p.unguard()
	if err != nil {
		d, deadReused := p.delivery()
		if d == DeliveryNotSent && p.guardRefused() {
			err = ErrLeaseEnded
		}
		return Result{Outcome: fate.Failed, Delivery: d, Err: fmt.Errorf("post %s: %w", req.URL.Path, err)}, deadReused
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	res := Result{Status: resp.StatusCode, Delivery: DeliveryAnswered}
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		res.Outcome = fate.Fired
	case resp.StatusCode == http.StatusConflict:
		res.Outcome = fate.Skipped
	default:
		res.Outcome = fate.Failed
		res.Err = fmt.Errorf("post %s: app answered %d: %s", req.URL.Path, resp.StatusCode, bytes.TrimSpace(snippet))
	}
	return res, false
}

// probe follows one trigger request through net/http/httptrace, to tell,
// when it failed, whether any of it may have reached the app.
type probe struct {
	mu      sync.Mutex
	conns   int           // connections obtained (GotConn calls)
	reused  bool          // the connection had served requests before
	counter *countingConn // the connection's byte counter, if it has one
	before  int64         // counter's count when the connection was obtained

	notAfter  time.Time   // the first byte may not be written after it
	installed *connGuard  // the guard put on the connection
	refused   atomic.Bool // the guard refused the first write
}

// guard is installed on the connection at GotConn and checked by its next
// Write, the first of this request: the last check of the sender's lease,
// as close to the wire as it gets.
func (p *probe) guard() error {
	if time.Now().After(p.notAfter) {
		p.refused.Store(true)
		return ErrLeaseEnded
	}
	return nil
}

func (p *probe) guardRefused() bool { return p.refused.Load() }

// unguard removes the guard if no Write used it, so that it cannot refuse
// a later request on the same connection.
func (p *probe) unguard() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.counter != nil && p.installed != nil {
		p.counter.guard.CompareAndSwap(p.installed, nil)
	}
}

func (p *probe) trace() *httptrace.ClientTrace {
	return &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.conns++
		p.reused = info.Reused
		p.counter = counterOf(info.Conn)
		if p.counter != nil {
			p.before = p.counter.written.Load()
			if !p.notAfter.IsZero() {
				p.installed = &connGuard{check: p.guard}
				p.counter.guard.Store(p.installed)
			}
		}
	}}
}

// delivery is how far a request that got no answer went. Call it after Do
// returned: on the error paths of an HTTP/1 round trip, the Transport
// waits for its connection's writer to finish before returning
// (persistConn.mapRoundTripError), so the counter is final.
//
//   - No connection obtained (the dial failed, e.g. connection refused, or
//     the context ended first): the Transport writes only on a connection
//     it got, after GotConn, so nothing was sent.
//   - One connection obtained and its counter did not move: nothing was
//     written, so nothing was sent; deadReused if that connection had
//     served requests before. Other traffic on the connection can only
//     move the counter, which errs towards DeliveryUnknown.
//   - Anything else: the request may have reached the app.
func (p *probe) delivery() (_ Delivery, deadReused bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.conns == 0:
		return DeliveryNotSent, false
	case p.conns == 1 && p.counter != nil && p.counter.written.Load() == p.before:
		return DeliveryNotSent, p.reused
	}
	return DeliveryUnknown, false
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
	// No body and no Idempotency-Key: the Transport resends it by itself
	// only when nothing of it was written (see newTriggerRequest), and a
	// second poll is harmless anyway.
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, u.String(), nil)
	if err != nil {
		return 0, fmt.Errorf("build drain request: %w", err)
	}
	req.Header.Set("Leadercron-Id", c.id)
	if c.signer != nil {
		c.signer.Sign(req, nil) // the empty body
	}
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
