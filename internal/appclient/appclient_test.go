package appclient_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	_ "time/tzdata" // the zone tests must not depend on the host's zoneinfo

	"github.com/leadercron/leadercron/internal/appclient"
	"github.com/leadercron/leadercron/internal/fate"
)

const sidecarID = "sidecar-a"

// server starts an httptest server that is closed when the test ends.
func server(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// client returns a Client for srv's URL with path appended.
func client(t *testing.T, srv *httptest.Server, path string) *appclient.Client {
	t.Helper()
	u, err := url.Parse(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	return appclient.New(u, sidecarID, srv.Client())
}

// refusedClient returns a Client for an address that refuses connections:
// a listener that was opened and closed again.
func refusedClient(t *testing.T) *appclient.Client {
	t.Helper()
	return appclient.New(refusedURL(t), sidecarID, &http.Client{})
}

// refusedURL is the URL of an address that refuses connections.
func refusedURL(t *testing.T) *url.URL {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return &url.URL{Scheme: "http", Host: addr}
}

// releaseAtEnd closes release, which held handlers block on, when the test
// ends. Call it after starting the server: cleanups run last-in first-out,
// and the server's Close waits for its handlers.
func releaseAtEnd(t *testing.T, release chan struct{}) {
	t.Helper()
	t.Cleanup(func() { close(release) })
}

// trigger is a valid trigger with a minute to spare.
func trigger(job string) appclient.Trigger {
	return appclient.Trigger{
		Job:          job,
		Slot:         time.Date(2024, 3, 10, 9, 0, 0, 0, time.UTC),
		FencingToken: 7,
		Deadline:     time.Now().Add(time.Minute),
		Attempt:      1,
	}
}

// seen is what the app received for one trigger.
type seen struct {
	method, path string
	header       http.Header
	body         []byte
}

func TestTriggerRequest(t *testing.T) {
	t.Parallel()
	seoul, err := time.LoadLocation("Asia/Seoul")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, base, want string
	}{
		{"app at the root", "", "/jobs/send-report"},
		{"app under a base path", "/app", "/app/jobs/send-report"},
		{"base path with a trailing slash", "/app/", "/app/jobs/send-report"},
		{"nested base path", "/svc/billing", "/svc/billing/jobs/send-report"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := make(chan seen, 1)
			srv := server(t, func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				got <- seen{r.Method, r.URL.Path, r.Header.Clone(), b}
				w.WriteHeader(http.StatusNoContent)
			})

			// A deadline with nanoseconds, in a zone other than UTC.
			deadline := time.Now().Add(time.Minute).Truncate(time.Second).Add(123_456_789).In(seoul)
			tr := appclient.Trigger{
				Job:          "send-report",
				Slot:         time.Date(2024, 3, 10, 18, 0, 0, 0, seoul), // 09:00 UTC
				FencingToken: 1<<53 + 1,                                  // not exact as a float64
				Deadline:     deadline,
				Attempt:      2,
			}
			res := client(t, srv, tc.base).Trigger(context.Background(), tr)
			if res.Outcome != fate.Fired || res.Status != http.StatusNoContent || res.Err != nil ||
				res.Delivery != appclient.DeliveryAnswered {
				t.Fatalf("result %+v, want fired 204, answered", res)
			}
			r := <-got

			if r.method != http.MethodPost || r.path != tc.want {
				t.Errorf("request %s %s, want POST %s", r.method, r.path, tc.want)
			}
			const slot = "2024-03-10T09:00:00Z"
			wantHeaders := map[string]string{
				"Content-Type":             "application/json",
				"Leadercron-Job":           "send-report",
				"Leadercron-Slot":          slot,
				"Leadercron-Fencing-Token": "9007199254740993",
				"Leadercron-Id":            sidecarID,
				"Idempotency-Key":          "send-report@" + slot,
				"Leadercron-Attempt":       "2",
			}
			for k, want := range wantHeaders {
				if got := r.header.Values(k); len(got) != 1 || got[0] != want {
					t.Errorf("header %s: %q, want %q", k, got, want)
				}
			}
			if got := r.header.Values("Leadercron-Run-Now"); got != nil {
				t.Errorf("header Leadercron-Run-Now %q on a scheduled slot, want none", got)
			}
			if got := r.header.Values("Leadercron-Signature"); got != nil {
				t.Errorf("header Leadercron-Signature %q from a client without a Signer, want none", got)
			}
			hd := r.header.Get("Leadercron-Deadline")
			d, err := time.Parse(time.RFC3339, hd)
			if err != nil {
				t.Errorf("Leadercron-Deadline %q is not RFC 3339: %v", hd, err)
			} else if !d.Equal(deadline) || !strings.HasSuffix(hd, "Z") {
				t.Errorf("Leadercron-Deadline %q, want %v in UTC", hd, deadline.UTC())
			}

			var body struct {
				Job            *string `json:"job"`
				Slot           *string `json:"slot"`
				FencingToken   *uint64 `json:"fencing_token"`
				Deadline       *string `json:"deadline"`
				IdempotencyKey *string `json:"idempotency_key"`
				Attempt        *int    `json:"attempt"`
			}
			dec := json.NewDecoder(strings.NewReader(string(r.body)))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&body); err != nil {
				t.Fatalf("body %s: %v", r.body, err)
			}
			if body.Job == nil || body.Slot == nil || body.FencingToken == nil || body.Deadline == nil ||
				body.IdempotencyKey == nil || body.Attempt == nil {
				t.Fatalf("body %s lacks a field", r.body)
			}
			// The body repeats the headers, value for value.
			pairs := []struct{ field, got, header string }{
				{"job", *body.Job, "Leadercron-Job"},
				{"slot", *body.Slot, "Leadercron-Slot"},
				{"fencing_token", strconv.FormatUint(*body.FencingToken, 10), "Leadercron-Fencing-Token"},
				{"deadline", *body.Deadline, "Leadercron-Deadline"},
				{"idempotency_key", *body.IdempotencyKey, "Idempotency-Key"},
			}
			for _, p := range pairs {
				if p.got != r.header.Get(p.header) {
					t.Errorf("body %s %q disagrees with header %s %q", p.field, p.got, p.header, r.header.Get(p.header))
				}
			}
			if *body.Attempt != 2 {
				t.Errorf("body attempt %d, want 2", *body.Attempt)
			}
		})
	}
}

func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	seoul, err := time.LoadLocation("Asia/Seoul")
	if err != nil {
		t.Fatal(err)
	}
	// The same slot written in two zones is the same key.
	a := appclient.Trigger{Job: "payouts", Slot: time.Date(2024, 1, 2, 0, 0, 0, 0, time.UTC)}
	b := appclient.Trigger{Job: "payouts", Slot: time.Date(2024, 1, 2, 9, 0, 0, 0, seoul)}
	const want = "payouts@2024-01-02T00:00:00Z"
	if a.IdempotencyKey() != want || b.IdempotencyKey() != want {
		t.Errorf("keys %q and %q, want %q", a.IdempotencyKey(), b.IdempotencyKey(), want)
	}
	// A run-now is told apart by its request id, not its slot.
	a.RunNow = "01HZX3"
	if got, want := a.IdempotencyKey(), "payouts@run-now/01HZX3"; got != want {
		t.Errorf("run-now key %q, want %q", got, want)
	}
}

func TestTriggerOutcome(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status  int
		outcome fate.Outcome
	}{
		{http.StatusOK, fate.Fired},
		{http.StatusNoContent, fate.Fired},
		{http.StatusAccepted, fate.Fired},
		{http.StatusConflict, fate.Skipped},
		{http.StatusServiceUnavailable, fate.Failed},
		{http.StatusInternalServerError, fate.Failed},
		{http.StatusNotFound, fate.Failed},
		{http.StatusBadRequest, fate.Failed},
	}
	for _, tc := range tests {
		t.Run(strconv.Itoa(tc.status), func(t *testing.T) {
			t.Parallel()
			var calls atomic.Int32
			srv := server(t, func(w http.ResponseWriter, r *http.Request) {
				calls.Add(1)
				w.WriteHeader(tc.status)
				fmt.Fprintf(w, "  answer %d from the app\n", tc.status)
			})
			res := client(t, srv, "").Trigger(context.Background(), trigger("x"))
			if res.Outcome != tc.outcome || res.Status != tc.status || res.Delivery != appclient.DeliveryAnswered {
				t.Errorf("outcome %q status %d delivery %v, want %q %d answered", res.Outcome, res.Status, res.Delivery, tc.outcome, tc.status)
			}
			if n := calls.Load(); n != 1 {
				t.Errorf("app called %d times, want exactly once (no retries)", n)
			}
			if res.Duration <= 0 {
				t.Errorf("duration %v, want it measured", res.Duration)
			}
			if tc.outcome != fate.Failed {
				if res.Err != nil {
					t.Errorf("err %v, want none for %s", res.Err, tc.outcome)
				}
				return
			}
			if res.Err == nil {
				t.Fatal("failed without an error")
			}
			msg := res.Err.Error()
			if !strings.Contains(msg, strconv.Itoa(tc.status)) || !strings.Contains(msg, "jobs/x") {
				t.Errorf("err %q does not name the status %d and the path", msg, tc.status)
			}
			if want := fmt.Sprintf("answer %d from the app", tc.status); !strings.Contains(msg, want) {
				t.Errorf("err %q does not carry the app's answer %q", msg, want)
			}
		})
	}
}

func TestTriggerDeadline(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	srv := server(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release // the app runs past the deadline
	})
	releaseAtEnd(t, release)

	const budget = 300 * time.Millisecond
	tr := trigger("slow")
	tr.Deadline = time.Now().Add(budget)
	res := client(t, srv, "").Trigger(context.Background(), tr)

	select {
	case <-arrived:
	default:
		t.Fatal("the request never reached the app")
	}
	if res.Outcome != fate.Failed || res.Status != 0 || res.Delivery != appclient.DeliveryUnknown {
		t.Errorf("outcome %q status %d delivery %v, want failed with no status, unknown", res.Outcome, res.Status, res.Delivery)
	}
	if !errors.Is(res.Err, context.DeadlineExceeded) {
		t.Errorf("err %v, want a deadline error", res.Err)
	}
	if res.Duration < budget-50*time.Millisecond || res.Duration > budget+2*time.Second {
		t.Errorf("gave up after %v, want close to the %v deadline", res.Duration, budget)
	}
}

func TestTriggerDeadlinePassed(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	srv := server(t, func(w http.ResponseWriter, r *http.Request) { calls.Add(1) })
	tr := trigger("late")
	tr.Deadline = time.Now().Add(-time.Second)
	res := client(t, srv, "").Trigger(context.Background(), tr)
	if res.Outcome != fate.Failed || !errors.Is(res.Err, context.DeadlineExceeded) ||
		res.Delivery != appclient.DeliveryNotSent {
		t.Errorf("result %+v, want failed with a deadline error, not sent", res)
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("app called %d times after the deadline, want 0", n)
	}
}

func TestTriggerContextCanceled(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	arrived := make(chan struct{})
	srv := server(t, func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
	})
	releaseAtEnd(t, release)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-arrived
		cancel()
	}()
	res := client(t, srv, "").Trigger(ctx, trigger("x"))
	if res.Outcome != fate.Failed || !errors.Is(res.Err, context.Canceled) ||
		res.Delivery != appclient.DeliveryUnknown {
		t.Errorf("result %+v, want failed, canceled, unknown", res)
	}
}

func TestTriggerConnectionRefused(t *testing.T) {
	t.Parallel()
	for name, hc := range map[string]*http.Client{"plain client": {}, "NewHTTPClient": appclient.NewHTTPClient()} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			res := appclient.New(refusedURL(t), sidecarID, hc).Trigger(context.Background(), trigger("x"))
			if res.Outcome != fate.Failed || res.Status != 0 {
				t.Errorf("outcome %q status %d, want failed with no status", res.Outcome, res.Status)
			}
			if !errors.Is(res.Err, syscall.ECONNREFUSED) {
				t.Errorf("err %v, want connection refused", res.Err)
			}
			// The dial failed: not a byte left, sending again is safe.
			if res.Delivery != appclient.DeliveryNotSent {
				t.Errorf("delivery %v, want not_sent", res.Delivery)
			}
		})
	}
}

// drainApp answers /drain with the given answers in turn, repeating the
// last one, and counts the polls.
type drainApp struct {
	polls   atomic.Int32
	answers []func(w http.ResponseWriter, r *http.Request)
	bad     atomic.Value // a description of the first bad request, if any
}

func (a *drainApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := int(a.polls.Add(1))
	if r.Method != http.MethodPost || r.Header.Get("Leadercron-Id") != sidecarID {
		a.bad.CompareAndSwap(nil, fmt.Sprintf("%s %s with Leadercron-Id %q", r.Method, r.URL.Path, r.Header.Get("Leadercron-Id")))
	}
	a.answers[min(n, len(a.answers))-1](w, r)
}

func running(n int) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"running": %d}`, n)
	}
}

func status(code int) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(code) }
}

func raw(body string) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) }
}

// drainServer serves app under /app/drain only.
func drainServer(t *testing.T, app *drainApp) *appclient.Client {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("/app/drain", app)
	t.Cleanup(func() {
		if bad := app.bad.Load(); bad != nil {
			t.Errorf("drain request was %v, want POST with Leadercron-Id %q", bad, sidecarID)
		}
	})
	return client(t, server(t, mux.ServeHTTP), "/app")
}

func TestDrainCountsDown(t *testing.T) {
	t.Parallel()
	app := &drainApp{answers: []func(http.ResponseWriter, *http.Request){running(2), running(1), running(0)}}
	c := drainServer(t, app)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := c.Drain(ctx, time.Millisecond)
	if err != nil {
		t.Fatalf("Drain: %v", err)
	}
	if res != (appclient.DrainResult{Polls: 3, Running: 0}) {
		t.Errorf("result %+v, want drained after 3 polls", res)
	}
	if n := app.polls.Load(); n != 3 {
		t.Errorf("app polled %d times, want 3", n)
	}
}

func TestDrainAlreadyIdle(t *testing.T) {
	t.Parallel()
	app := &drainApp{answers: []func(http.ResponseWriter, *http.Request){running(0)}}
	c := drainServer(t, app)
	// A long interval: the first poll must not wait for it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := c.Drain(ctx, time.Hour)
	if err != nil || res != (appclient.DrainResult{Polls: 1}) {
		t.Errorf("Drain: %+v, %v; want drained at the first poll", res, err)
	}
}

func TestDrainAppGone(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := refusedClient(t).Drain(ctx, time.Millisecond)
	if err != nil {
		t.Fatalf("Drain: %v, want drained", err)
	}
	if !res.Gone || res.Polls != 1 || res.Running != 0 {
		t.Errorf("result %+v, want gone at the first poll", res)
	}
}

func TestDrainPollsThroughBadAnswers(t *testing.T) {
	t.Parallel()
	bad := []struct {
		name   string
		answer func(http.ResponseWriter, *http.Request)
		want   string // in the timeout error
	}{
		{"503", status(http.StatusServiceUnavailable), "app answered 503"},
		{"500", status(http.StatusInternalServerError), "app answered 500"},
		{"404", status(http.StatusNotFound), "app answered 404"},
		{"not JSON", raw("draining"), `answer is not {"running": N}`},
		{"no running field", raw(`{"jobs": 0}`), `answer is not {"running": N}`},
		{"running not a number", raw(`{"running": "none"}`), `answer is not {"running": N}`},
	}
	for _, tc := range bad {
		t.Run(tc.name+": keeps polling", func(t *testing.T) {
			t.Parallel()
			app := &drainApp{answers: []func(http.ResponseWriter, *http.Request){tc.answer, tc.answer, running(0)}}
			c := drainServer(t, app)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			res, err := c.Drain(ctx, time.Millisecond)
			if err != nil || res != (appclient.DrainResult{Polls: 3}) {
				t.Errorf("Drain: %+v, %v; want drained at the third poll", res, err)
			}
		})
		t.Run(tc.name+": in the timeout error", func(t *testing.T) {
			t.Parallel()
			app := &drainApp{answers: []func(http.ResponseWriter, *http.Request){tc.answer}}
			c := drainServer(t, app)
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			_, err := c.Drain(ctx, 5*time.Millisecond)
			if !errors.Is(err, appclient.ErrDrainTimeout) {
				t.Fatalf("Drain: %v, want ErrDrainTimeout", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Drain: %q, want it to say %q", err, tc.want)
			}
			if n := app.polls.Load(); n < 2 {
				t.Errorf("app polled %d times before the deadline, want it polled again", n)
			}
		})
	}
}

func TestDrainTimeout(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		answers func(release <-chan struct{}) []func(http.ResponseWriter, *http.Request)
		want    string
		running int
	}{
		{
			name: "app keeps running jobs",
			answers: func(<-chan struct{}) []func(http.ResponseWriter, *http.Request) {
				return []func(http.ResponseWriter, *http.Request){running(3), running(2)}
			},
			want:    "(running 2",
			running: 2,
		},
		{
			name: "app hangs after reporting",
			answers: func(release <-chan struct{}) []func(http.ResponseWriter, *http.Request) {
				return []func(http.ResponseWriter, *http.Request){running(4), func(http.ResponseWriter, *http.Request) { <-release }}
			},
			want:    "(running 4",
			running: 4,
		},
		{
			// The poll cut by the deadline must not hide what the app
			// said before it.
			name: "app hangs after an error",
			answers: func(release <-chan struct{}) []func(http.ResponseWriter, *http.Request) {
				return []func(http.ResponseWriter, *http.Request){status(http.StatusServiceUnavailable), func(http.ResponseWriter, *http.Request) { <-release }}
			},
			want:    "last error: post /app/drain: app answered 503",
			running: 0,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			release := make(chan struct{})
			app := &drainApp{answers: tc.answers(release)}
			c := drainServer(t, app)
			releaseAtEnd(t, release)
			const budget = 300 * time.Millisecond
			ctx, cancel := context.WithTimeout(context.Background(), budget)
			defer cancel()
			start := time.Now()
			res, err := c.Drain(ctx, time.Millisecond)
			took := time.Since(start)
			if !errors.Is(err, appclient.ErrDrainTimeout) {
				t.Fatalf("Drain: %v, want ErrDrainTimeout", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Drain: %q, want it to say %q", err, tc.want)
			}
			if res.Running != tc.running || res.Gone || res.Polls < 2 {
				t.Errorf("result %+v, want running %d after at least 2 polls", res, tc.running)
			}
			if took < budget-50*time.Millisecond || took > budget+2*time.Second {
				t.Errorf("gave up after %v, want close to the %v deadline", took, budget)
			}
		})
	}
}

// receipts counts the triggers an app received, by idempotency key.
type receipts struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *receipts) add(req *http.Request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = make(map[string]int)
	}
	r.n[req.Header.Get("Idempotency-Key")]++
}

func (r *receipts) of(key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[key]
}

// clients are the HTTP clients a Client is tested with: the one the sidecar
// uses, and a plain one (a fresh net/http Transport of its own).
func clients() map[string]func() *http.Client {
	return map[string]func() *http.Client{
		"NewHTTPClient": appclient.NewHTTPClient,
		"plain client":  func() *http.Client { return &http.Client{Transport: &http.Transport{}} },
	}
}

// closeClient closes hc's idle connections when the test ends, before the
// server's Close waits for them.
func closeClient(t *testing.T, hc *http.Client) {
	t.Helper()
	t.Cleanup(hc.CloseIdleConnections)
}

// reset closes conn with an RST: linger 0, so the peer gets "connection
// reset" and no FIN.
func reset(t *testing.T, conn net.Conn) {
	t.Helper()
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		t.Errorf("connection is a %T, not a *net.TCPConn", conn)
		conn.Close()
		return
	}
	if err := tc.SetLinger(0); err != nil {
		t.Error(err)
	}
	tc.Close()
}

// slotTrigger is trigger(job) for slot i: its own idempotency key.
func slotTrigger(job string, i int) appclient.Trigger {
	tr := trigger(job)
	tr.Slot = tr.Slot.Add(time.Duration(i) * time.Minute)
	return tr
}

// The app reads the whole trigger, then resets the connection without an
// answer (a crash, a proxy reset) on its 1st, 4th, 7th... request. The
// trigger carries Idempotency-Key, which net/http's Transport takes as
// leave to replay a POST on a new connection when a reused one breaks
// before the answer: it must not, every slot reaches the app once.
func TestTriggerNotReplayedAfterReset(t *testing.T) {
	t.Parallel()
	for name, newClient := range clients() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var (
				got      receipts
				requests atomic.Int32
				conns    atomic.Int32
			)
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if _, err := io.ReadAll(r.Body); err != nil {
					t.Errorf("read trigger: %v", err)
				}
				got.add(r)
				if requests.Add(1)%3 != 1 {
					w.WriteHeader(http.StatusNoContent)
					return
				}
				conn, _, err := http.NewResponseController(w).Hijack()
				if err != nil {
					t.Errorf("hijack: %v", err)
					return
				}
				reset(t, conn)
			}))
			srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
				if s == http.StateNew {
					conns.Add(1)
				}
			}
			srv.Start()
			t.Cleanup(srv.Close)
			hc := newClient()
			closeClient(t, hc)
			u, _ := url.Parse(srv.URL)
			c := appclient.New(u, sidecarID, hc) // one Client: one connection pool

			const triggers = 30
			for i := range triggers {
				tr := slotTrigger("x", i)
				res := c.Trigger(context.Background(), tr)
				if i%3 == 0 { // the app's 1st, 4th, 7th... request: reset
					if res.Outcome != fate.Failed || res.Status != 0 || res.Delivery != appclient.DeliveryUnknown || res.Err == nil {
						t.Errorf("trigger %d (reset after the app read it): %+v, want failed, status 0, unknown", i+1, res)
					}
				} else if res.Outcome != fate.Fired || res.Delivery != appclient.DeliveryAnswered {
					t.Errorf("trigger %d: %+v, want fired, answered", i+1, res)
				}
				if n := got.of(tr.IdempotencyKey()); n != 1 {
					t.Errorf("trigger %d (%s) reached the app %d times, want exactly once", i+1, tr.IdempotencyKey(), n)
				}
			}
			if n := requests.Load(); n != triggers {
				t.Errorf("app got %d requests for %d triggers", n, triggers)
			}
			// Keep-alive was on: every reset from the 4th request on hit a
			// reused connection (1 connection for the 1st request, then one
			// per three).
			if n := conns.Load(); n != 1+(triggers-1+2)/3 {
				t.Errorf("app saw %d connections, want %d", n, 1+(triggers-1+2)/3)
			}
		})
	}
}

// The app's http.Server has a WriteTimeout shorter than the job: the
// handler runs past it, its answer is never sent, and the server closes the
// kept-alive connection without an answer byte.
func TestTriggerWriteTimeoutNotReplayed(t *testing.T) {
	t.Parallel()
	for name, newClient := range clients() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			const writeTimeout = 100 * time.Millisecond
			var got receipts
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got.add(r)
				if r.Header.Get("Leadercron-Job") == "slow" {
					// The job itself: it outlasts the server's write
					// deadline, so the answer below is lost.
					time.Sleep(4 * writeTimeout)
					io.WriteString(w, "done")
					return
				}
				w.WriteHeader(http.StatusNoContent)
			}))
			srv.Config.WriteTimeout = writeTimeout
			srv.Start()
			t.Cleanup(srv.Close)
			hc := newClient()
			closeClient(t, hc)
			u, _ := url.Parse(srv.URL)
			c := appclient.New(u, sidecarID, hc)

			// A first trigger, so that the slow one goes on a reused
			// connection, the case the Transport would replay.
			if res := c.Trigger(context.Background(), trigger("fast")); res.Delivery != appclient.DeliveryAnswered {
				t.Fatalf("first trigger: %+v, want answered", res)
			}
			slow := trigger("slow")
			res := c.Trigger(context.Background(), slow)
			if res.Outcome != fate.Failed || res.Status != 0 || res.Delivery != appclient.DeliveryUnknown {
				t.Errorf("result %+v, want failed, status 0, unknown", res)
			}
			if n := got.of(slow.IdempotencyKey()); n != 1 {
				t.Errorf("the slow trigger reached the app %d times, want exactly once", n)
			}
		})
	}
}

// lateConn is a client connection whose reader learns that the connection
// failed only when something is next written to it (or it is closed): the
// race in which the Transport picks a kept-alive connection the app has
// just closed, before its reader saw the close, made certain.
type lateConn struct {
	net.Conn
	failed   chan struct{} // closed when the read side has failed
	wake     chan struct{} // closed at the first Write after that, or Close
	failOnce sync.Once
	wakeOnce sync.Once
}

func newLateConn(conn net.Conn) *lateConn {
	return &lateConn{Conn: conn, failed: make(chan struct{}), wake: make(chan struct{})}
}

// NetConn returns the connection under c, as *tls.Conn's does.
func (c *lateConn) NetConn() net.Conn { return c.Conn }

func (c *lateConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.failOnce.Do(func() { close(c.failed) })
		<-c.wake
	}
	return n, err
}

func (c *lateConn) Write(p []byte) (int, error) {
	select {
	case <-c.failed:
		defer c.wakeOnce.Do(func() { close(c.wake) })
	default:
	}
	return c.Conn.Write(p)
}

func (c *lateConn) Close() error {
	c.wakeOnce.Do(func() { close(c.wake) })
	return c.Conn.Close()
}

// A kept-alive connection the app closed while it was idle: the second
// trigger must reach the app at most once, and once when it can be shown
// that nothing of it was written to the dead connection.
func TestTriggerDeadIdleConnection(t *testing.T) {
	t.Parallel()
	// app serves triggers and sends each connection that goes idle to idle.
	app := func(t *testing.T, got *receipts) (srv *httptest.Server, idle <-chan net.Conn, closed <-chan struct{}) {
		idleC := make(chan net.Conn, 16)
		closedC := make(chan struct{}, 16)
		srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			got.add(r)
			w.WriteHeader(http.StatusNoContent)
		}))
		srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
			switch s {
			case http.StateIdle:
				idleC <- c
			case http.StateClosed:
				closedC <- struct{}{}
			}
		}
		srv.Start()
		t.Cleanup(srv.Close)
		return srv, idleC, closedC
	}
	// lateClient is NewHTTPClient whose first connection is a lateConn,
	// sent on first; it counts the connections it dials.
	lateClient := func(t *testing.T) (hc *http.Client, first <-chan *lateConn, dials *atomic.Int32) {
		hc = appclient.NewHTTPClient()
		closeClient(t, hc)
		firstC := make(chan *lateConn, 1)
		dials = new(atomic.Int32)
		tr := hc.Transport.(*http.Transport)
		dial := tr.DialContext
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := dial(ctx, network, addr)
			if err != nil || dials.Add(1) != 1 {
				return conn, err
			}
			lc := newLateConn(conn)
			firstC <- lc
			return lc, nil
		}
		return hc, firstC, dials
	}

	t.Run("reset, not noticed yet: sent again on a fresh connection", func(t *testing.T) {
		t.Parallel()
		var got receipts
		srv, idle, _ := app(t, &got)
		hc, first, dials := lateClient(t)
		u, _ := url.Parse(srv.URL)
		c := appclient.New(u, sidecarID, hc)

		if res := c.Trigger(context.Background(), slotTrigger("x", 1)); res.Delivery != appclient.DeliveryAnswered {
			t.Fatalf("first trigger: %+v, want answered", res)
		}
		reset(t, <-idle) // the app drops the idle connection
		<-(<-first).failed
		// The reset has reached the client; the Transport still has the
		// connection in its pool, and the trigger's first write fails
		// with nothing written.
		second := slotTrigger("x", 2)
		res := c.Trigger(context.Background(), second)
		if res.Outcome != fate.Fired || res.Delivery != appclient.DeliveryAnswered || res.Err != nil {
			t.Errorf("second trigger: %+v, want fired, answered", res)
		}
		if n := got.of(second.IdempotencyKey()); n != 1 {
			t.Errorf("second trigger reached the app %d times, want exactly once", n)
		}
		if n := dials.Load(); n != 2 {
			t.Errorf("%d connections dialed, want 2 (the second for the resend)", n)
		}
	})

	t.Run("closed, not noticed yet: written, so unknown and not sent again", func(t *testing.T) {
		t.Parallel()
		var got receipts
		srv, idle, _ := app(t, &got)
		hc, first, dials := lateClient(t)
		u, _ := url.Parse(srv.URL)
		c := appclient.New(u, sidecarID, hc)

		if res := c.Trigger(context.Background(), slotTrigger("x", 1)); res.Delivery != appclient.DeliveryAnswered {
			t.Fatalf("first trigger: %+v, want answered", res)
		}
		(<-idle).Close() // a FIN: the client's write still succeeds
		<-(<-first).failed
		second := slotTrigger("x", 2)
		res := c.Trigger(context.Background(), second)
		// The trigger left this host: no proof that the app did not get
		// it (here it did not, but the sidecar cannot know).
		if res.Outcome != fate.Failed || res.Status != 0 || res.Delivery != appclient.DeliveryUnknown {
			t.Errorf("second trigger: %+v, want failed, status 0, unknown", res)
		}
		if n := got.of(second.IdempotencyKey()); n != 0 {
			t.Errorf("second trigger reached the app %d times, want 0", n)
		}
		if n := dials.Load(); n != 1 {
			t.Errorf("%d connections dialed, want 1 (no resend)", n)
		}
	})

	for name, newClient := range clients() {
		t.Run("closed, "+name+": never twice", func(t *testing.T) {
			t.Parallel()
			var got receipts
			srv, idle, closed := app(t, &got)
			hc := newClient()
			closeClient(t, hc)
			u, _ := url.Parse(srv.URL)
			c := appclient.New(u, sidecarID, hc)

			if res := c.Trigger(context.Background(), slotTrigger("x", 1)); res.Delivery != appclient.DeliveryAnswered {
				t.Fatalf("first trigger: %+v, want answered", res)
			}
			(<-idle).Close()
			<-closed // the app is done with it; the client may or may not have seen it
			second := slotTrigger("x", 2)
			res := c.Trigger(context.Background(), second)
			n := got.of(second.IdempotencyKey())
			switch res.Delivery {
			case appclient.DeliveryAnswered:
				if n != 1 {
					t.Errorf("answered, and the app got it %d times, want exactly once", n)
				}
			case appclient.DeliveryNotSent:
				if n != 0 {
					t.Errorf("not sent, and the app got it %d times", n)
				}
			default: // the write raced the close
				if n > 1 {
					t.Errorf("%v, and the app got it %d times, want at most once", res.Delivery, n)
				}
			}
		})
	}
}

// A trigger is not sent again by a redirect: the app's 3xx is its answer.
func TestTriggerRedirectNotFollowed(t *testing.T) {
	t.Parallel()
	for _, code := range []int{http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			t.Parallel()
			var calls atomic.Int32
			srv := server(t, func(w http.ResponseWriter, r *http.Request) {
				calls.Add(1)
				http.Redirect(w, r, "/elsewhere", code)
			})
			res := client(t, srv, "").Trigger(context.Background(), trigger("x"))
			if res.Outcome != fate.Failed || res.Status != code || res.Delivery != appclient.DeliveryAnswered {
				t.Errorf("result %+v, want failed %d, answered", res, code)
			}
			if n := calls.Load(); n != 1 {
				t.Errorf("app called %d times, want once", n)
			}
		})
	}
}

// Run-now triggers in the same second as each other and as a scheduled
// slot carry their own keys.
func TestTriggerRunNowKeys(t *testing.T) {
	t.Parallel()
	got := make(chan seen, 3)
	srv := server(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen{r.Method, r.URL.Path, r.Header.Clone(), b}
		w.WriteHeader(http.StatusNoContent)
	})
	c := client(t, srv, "")
	second := time.Date(2024, 3, 10, 9, 0, 0, 0, time.UTC)
	triggers := []appclient.Trigger{
		{Job: "report", Slot: second.Add(100 * time.Millisecond), RunNow: "req-1"},
		{Job: "report", Slot: second.Add(600 * time.Millisecond), RunNow: "req-2"},
		{Job: "report", Slot: second},
	}
	want := []string{"report@run-now/req-1", "report@run-now/req-2", "report@2024-03-10T09:00:00Z"}
	keys := make(map[string]bool)
	for i, tr := range triggers {
		tr.Deadline = time.Now().Add(time.Minute)
		if res := c.Trigger(context.Background(), tr); res.Outcome != fate.Fired {
			t.Fatalf("trigger %d: %+v", i, res)
		}
		r := <-got
		var b struct {
			Slot           string  `json:"slot"`
			IdempotencyKey string  `json:"idempotency_key"`
			RunNow         *string `json:"run_now"`
		}
		if err := json.Unmarshal(r.body, &b); err != nil {
			t.Fatalf("body %s: %v", r.body, err)
		}
		key := r.header.Get("Idempotency-Key")
		if key != want[i] || b.IdempotencyKey != key {
			t.Errorf("trigger %d: key %q (body %q), want %q", i, key, b.IdempotencyKey, want[i])
		}
		keys[key] = true
		if s := r.header.Get("Leadercron-Slot"); s != "2024-03-10T09:00:00Z" || b.Slot != s {
			t.Errorf("trigger %d: slot %q (body %q), want the same second for all", i, s, b.Slot)
		}
		hdr := r.header.Values("Leadercron-Run-Now")
		if tr.RunNow == "" {
			if hdr != nil || b.RunNow != nil {
				t.Errorf("scheduled slot: Leadercron-Run-Now %q, body run_now %v; want neither", hdr, b.RunNow)
			}
			continue
		}
		if len(hdr) != 1 || hdr[0] != tr.RunNow || b.RunNow == nil || *b.RunNow != tr.RunNow {
			t.Errorf("run-now %s: Leadercron-Run-Now %q, body run_now %v; want %q in both", tr.RunNow, hdr, b.RunNow, tr.RunNow)
		}
	}
	if len(keys) != 3 {
		t.Errorf("%d distinct keys for 3 triggers in one second, want 3", len(keys))
	}
}

// A pause between the sender's last lease check and the write (here in the
// transport, before the connection is handed over) that outlasts
// SendWithin stops the trigger before its first byte: nothing reaches the
// app, on a fresh or a reused connection, and the connection serves the
// next trigger normally.
func TestTriggerNotSentAfterLease(t *testing.T) {
	var got atomic.Int64
	srv := server(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		got.Add(1)
		w.WriteHeader(http.StatusNoContent)
	})
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	hc := appclient.NewHTTPClient()
	closeClient(t, hc)
	c := appclient.New(u, sidecarID, hc)
	paused := func(d time.Duration) context.Context {
		return httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
			GetConn: func(string) { time.Sleep(d) }, // the process pause
		})
	}
	for i, step := range []struct {
		name     string
		pause    time.Duration
		within   time.Duration
		received int64
	}{
		{"no pause, fresh connection", 0, 5 * time.Second, 1},
		{"pause past the lease, reused connection", 150 * time.Millisecond, 50 * time.Millisecond, 1},
		{"no pause, the same connection again", 0, 5 * time.Second, 2},
		{"pause within the lease", 50 * time.Millisecond, 5 * time.Second, 3},
	} {
		tr := slotTrigger("report", i)
		tr.SendWithin = step.within
		res := c.Trigger(paused(step.pause), tr)
		lateOK := step.within > step.pause
		switch {
		case lateOK && (res.Outcome != fate.Fired || res.Delivery != appclient.DeliveryAnswered):
			t.Errorf("%s: %+v; want fired", step.name, res)
		case !lateOK && (!errors.Is(res.Err, appclient.ErrLeaseEnded) || res.Delivery != appclient.DeliveryNotSent):
			t.Errorf("%s: %+v; want ErrLeaseEnded, not sent", step.name, res)
		}
		if n := got.Load(); n != step.received {
			t.Errorf("%s: the app received %d triggers in all, want %d", step.name, n, step.received)
		}
	}
}
