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
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	_ "time/tzdata" // the zone tests must not depend on the host's zoneinfo

	"github.com/leadercron/leadercron/internal/appclient"
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return appclient.New(&url.URL{Scheme: "http", Host: addr}, sidecarID, &http.Client{})
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
			if res.Outcome != appclient.OutcomeFired || res.Status != http.StatusNoContent || res.Err != nil {
				t.Fatalf("result %+v, want fired 204", res)
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
			}
			for k, want := range wantHeaders {
				if got := r.header.Values(k); len(got) != 1 || got[0] != want {
					t.Errorf("header %s: %q, want %q", k, got, want)
				}
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
}

func TestTriggerOutcome(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status  int
		outcome string
	}{
		{http.StatusOK, appclient.OutcomeFired},
		{http.StatusNoContent, appclient.OutcomeFired},
		{http.StatusAccepted, appclient.OutcomeFired},
		{http.StatusConflict, appclient.OutcomeSkipped},
		{http.StatusServiceUnavailable, appclient.OutcomeFailed},
		{http.StatusInternalServerError, appclient.OutcomeFailed},
		{http.StatusNotFound, appclient.OutcomeFailed},
		{http.StatusBadRequest, appclient.OutcomeFailed},
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
			if res.Outcome != tc.outcome || res.Status != tc.status {
				t.Errorf("outcome %q status %d, want %q %d", res.Outcome, res.Status, tc.outcome, tc.status)
			}
			if n := calls.Load(); n != 1 {
				t.Errorf("app called %d times, want exactly once (no retries)", n)
			}
			if res.Duration <= 0 {
				t.Errorf("duration %v, want it measured", res.Duration)
			}
			if tc.outcome != appclient.OutcomeFailed {
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
	if res.Outcome != appclient.OutcomeFailed || res.Status != 0 {
		t.Errorf("outcome %q status %d, want failed with no status", res.Outcome, res.Status)
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
	if res.Outcome != appclient.OutcomeFailed || !errors.Is(res.Err, context.DeadlineExceeded) {
		t.Errorf("result %+v, want failed with a deadline error", res)
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
	if res.Outcome != appclient.OutcomeFailed || !errors.Is(res.Err, context.Canceled) {
		t.Errorf("result %+v, want failed, canceled", res)
	}
}

func TestTriggerConnectionRefused(t *testing.T) {
	t.Parallel()
	res := refusedClient(t).Trigger(context.Background(), trigger("x"))
	if res.Outcome != appclient.OutcomeFailed || res.Status != 0 {
		t.Errorf("outcome %q status %d, want failed with no status", res.Outcome, res.Status)
	}
	if !errors.Is(res.Err, syscall.ECONNREFUSED) {
		t.Errorf("err %v, want connection refused", res.Err)
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
