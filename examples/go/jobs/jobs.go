package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Header names used by the leadercron sidecar. Each mirrors a field of the
// JSON body.
const (
	HeaderJob            = "Leadercron-Job"
	HeaderSlot           = "Leadercron-Slot"
	HeaderFencingToken   = "Leadercron-Fencing-Token"
	HeaderDeadline       = "Leadercron-Deadline"
	HeaderIdempotencyKey = "Idempotency-Key"
)

// Codes found in the "code" field of refusal bodies.
const (
	CodeBadRequest        = "bad_request"
	CodeUnknownJob        = "unknown_job"
	CodeDraining          = "draining"
	CodeStaleFencingToken = "stale_fencing_token"
	CodeDeadlinePassed    = "deadline_passed"
	CodeDuplicate         = "duplicate"
	CodeAlreadyRunning    = "already_running"
	CodeJobFailed         = "job_failed"
)

// DefaultRememberKeys is the number of completed idempotency keys a Handler
// remembers when Options.RememberKeys is 0.
const DefaultRememberKeys = 1024

// maxBodyBytes bounds the request body; the sidecar's body is far smaller.
const maxBodyBytes = 1 << 20

// Run describes one triggered run of a job.
type Run struct {
	Job            string    // job name, as registered
	Slot           time.Time // the scheduled instant, UTC
	FencingToken   uint64    // the leader's fencing token
	Deadline       time.Time // the sidecar stops waiting then; also the ctx deadline
	IdempotencyKey string    // "<job>@<slot>" unless the sidecar sent another
	Attempt        int       // 1 for the first try, >1 for retries
}

// Func is the code of a job. It should return promptly once ctx is done.
// A nil error means success; the run's idempotency key is then remembered.
type Func func(ctx context.Context, run Run) error

// Options configure a Handler. The zero value is usable.
type Options struct {
	// Logger receives one line per accepted, refused and finished run.
	// Nil discards logs.
	Logger *slog.Logger
	// Async runs jobs in the background and answers 202 as soon as a run
	// is accepted, instead of 200/500 once it has finished.
	Async bool
	// RememberKeys is how many completed idempotency keys are remembered to
	// refuse duplicates. 0 means DefaultRememberKeys; a negative value
	// remembers none (keys of running jobs are always tracked).
	RememberKeys int
}

// Handler serves POST /jobs/{name} and POST /drain. Create it with
// NewHandler; it is safe for concurrent use.
type Handler struct {
	log   *slog.Logger
	async bool
	mux   *http.ServeMux

	mu          sync.Mutex
	funcs       map[string]Func
	active      map[string]struct{} // job names currently running
	runningKeys map[string]struct{} // idempotency keys currently running
	doneKeys    map[string]struct{} // idempotency keys that succeeded
	doneOrder   []string            // ring buffer over doneKeys, oldest at doneNext
	doneNext    int
	doneCap     int
	maxToken    uint64
	draining    bool
	running     int
	idle        chan struct{} // closed when running drops to 0; nil while 0
}

// NewHandler returns a Handler with no jobs registered.
func NewHandler(opts Options) *Handler {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	keep := opts.RememberKeys
	if keep == 0 {
		keep = DefaultRememberKeys
	}
	if keep < 0 {
		keep = 0
	}
	h := &Handler{
		log:         logger,
		async:       opts.Async,
		mux:         http.NewServeMux(),
		funcs:       make(map[string]Func),
		active:      make(map[string]struct{}),
		runningKeys: make(map[string]struct{}),
		doneKeys:    make(map[string]struct{}),
		doneCap:     keep,
	}
	h.mux.HandleFunc("POST /jobs/{name}", h.serveJob)
	h.mux.HandleFunc("POST /drain", h.serveDrain)
	return h
}

// Register makes fn the job called name. It panics if name is empty or
// contains a slash, if fn is nil, or if name is already registered.
// Register may be called while the Handler is serving.
func (h *Handler) Register(name string, fn Func) {
	if name == "" || strings.Contains(name, "/") {
		panic(fmt.Sprintf("jobs: invalid job name %q", name))
	}
	if fn == nil {
		panic("jobs: nil Func for job " + strconv.Quote(name))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, dup := h.funcs[name]; dup {
		panic("jobs: job " + strconv.Quote(name) + " registered twice")
	}
	h.funcs[name] = fn
}

// ServeHTTP routes POST /jobs/{name} and POST /drain. Other paths get 404,
// other methods 405.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mux.ServeHTTP(w, r)
}

// Running reports how many runs are in flight, background runs included.
func (h *Handler) Running() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.running
}

// Drain stops accepting runs: from now on POST /jobs/{name} answers 503.
// Runs already accepted continue; use Running or Wait to follow them.
// Drain is idempotent and cannot be undone.
func (h *Handler) Drain() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.draining {
		h.draining = true
		h.log.Info("draining: no new runs accepted", "running", h.running)
	}
}

// Draining reports whether Drain has been called.
func (h *Handler) Draining() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.draining
}

// Wait blocks until no run is in flight or ctx is done, and returns
// ctx.Err() in the latter case. Call it after Drain: otherwise new runs may
// start as soon as it returns.
func (h *Handler) Wait(ctx context.Context) error {
	h.mu.Lock()
	idle := h.idle
	h.mu.Unlock()
	if idle == nil {
		return nil
	}
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (h *Handler) serveDrain(w http.ResponseWriter, r *http.Request) {
	h.Drain()
	writeJSON(w, http.StatusOK, map[string]int{"running": h.Running()})
}

func (h *Handler) serveJob(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")

	h.mu.Lock()
	draining := h.draining
	fn := h.funcs[name]
	h.mu.Unlock()
	if draining {
		h.refuse(w, http.StatusServiceUnavailable, CodeDraining, name, "draining: not accepting new runs")
		return
	}
	if fn == nil {
		h.refuse(w, http.StatusNotFound, CodeUnknownJob, name, "unknown job "+strconv.Quote(name))
		return
	}

	run, err := parseRun(w, r, name)
	if err != nil {
		h.refuse(w, http.StatusBadRequest, CodeBadRequest, name, err.Error())
		return
	}
	log := h.log.With(
		"job", run.Job,
		"slot", run.Slot.Format(time.RFC3339Nano),
		"fencing_token", run.FencingToken,
		"attempt", run.Attempt,
		"idempotency_key", run.IdempotencyKey,
	)

	status, code, msg := h.admit(run)
	if status != 0 {
		log.Warn("run refused", "status", status, "code", code, "reason", msg)
		writeJSON(w, status, errorBody{Error: msg, Code: code})
		return
	}

	if h.async {
		ctx, cancel := context.WithDeadline(context.WithoutCancel(r.Context()), run.Deadline)
		log.Info("run accepted (async)")
		go func() {
			defer cancel()
			start := time.Now()
			err := h.call(ctx, fn, run, log)
			h.finish(run, err)
			logDone(log, err, time.Since(start))
		}()
		writeJSON(w, http.StatusAccepted, okBody{Job: run.Job, Slot: run.Slot.Format(time.RFC3339Nano), Status: "accepted"})
		return
	}

	ctx, cancel := context.WithDeadline(r.Context(), run.Deadline)
	defer cancel()
	log.Info("run started")
	start := time.Now()
	err = h.call(ctx, fn, run, log)
	h.finish(run, err)
	elapsed := time.Since(start)
	logDone(log, err, elapsed)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, errorBody{Error: err.Error(), Code: CodeJobFailed})
		return
	}
	writeJSON(w, http.StatusOK, okBody{
		Job:        run.Job,
		Slot:       run.Slot.Format(time.RFC3339Nano),
		Status:     "succeeded",
		DurationMS: elapsed.Milliseconds(),
	})
}

// admit applies the fence, deadline and concurrency rules and, if the run
// may start, records it as in flight. It returns status 0 on admission.
func (h *Handler) admit(run Run) (status int, code, msg string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.draining { // Drain may have been called while the body was read.
		return http.StatusServiceUnavailable, CodeDraining, "draining: not accepting new runs"
	}
	if run.FencingToken < h.maxToken {
		return http.StatusConflict, CodeStaleFencingToken, fmt.Sprintf(
			"stale leader: fencing token %d is lower than %d, already seen from a newer leader",
			run.FencingToken, h.maxToken)
	}
	h.maxToken = run.FencingToken
	if now := time.Now(); !now.Before(run.Deadline) {
		return http.StatusGatewayTimeout, CodeDeadlinePassed, fmt.Sprintf(
			"deadline %s passed before the run could start; not run",
			run.Deadline.Format(time.RFC3339Nano))
	}
	if _, ok := h.runningKeys[run.IdempotencyKey]; ok {
		return http.StatusConflict, CodeDuplicate, "duplicate: idempotency key " +
			strconv.Quote(run.IdempotencyKey) + " is running"
	}
	if _, ok := h.doneKeys[run.IdempotencyKey]; ok {
		return http.StatusConflict, CodeDuplicate, "duplicate: idempotency key " +
			strconv.Quote(run.IdempotencyKey) + " already ran successfully"
	}
	if _, ok := h.active[run.Job]; ok {
		return http.StatusConflict, CodeAlreadyRunning, "job " + strconv.Quote(run.Job) + " is already running"
	}
	h.active[run.Job] = struct{}{}
	h.runningKeys[run.IdempotencyKey] = struct{}{}
	h.running++
	if h.running == 1 {
		h.idle = make(chan struct{})
	}
	return 0, "", ""
}

// finish releases what admit recorded and remembers the key on success.
func (h *Handler) finish(run Run, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.active, run.Job)
	delete(h.runningKeys, run.IdempotencyKey)
	if err == nil {
		h.remember(run.IdempotencyKey)
	}
	h.running--
	if h.running == 0 {
		close(h.idle)
		h.idle = nil
	}
}

// remember adds key to the bounded FIFO of completed keys. h.mu is held.
func (h *Handler) remember(key string) {
	if h.doneCap == 0 {
		return
	}
	if _, ok := h.doneKeys[key]; ok {
		return
	}
	if len(h.doneOrder) < h.doneCap {
		h.doneOrder = append(h.doneOrder, key)
	} else {
		delete(h.doneKeys, h.doneOrder[h.doneNext])
		h.doneOrder[h.doneNext] = key
		h.doneNext = (h.doneNext + 1) % h.doneCap
	}
	h.doneKeys[key] = struct{}{}
}

// call runs fn, turning a panic into an error.
func (h *Handler) call(ctx context.Context, fn Func, run Run, log *slog.Logger) (err error) {
	defer func() {
		if p := recover(); p != nil {
			log.Error("job panicked", "panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("job %q panicked: %v", run.Job, p)
		}
	}()
	return fn(ctx, run)
}

func logDone(log *slog.Logger, err error, d time.Duration) {
	if err != nil {
		log.Error("run failed", "duration", d, "err", err)
		return
	}
	log.Info("run succeeded", "duration", d)
}

func (h *Handler) refuse(w http.ResponseWriter, status int, code, job, msg string) {
	h.log.Warn("run refused", "job", job, "status", status, "code", code, "reason", msg)
	writeJSON(w, status, errorBody{Error: msg, Code: code})
}

type errorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

type okBody struct {
	Job        string `json:"job"`
	Slot       string `json:"slot"`
	Status     string `json:"status"`
	DurationMS int64  `json:"duration_ms,omitempty"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// requestBody is the wire form of a trigger. Pointers tell "absent" from
// zero values.
type requestBody struct {
	Job            *string `json:"job"`
	Slot           *string `json:"slot"`
	FencingToken   *uint64 `json:"fencing_token"`
	Deadline       *string `json:"deadline"`
	IdempotencyKey *string `json:"idempotency_key"`
	Attempt        *int    `json:"attempt"`
}

// parseRun decodes and cross-checks the body and headers of a trigger.
func parseRun(w http.ResponseWriter, r *http.Request, name string) (Run, error) {
	var b requestBody
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err := dec.Decode(&b); err != nil {
		if errors.Is(err, io.EOF) {
			return Run{}, errors.New("missing JSON body")
		}
		return Run{}, fmt.Errorf("invalid JSON body: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Run{}, errors.New("invalid JSON body: data after the object")
	}

	run := Run{Job: name}

	job, err := pick("job", b.Job, r.Header, HeaderJob, func(s string) (string, error) { return s, nil })
	if err != nil {
		return Run{}, err
	}
	if job != nil && *job != name {
		return Run{}, fmt.Errorf("job %q does not match the path's job %q", *job, name)
	}

	slot, err := pick("slot", b.Slot, r.Header, HeaderSlot, parseTime)
	if err != nil {
		return Run{}, err
	}
	if slot == nil {
		return Run{}, errors.New("missing slot")
	}
	run.Slot = slot.time()

	var bodyToken *string
	if b.FencingToken != nil {
		s := strconv.FormatUint(*b.FencingToken, 10)
		bodyToken = &s
	}
	token, err := pick("fencing_token", bodyToken, r.Header, HeaderFencingToken, func(s string) (uint64, error) {
		return strconv.ParseUint(s, 10, 64)
	})
	if err != nil {
		return Run{}, err
	}
	if token == nil {
		return Run{}, errors.New("missing fencing_token")
	}
	run.FencingToken = *token

	deadline, err := pick("deadline", b.Deadline, r.Header, HeaderDeadline, parseTime)
	if err != nil {
		return Run{}, err
	}
	if deadline == nil {
		return Run{}, errors.New("missing deadline")
	}
	run.Deadline = deadline.time()

	key, err := pick("idempotency_key", b.IdempotencyKey, r.Header, HeaderIdempotencyKey, func(s string) (string, error) { return s, nil })
	if err != nil {
		return Run{}, err
	}
	if key != nil && *key != "" {
		run.IdempotencyKey = *key
	} else {
		run.IdempotencyKey = name + "@" + run.Slot.Format(time.RFC3339Nano)
	}

	run.Attempt = 1
	if b.Attempt != nil {
		if *b.Attempt < 1 {
			return Run{}, fmt.Errorf("attempt %d is not positive", *b.Attempt)
		}
		run.Attempt = *b.Attempt
	}
	return run, nil
}

// pick parses a field from the body and/or its header. Both, when present,
// must parse and be equal; the body wins. It returns nil if neither is set.
func pick[T comparable](field string, body *string, hdr http.Header, name string, parse func(string) (T, error)) (*T, error) {
	var fromBody, fromHeader *T
	if body != nil {
		v, err := parse(*body)
		if err != nil {
			return nil, fmt.Errorf("bad %s %q in body: %v", field, *body, err)
		}
		fromBody = &v
	}
	if vals := hdr.Values(name); len(vals) > 0 {
		if len(vals) > 1 {
			return nil, fmt.Errorf("header %s given %d times", name, len(vals))
		}
		v, err := parse(vals[0])
		if err != nil {
			return nil, fmt.Errorf("bad header %s %q: %v", name, vals[0], err)
		}
		fromHeader = &v
	}
	switch {
	case fromBody != nil && fromHeader != nil:
		if *fromBody != *fromHeader {
			return nil, fmt.Errorf("header %s %q disagrees with body %s", name, hdr.Get(name), field)
		}
		return fromBody, nil
	case fromBody != nil:
		return fromBody, nil
	default:
		return fromHeader, nil
	}
}

// instant is a point in time comparable with ==, so that equal instants
// written with different offsets or precision agree.
type instant struct {
	sec  int64
	nsec int
}

func (i instant) time() time.Time { return time.Unix(i.sec, int64(i.nsec)).UTC() }

func parseTime(s string) (instant, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return instant{}, errors.New("not an RFC 3339 time")
	}
	return instant{sec: t.Unix(), nsec: t.Nanosecond()}, nil
}
