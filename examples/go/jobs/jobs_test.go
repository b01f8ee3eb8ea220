package jobs_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/leadercron/leadercron/examples/go/jobs"
)

var baseSlot = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// newRun returns a valid run of job at slot offset minutes after baseSlot.
func newRun(job string, minutes int, token uint64) jobs.Run {
	slot := baseSlot.Add(time.Duration(minutes) * time.Minute)
	return jobs.Run{
		Job:            job,
		Slot:           slot,
		FencingToken:   token,
		Deadline:       time.Now().Add(time.Minute).UTC().Truncate(time.Millisecond),
		IdempotencyKey: job + "@" + slot.Format(time.RFC3339),
		Attempt:        1,
	}
}

func bodyOf(run jobs.Run) string {
	b, err := json.Marshal(map[string]any{
		"job":             run.Job,
		"slot":            run.Slot.Format(time.RFC3339Nano),
		"fencing_token":   run.FencingToken,
		"deadline":        run.Deadline.Format(time.RFC3339Nano),
		"idempotency_key": run.IdempotencyKey,
		"attempt":         run.Attempt,
	})
	if err != nil {
		panic(err)
	}
	return string(b)
}

// request builds the request the sidecar would send for run.
func request(run jobs.Run) *http.Request {
	return rawRequest(run, bodyOf(run))
}

// loopback is the peer address of requests from the local sidecar.
const loopback = "127.0.0.1:40000"

// rawRequest sends body with the headers of run, from a loopback peer.
func rawRequest(run jobs.Run, body string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/jobs/"+run.Job, strings.NewReader(body))
	r.RemoteAddr = loopback
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set(jobs.HeaderJob, run.Job)
	r.Header.Set(jobs.HeaderSlot, run.Slot.Format(time.RFC3339Nano))
	r.Header.Set(jobs.HeaderFencingToken, strconv.FormatUint(run.FencingToken, 10))
	r.Header.Set(jobs.HeaderDeadline, run.Deadline.Format(time.RFC3339Nano))
	r.Header.Set(jobs.HeaderIdempotencyKey, run.IdempotencyKey)
	r.Header.Set(jobs.HeaderAttempt, strconv.Itoa(run.Attempt))
	return r
}

func drainRequest() *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/drain", nil)
	r.RemoteAddr = loopback
	return r
}

func serve(h http.Handler, r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// serveBg serves r in a goroutine; the recorder arrives once the handler
// has returned.
func serveBg(h http.Handler, r *http.Request) <-chan *httptest.ResponseRecorder {
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() { done <- serve(h, r) }()
	return done
}

type errBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

func check(t *testing.T, w *httptest.ResponseRecorder, status int, code string) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status = %d, want %d; body %s", w.Code, status, w.Body)
	}
	if code == "" {
		return
	}
	var b errBody
	if err := json.Unmarshal(w.Body.Bytes(), &b); err != nil {
		t.Fatalf("body %q: %v", w.Body, err)
	}
	if b.Code != code {
		t.Fatalf("code = %q, want %q; body %s", b.Code, code, w.Body)
	}
	if b.Error == "" {
		t.Fatalf("empty error message; body %s", w.Body)
	}
}

// gate is a job that holds until released, so tests control its lifetime
// without sleeping.
type gate struct {
	started chan jobs.Run
	release chan error
}

func newGate() *gate {
	return &gate{started: make(chan jobs.Run, 16), release: make(chan error)}
}

func (g *gate) Func(ctx context.Context, run jobs.Run) error {
	g.started <- run
	select {
	case err := <-g.release:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting on channel")
		panic("unreachable")
	}
}

func waitIdle(t *testing.T, h *jobs.Handler) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Wait(ctx); err != nil {
		t.Fatalf("Wait: %v (running %d)", err, h.Running())
	}
	if n := h.Running(); n != 0 {
		t.Fatalf("Running() = %d after Wait, want 0", n)
	}
}

func ok(context.Context, jobs.Run) error { return nil }

// TestSingleRequest covers the answers to one request on a fresh handler.
func TestSingleRequest(t *testing.T) {
	good := newRun("hello", 0, 7)
	mutate := func(f func(r *http.Request)) func() *http.Request {
		return func() *http.Request { r := request(good); f(r); return r }
	}
	withBody := func(body string) func() *http.Request {
		return func() *http.Request { return rawRequest(good, body) }
	}
	bodyWith := func(f func(m map[string]any)) func() *http.Request {
		return func() *http.Request {
			var m map[string]any
			if err := json.Unmarshal([]byte(bodyOf(good)), &m); err != nil {
				panic(err)
			}
			f(m)
			b, _ := json.Marshal(m)
			return rawRequest(good, string(b))
		}
	}
	past := good
	past.Deadline = time.Now().Add(-time.Second).UTC()
	third := good
	third.Attempt = 3

	tests := []struct {
		name   string
		fn     jobs.Func
		async  bool
		drain  bool
		req    func() *http.Request
		status int
		code   string
		want   *jobs.Run // the Run the Func must receive
	}{
		{name: "success", fn: ok, req: func() *http.Request { return request(good) }, status: 200, want: &good},
		{name: "async accepted", fn: ok, async: true, req: func() *http.Request { return request(good) }, status: 202},
		{name: "job error", fn: func(context.Context, jobs.Run) error { return errors.New("boom") },
			req: func() *http.Request { return request(good) }, status: 500, code: jobs.CodeJobFailed},
		{name: "job panic", fn: func(context.Context, jobs.Run) error { panic("kaboom") },
			req: func() *http.Request { return request(good) }, status: 500, code: jobs.CodeJobFailed},
		{name: "unknown job", fn: ok, req: func() *http.Request { return request(newRun("nope", 0, 7)) },
			status: 404, code: jobs.CodeUnknownJob},
		{name: "wrong method", fn: ok, req: func() *http.Request {
			r := httptest.NewRequest(http.MethodGet, "/jobs/hello", nil)
			r.RemoteAddr = loopback
			return r
		}, status: 405},
		{name: "draining", fn: ok, drain: true, req: func() *http.Request { return request(good) },
			status: 503, code: jobs.CodeDraining},
		{name: "deadline passed", fn: ok, req: func() *http.Request { return request(past) },
			status: 504, code: jobs.CodeDeadlinePassed},
		{name: "deadline passed async", fn: ok, async: true, req: func() *http.Request { return request(past) },
			status: 504, code: jobs.CodeDeadlinePassed},

		// Malformed requests.
		{name: "not JSON", fn: ok, req: withBody("slot=now"), status: 400, code: jobs.CodeBadRequest},
		{name: "empty body", fn: ok, req: withBody(""), status: 400, code: jobs.CodeBadRequest},
		{name: "JSON array", fn: ok, req: withBody("[]"), status: 400, code: jobs.CodeBadRequest},
		{name: "trailing data", fn: ok, req: withBody(bodyOf(good) + "{}"), status: 400, code: jobs.CodeBadRequest},
		{name: "bad slot", fn: ok, req: bodyWith(func(m map[string]any) { m["slot"] = "yesterday" }),
			status: 400, code: jobs.CodeBadRequest},
		{name: "negative token", fn: ok, req: bodyWith(func(m map[string]any) { m["fencing_token"] = -1 }),
			status: 400, code: jobs.CodeBadRequest},
		{name: "token as string", fn: ok, req: bodyWith(func(m map[string]any) { m["fencing_token"] = "7" }),
			status: 400, code: jobs.CodeBadRequest},
		{name: "attempt zero", fn: ok, req: func() *http.Request {
			r := bodyWith(func(m map[string]any) { m["attempt"] = 0 })()
			r.Header.Del(jobs.HeaderAttempt)
			return r
		}, status: 400, code: jobs.CodeBadRequest},
		{name: "attempt header zero", fn: ok, req: func() *http.Request {
			r := bodyWith(func(m map[string]any) { delete(m, "attempt") })()
			r.Header.Set(jobs.HeaderAttempt, "0")
			return r
		}, status: 400, code: jobs.CodeBadRequest},
		{name: "body null", fn: ok, req: withBody("null"), status: 400, code: jobs.CodeBadRequest},
		{name: "field given twice", fn: ok, req: withBody(`{"fencing_token":7,"fencing_token":7}`),
			status: 400, code: jobs.CodeBadRequest},
		{name: "body job differs from path", fn: ok, req: bodyWith(func(m map[string]any) { m["job"] = "other" }),
			status: 400, code: jobs.CodeBadRequest},
		{name: "missing slot", fn: ok, req: func() *http.Request {
			r := bodyWith(func(m map[string]any) { delete(m, "slot") })()
			r.Header.Del(jobs.HeaderSlot)
			return r
		}, status: 400, code: jobs.CodeBadRequest},
		{name: "missing token", fn: ok, req: func() *http.Request {
			r := bodyWith(func(m map[string]any) { delete(m, "fencing_token") })()
			r.Header.Del(jobs.HeaderFencingToken)
			return r
		}, status: 400, code: jobs.CodeBadRequest},
		{name: "missing deadline", fn: ok, req: func() *http.Request {
			r := bodyWith(func(m map[string]any) { delete(m, "deadline") })()
			r.Header.Del(jobs.HeaderDeadline)
			return r
		}, status: 400, code: jobs.CodeBadRequest},

		// Headers must agree with the body.
		{name: "job header differs", fn: ok, req: mutate(func(r *http.Request) { r.Header.Set(jobs.HeaderJob, "other") }),
			status: 400, code: jobs.CodeBadRequest},
		{name: "slot header differs", fn: ok, req: mutate(func(r *http.Request) {
			r.Header.Set(jobs.HeaderSlot, good.Slot.Add(time.Second).Format(time.RFC3339))
		}), status: 400, code: jobs.CodeBadRequest},
		{name: "token header differs", fn: ok, req: mutate(func(r *http.Request) { r.Header.Set(jobs.HeaderFencingToken, "8") }),
			status: 400, code: jobs.CodeBadRequest},
		{name: "token header not decimal", fn: ok, req: mutate(func(r *http.Request) { r.Header.Set(jobs.HeaderFencingToken, "0x7") }),
			status: 400, code: jobs.CodeBadRequest},
		{name: "deadline header differs", fn: ok, req: mutate(func(r *http.Request) {
			r.Header.Set(jobs.HeaderDeadline, good.Deadline.Add(time.Second).Format(time.RFC3339Nano))
		}), status: 400, code: jobs.CodeBadRequest},
		{name: "key header differs", fn: ok, req: mutate(func(r *http.Request) { r.Header.Set(jobs.HeaderIdempotencyKey, "x") }),
			status: 400, code: jobs.CodeBadRequest},
		{name: "attempt header differs", fn: ok, req: mutate(func(r *http.Request) { r.Header.Set(jobs.HeaderAttempt, "2") }),
			status: 400, code: jobs.CodeBadRequest},
		{name: "attempt header not decimal", fn: ok, req: mutate(func(r *http.Request) { r.Header.Set(jobs.HeaderAttempt, "+1") }),
			status: 400, code: jobs.CodeBadRequest},
		{name: "header given twice", fn: ok, req: mutate(func(r *http.Request) { r.Header.Add(jobs.HeaderFencingToken, "7") }),
			status: 400, code: jobs.CodeBadRequest},

		// Accepted variations.
		{name: "same instant, other offset", fn: ok, req: mutate(func(r *http.Request) {
			r.Header.Set(jobs.HeaderSlot, good.Slot.In(time.FixedZone("", 2*3600)).Format(time.RFC3339))
		}), status: 200, want: &good},
		{name: "no headers", fn: ok, req: func() *http.Request {
			r := httptest.NewRequest(http.MethodPost, "/jobs/hello", strings.NewReader(bodyOf(good)))
			r.RemoteAddr = loopback
			return r
		}, status: 200, want: &good},
		{name: "attempt from header", fn: ok, req: func() *http.Request {
			r := bodyWith(func(m map[string]any) { delete(m, "attempt") })()
			r.Header.Set(jobs.HeaderAttempt, "3")
			return r
		}, status: 200, want: &third},
		{name: "field names are exact", fn: ok, req: func() *http.Request {
			// Only the header's token counts; FENCING_TOKEN is an unknown field.
			return rawRequest(good, `{"FENCING_TOKEN": 99}`)
		}, status: 200, want: &good},
		{name: "fields from headers only", fn: ok, req: withBody("{}"), status: 200, want: &good},
		{name: "defaults for key and attempt", fn: ok, req: func() *http.Request {
			r := bodyWith(func(m map[string]any) { delete(m, "idempotency_key"); delete(m, "attempt") })()
			r.Header.Del(jobs.HeaderIdempotencyKey)
			return r
		}, status: 200, want: &good},
		{name: "unknown fields ignored", fn: ok, req: bodyWith(func(m map[string]any) { m["future"] = true }),
			status: 200, want: &good},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := jobs.NewHandler(jobs.Options{Async: tc.async})
			got := make(chan jobs.Run, 1)
			h.Register("hello", func(ctx context.Context, run jobs.Run) error {
				got <- run
				return tc.fn(ctx, run)
			})
			if tc.drain {
				h.Drain()
			}
			w := serve(h, tc.req())
			check(t, w, tc.status, tc.code)
			waitIdle(t, h)
			if tc.want != nil {
				run := recv(t, got)
				if !run.Slot.Equal(tc.want.Slot) || !run.Deadline.Equal(tc.want.Deadline) ||
					run.Job != tc.want.Job || run.FencingToken != tc.want.FencingToken ||
					run.IdempotencyKey != tc.want.IdempotencyKey || run.Attempt != tc.want.Attempt {
					t.Fatalf("Func got %+v, want %+v", run, *tc.want)
				}
				if run.Slot.Location() != time.UTC {
					t.Fatalf("Slot location = %v, want UTC", run.Slot.Location())
				}
			}
			if tc.status >= 400 && tc.status != 500 && len(got) != 0 {
				t.Fatalf("refused request ran the job")
			}
		})
	}
}

// TestConflicts covers the 409 answers: a second request arriving while a
// first run is held open, or after it finished.
func TestConflicts(t *testing.T) {
	type step struct {
		run    jobs.Run
		status int
		code   string
	}
	first := newRun("held", 0, 5)
	sameKey := first // identical retry
	sameKey.Attempt = 2
	otherSlot := newRun("held", 1, 5)
	stale := newRun("held", 2, 4)
	newer := newRun("held", 3, 6)
	other := newRun("other", 0, 5)

	tests := []struct {
		name  string
		async bool
		// while is sent while first is held; after is sent once it ended.
		while []step
		after []step
		// firstErr is what the held run returns.
		firstErr error
	}{
		{
			name:  "same job running (sync)",
			while: []step{{otherSlot, 409, jobs.CodeAlreadyRunning}, {other, 200, ""}},
			after: []step{{otherSlot, 200, ""}},
		},
		{
			name:  "same job running (async)",
			async: true,
			while: []step{{otherSlot, 409, jobs.CodeAlreadyRunning}},
			after: []step{{otherSlot, 202, ""}},
		},
		{
			name:  "duplicate key while running",
			while: []step{{sameKey, 409, jobs.CodeDuplicate}},
			after: []step{{sameKey, 409, jobs.CodeDuplicate}},
		},
		{
			name:     "failed key may be retried",
			firstErr: errors.New("transient"),
			while:    []step{{sameKey, 409, jobs.CodeDuplicate}},
			after:    []step{{sameKey, 200, ""}, {sameKey, 409, jobs.CodeDuplicate}},
		},
		{
			name:  "stale fencing token",
			while: []step{{stale, 409, jobs.CodeStaleFencingToken}},
			after: []step{{stale, 409, jobs.CodeStaleFencingToken}, {otherSlot, 200, ""}},
		},
		{
			name:  "newer token fences older",
			while: []step{{newer, 409, jobs.CodeAlreadyRunning}},
			// first's token 5 is now stale, even for a new slot.
			after: []step{{otherSlot, 409, jobs.CodeStaleFencingToken}, {newer, 200, ""}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := jobs.NewHandler(jobs.Options{Async: tc.async})
			g := newGate()
			h.Register("held", func(ctx context.Context, run jobs.Run) error {
				if run.Slot.Equal(first.Slot) && run.Attempt == 1 {
					return g.Func(ctx, run)
				}
				return nil
			})
			h.Register("other", ok)

			var firstDone <-chan *httptest.ResponseRecorder
			if tc.async {
				check(t, serve(h, request(first)), 202, "")
			} else {
				firstDone = serveBg(h, request(first))
			}
			recv(t, g.started)

			for i, s := range tc.while {
				w := serve(h, request(s.run))
				if w.Code != s.status {
					t.Fatalf("while step %d: status %d, want %d; body %s", i, w.Code, s.status, w.Body)
				}
				check(t, w, s.status, s.code)
			}
			if n := h.Running(); n != 1 {
				t.Fatalf("Running() = %d while held, want 1", n)
			}

			g.release <- tc.firstErr
			if firstDone != nil {
				want := 200
				if tc.firstErr != nil {
					want = 500
				}
				check(t, recv(t, firstDone), want, "")
			}
			waitIdle(t, h)

			for i, s := range tc.after {
				w := serve(h, request(s.run))
				if w.Code != s.status {
					t.Fatalf("after step %d: status %d, want %d; body %s", i, w.Code, s.status, w.Body)
				}
				check(t, w, s.status, s.code)
				waitIdle(t, h)
			}
		})
	}
}

func TestStaleTokenBody(t *testing.T) {
	h := jobs.NewHandler(jobs.Options{})
	h.Register("hello", ok)
	check(t, serve(h, request(newRun("hello", 0, 10))), 200, "")
	w := serve(h, request(newRun("hello", 1, 9)))
	check(t, w, 409, jobs.CodeStaleFencingToken)
	for _, want := range []string{"stale leader", "9", "10"} {
		if !strings.Contains(w.Body.String(), want) {
			t.Errorf("body %s does not mention %q", w.Body, want)
		}
	}
}

func TestRememberKeysBound(t *testing.T) {
	h := jobs.NewHandler(jobs.Options{RememberKeys: 2})
	h.Register("hello", ok)
	r0, r1, r2 := newRun("hello", 0, 1), newRun("hello", 1, 1), newRun("hello", 2, 1)
	steps := []struct {
		run    jobs.Run
		status int
	}{
		{r0, 200}, {r1, 200}, {r0, 409}, {r2, 200}, // r0 evicted by r2
		{r1, 409}, {r2, 409}, {r0, 200}, // r0 runs again, evicting r1
		{r1, 200},
	}
	for i, s := range steps {
		if w := serve(h, request(s.run)); w.Code != s.status {
			t.Fatalf("step %d (%s): status %d, want %d; body %s", i, s.run.IdempotencyKey, w.Code, s.status, w.Body)
		}
	}
}

func TestAsyncRunningCount(t *testing.T) {
	logs := newLogSink()
	h := jobs.NewHandler(jobs.Options{Async: true, Logger: logs.logger()})
	gates := map[string]*gate{"a": newGate(), "b": newGate(), "c": newGate()}
	for name, g := range gates {
		h.Register(name, g.Func)
	}
	n := 0
	for _, name := range []string{"a", "b", "c"} {
		check(t, serve(h, request(newRun(name, 0, 1))), 202, "")
		recv(t, gates[name].started)
		n++
		if got := h.Running(); got != n {
			t.Fatalf("Running() = %d, want %d", got, n)
		}
	}
	for _, name := range []string{"b", "a", "c"} {
		check(t, serve(h, request(newRun(name, 1, 1))), 409, jobs.CodeAlreadyRunning)
		gates[name].release <- nil
		logs.waitFor(t, "run succeeded", name)
		n--
		if got := h.Running(); got != n {
			t.Fatalf("Running() = %d after %s finished, want %d", got, name, n)
		}
		// The name is free again.
		check(t, serve(h, request(newRun(name, 1, 1))), 202, "")
		recv(t, gates[name].started)
		gates[name].release <- errors.New("second run fails")
		logs.waitFor(t, "run failed", name)
		if got := h.Running(); got != n {
			t.Fatalf("Running() = %d after failed run of %s, want %d", got, name, n)
		}
	}
	waitIdle(t, h)
}

// logSink is a slog.Handler that forwards records to a channel, so tests
// can wait for an async run to finish without sleeping.
type logSink struct {
	attrs   []slog.Attr
	records chan slog.Record
}

func newLogSink() *logSink { return &logSink{records: make(chan slog.Record, 1024)} }

func (s *logSink) logger() *slog.Logger { return slog.New(s) }

func (s *logSink) Enabled(context.Context, slog.Level) bool { return true }

func (s *logSink) Handle(_ context.Context, r slog.Record) error {
	r = r.Clone()
	r.AddAttrs(s.attrs...)
	s.records <- r
	return nil
}

func (s *logSink) WithAttrs(as []slog.Attr) slog.Handler {
	return &logSink{attrs: append(slices.Clone(s.attrs), as...), records: s.records}
}

func (s *logSink) WithGroup(string) slog.Handler { return s }

// waitFor consumes records until one has message msg and attribute job.
func (s *logSink) waitFor(t *testing.T, msg, job string) slog.Record {
	t.Helper()
	for {
		r := recv(t, s.records)
		if r.Message != msg {
			continue
		}
		found := false
		r.Attrs(func(a slog.Attr) bool {
			found = a.Key == "job" && a.Value.String() == job
			return !found
		})
		if found {
			return r
		}
	}
}

func TestDrain(t *testing.T) {
	for _, async := range []bool{false, true} {
		t.Run("async="+strconv.FormatBool(async), func(t *testing.T) {
			logs := newLogSink()
			h := jobs.NewHandler(jobs.Options{Async: async, Logger: logs.logger()})
			g1, g2 := newGate(), newGate()
			h.Register("one", g1.Func)
			h.Register("two", g2.Func)

			var done []<-chan *httptest.ResponseRecorder
			for _, run := range []jobs.Run{newRun("one", 0, 1), newRun("two", 0, 1)} {
				if async {
					check(t, serve(h, request(run)), 202, "")
				} else {
					done = append(done, serveBg(h, request(run)))
				}
			}
			recv(t, g1.started)
			recv(t, g2.started)

			drain := func(want int) {
				t.Helper()
				w := serve(h, drainRequest())
				check(t, w, 200, "")
				var b map[string]int
				if err := json.Unmarshal(w.Body.Bytes(), &b); err != nil {
					t.Fatal(err)
				}
				if b["running"] != want || len(b) != 1 {
					t.Fatalf("drain body %s, want running %d", w.Body, want)
				}
			}
			drain(2)
			if !h.Draining() {
				t.Fatal("Draining() = false after /drain")
			}
			check(t, serve(h, request(newRun("one", 5, 1))), 503, jobs.CodeDraining)
			check(t, serve(h, request(newRun("nope", 5, 1))), 503, jobs.CodeDraining)

			g1.release <- nil
			for _, d := range done[:min(len(done), 1)] {
				check(t, recv(t, d), 200, "")
			}
			if async {
				logs.waitFor(t, "run succeeded", "one")
			}
			drain(1)

			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			if err := h.Wait(ctx); !errors.Is(err, context.Canceled) {
				t.Fatalf("Wait with a job running = %v, want context.Canceled", err)
			}

			g2.release <- nil
			for _, d := range done[min(len(done), 1):] {
				check(t, recv(t, d), 200, "")
			}
			waitIdle(t, h)
			drain(0)
			check(t, serve(h, request(newRun("one", 6, 1))), 503, jobs.CodeDraining)
		})
	}
}

func TestJobContext(t *testing.T) {
	tests := []struct {
		name  string
		async bool
		// cancelReq cancels the request context once the job has started.
		cancelReq bool
		wantErr   error
		status    int
	}{
		{name: "sync deadline", wantErr: context.DeadlineExceeded, status: 500},
		{name: "async deadline", async: true, wantErr: context.DeadlineExceeded, status: 202},
		{name: "sync request cancelled", cancelReq: true, wantErr: context.Canceled, status: 500},
		{name: "async request cancelled", async: true, cancelReq: true, wantErr: nil, status: 202},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := jobs.NewHandler(jobs.Options{Async: tc.async})
			type result struct {
				deadline time.Time
				hasDL    bool
				err      error
			}
			started := make(chan struct{})
			release := make(chan struct{})
			results := make(chan result, 1)
			h.Register("hello", func(ctx context.Context, run jobs.Run) error {
				dl, has := ctx.Deadline()
				if !has || !dl.Equal(run.Deadline) {
					results <- result{dl, has, errors.New("bad deadline")}
					return nil
				}
				close(started)
				if tc.cancelReq {
					// Wait for the test to cancel the request, then report
					// whether that reached the job.
					<-release
					results <- result{dl, has, ctx.Err()}
					return ctx.Err()
				}
				<-ctx.Done()
				results <- result{dl, has, ctx.Err()}
				return ctx.Err()
			})

			run := newRun("hello", 0, 1)
			if !tc.cancelReq {
				run.Deadline = time.Now().Add(100 * time.Millisecond).UTC()
			}
			reqCtx, cancelReq := context.WithCancel(context.Background())
			defer cancelReq()
			done := serveBg(h, request(run).WithContext(reqCtx))
			var w *httptest.ResponseRecorder
			if tc.async {
				w = recv(t, done)
			}
			select {
			case <-started:
			case r := <-results:
				t.Fatalf("job ctx deadline = %v (set %v), want %v", r.deadline, r.hasDL, run.Deadline)
			}
			if tc.cancelReq {
				// Cancellation reaches derived contexts before cancelReq
				// returns, so the job sees it (or not) once released.
				cancelReq()
				close(release)
			}
			r := recv(t, results)
			if !errors.Is(r.err, tc.wantErr) || (tc.wantErr == nil && r.err != nil) {
				t.Fatalf("job ctx err = %v, want %v", r.err, tc.wantErr)
			}
			if !tc.async {
				w = recv(t, done)
			}
			if tc.status != 0 {
				check(t, w, tc.status, "")
			}
			waitIdle(t, h)
		})
	}
}

func TestRegisterPanics(t *testing.T) {
	tests := []struct {
		name string
		job  string
		fn   jobs.Func
	}{
		{"empty name", "", ok},
		{"slash", "a/b", ok},
		{"nil func", "x", nil},
		{"duplicate", "dup", ok},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := jobs.NewHandler(jobs.Options{})
			h.Register("dup", ok)
			defer func() {
				if recover() == nil {
					t.Fatal("Register did not panic")
				}
			}()
			h.Register(tc.job, tc.fn)
		})
	}
}

// TestOverHTTP runs the handler behind a real server, as the sidecar sees it.
func TestOverHTTP(t *testing.T) {
	h := jobs.NewHandler(jobs.Options{})
	h.Register("hello", ok)
	srv := httptest.NewServer(h)
	defer srv.Close()

	run := newRun("hello", 0, 3)
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/jobs/hello", bytes.NewReader([]byte(bodyOf(run))))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = request(run).Header
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	resp, err = srv.Client().Post(srv.URL+"/drain", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var b map[string]int
	err = json.NewDecoder(resp.Body).Decode(&b)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || b["running"] != 0 {
		t.Fatalf("drain: status %d, body %v, err %v", resp.StatusCode, b, err)
	}
}
