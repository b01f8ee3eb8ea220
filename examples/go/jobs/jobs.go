package jobs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Header names used by the leadercron sidecar. The first six mirror a
// field of the JSON body.
const (
	HeaderJob            = "Leadercron-Job"
	HeaderSlot           = "Leadercron-Slot"
	HeaderFencingToken   = "Leadercron-Fencing-Token"
	HeaderDeadline       = "Leadercron-Deadline"
	HeaderIdempotencyKey = "Idempotency-Key"
	HeaderAttempt        = "Leadercron-Attempt"
	HeaderRunNow         = "Leadercron-Run-Now"   // on a run-now only; signed, not interpreted
	HeaderID             = "Leadercron-Id"        // the sidecar's id; signed, not interpreted
	HeaderSignature      = "Leadercron-Signature" // t=<unix seconds>,kid=<key id>,v1=<HMAC>
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
	CodeBadSignature      = "bad_signature"   // 401
	CodeStaleSignature    = "stale_signature" // 401
	CodeNotLoopback       = "not_loopback"    // 403
	CodeBodyTooLarge      = "body_too_large"  // 413
)

// DefaultRememberKeys is the number of completed idempotency keys a Handler
// remembers when Options.RememberKeys is 0.
const DefaultRememberKeys = 1024

// MaxBodyBytes bounds the body of POST /jobs/{name} and POST /drain; a
// larger one is refused with 413. The sidecar's bodies are far smaller.
const MaxBodyBytes = 64 << 10

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
	// Secrets are the secrets the sidecar may sign triggers with
	// (its LEADERCRON_TRIGGER_SECRET): usually one, two during a rotation
	// (the new and the old). Each must be at least MinSecretLen bytes.
	// With Secrets, every request must be signed with one of them, from
	// any peer. Without, requests are not authenticated and only loopback
	// peers are served. SecretsFromEnv reads them from the environment.
	Secrets [][]byte
	// Now is the clock against which the time of a signature is checked.
	// Nil means time.Now. It is meant for tests; run deadlines always use
	// the real clock.
	Now func() time.Time
}

// Handler serves POST /jobs/{name} and POST /drain. Create it with New
// (or NewHandler); it is safe for concurrent use.
type Handler struct {
	log   *slog.Logger
	async bool
	mux   *http.ServeMux
	keys  []key            // nil: loopback peers only, unauthenticated
	now   func() time.Time // for signature freshness

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

// New returns a Handler with no jobs registered, or an error if opts is
// invalid: a secret shorter than MinSecretLen. The error does not contain
// the secret.
//
// It logs once how triggers are authenticated: with the key ids of the
// Secrets, or, without Secrets, that triggers are unauthenticated and
// limited to loopback peers.
func New(opts Options) (*Handler, error) {
	keys, err := newKeys(opts.Secrets)
	if err != nil {
		return nil, err
	}
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
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	h := &Handler{
		log:         logger,
		async:       opts.Async,
		mux:         http.NewServeMux(),
		keys:        keys,
		now:         now,
		funcs:       make(map[string]Func),
		active:      make(map[string]struct{}),
		runningKeys: make(map[string]struct{}),
		doneKeys:    make(map[string]struct{}),
		doneCap:     keep,
	}
	h.mux.HandleFunc("POST /jobs/{name}", h.serveJob)
	h.mux.HandleFunc("POST /drain", h.serveDrain)
	if len(keys) == 0 {
		logger.Warn("triggers are unauthenticated: only requests from loopback peers are served (configure a secret to accept signed triggers from anywhere)")
	} else {
		ids := make([]string, len(keys))
		for i, k := range keys {
			ids[i] = k.id
		}
		logger.Info("triggers must be signed", "key_ids", ids)
	}
	return h, nil
}

// NewHandler is like New but panics if opts is invalid. Use New when the
// Secrets come from configuration.
func NewHandler(opts Options) *Handler {
	h, err := New(opts)
	if err != nil {
		panic(err)
	}
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
// other methods 405. Both endpoints authenticate the request (see the
// package documentation) before anything else.
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

// authorize checks that r may be served, before anything else is done with
// it, and returns its body. It changes no state. If it returns false, it
// has answered r.
func (h *Handler) authorize(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	deny := func(status int, code, msg string) ([]byte, bool) {
		h.log.Warn("request refused", "path", r.URL.Path, "peer", r.RemoteAddr, "status", status, "code", code, "reason", msg)
		writeJSON(w, status, errorBody{Error: msg, Code: code})
		return nil, false
	}
	if len(h.keys) == 0 && !loopbackPeer(r.RemoteAddr) {
		return deny(http.StatusForbidden, CodeNotLoopback,
			"no secret is configured: triggers are only accepted from loopback peers")
	}
	var body []byte
	if r.Body != nil {
		var err error
		body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
		if err != nil {
			if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
				return deny(http.StatusRequestEntityTooLarge, CodeBodyTooLarge,
					fmt.Sprintf("body larger than %d bytes", MaxBodyBytes))
			}
			return deny(http.StatusBadRequest, CodeBadRequest, "reading the body: "+err.Error())
		}
	}
	if len(h.keys) > 0 {
		if status, code, msg := h.verify(r, body); status != 0 {
			return deny(status, code, msg)
		}
	}
	return body, true
}

func (h *Handler) serveDrain(w http.ResponseWriter, r *http.Request) {
	if _, ok := h.authorize(w, r); !ok {
		return
	}
	h.Drain()
	writeJSON(w, http.StatusOK, map[string]int{"running": h.Running()})
}

func (h *Handler) serveJob(w http.ResponseWriter, r *http.Request) {
	body, ok := h.authorize(w, r)
	if !ok {
		return
	}
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

	run, err := parseRun(body, r.Header, name)
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
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// bodyFields are the fields of the JSON body that are read; others are
// ignored.
var bodyFields = [...]string{"job", "slot", "fencing_token", "deadline", "idempotency_key", "attempt"}

// decodeBody decodes a JSON object and returns the raw values of the
// fields in bodyFields. Names are matched exactly; a name given twice, or
// anything after the object, makes the body invalid. A null value counts
// as absent.
func decodeBody(body []byte) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	tok, err := dec.Token()
	if errors.Is(err, io.EOF) {
		return nil, errors.New("missing JSON body")
	}
	if err != nil {
		return nil, fmt.Errorf("invalid JSON body: %v", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("invalid JSON body: not an object")
	}
	fields := make(map[string]json.RawMessage)
	seen := make(map[string]struct{})
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("invalid JSON body: %v", err)
		}
		name, ok := tok.(string)
		if !ok {
			return nil, errors.New("invalid JSON body: bad field name")
		}
		if _, dup := seen[name]; dup {
			return nil, fmt.Errorf("invalid JSON body: field %q given twice", name)
		}
		seen[name] = struct{}{}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("invalid JSON body: %v", err)
		}
		if slices.Contains(bodyFields[:], name) && string(v) != "null" {
			fields[name] = v
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, fmt.Errorf("invalid JSON body: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("invalid JSON body: data after the object")
	}
	return fields, nil
}

// bodyField decodes the field name of fields into a *T, as its string
// form for pick; nil if absent.
func bodyField[T any](fields map[string]json.RawMessage, name string, format func(T) string) (*string, error) {
	raw, ok := fields[name]
	if !ok {
		return nil, nil
	}
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("bad %s %s in body: %v", name, raw, err)
	}
	s := format(v)
	return &s, nil
}

func identity(s string) (string, error) { return s, nil }

// parseRun decodes and cross-checks the body and headers of a trigger for
// job name.
func parseRun(body []byte, hdr http.Header, name string) (Run, error) {
	fields, err := decodeBody(body)
	if err != nil {
		return Run{}, err
	}
	b, err := readBodyFields(fields)
	if err != nil {
		return Run{}, err
	}
	bodyJob, bodySlot, bodyToken, bodyDeadline, bodyKey, bodyAttempt := b.job, b.slot, b.token, b.deadline, b.key, b.attempt

	run := Run{Job: name}

	job, err := pick("job", bodyJob, hdr, HeaderJob, identity)
	if err != nil {
		return Run{}, err
	}
	if job != nil && *job != name {
		return Run{}, fmt.Errorf("job %q does not match the path's job %q", *job, name)
	}

	slot, err := pick("slot", bodySlot, hdr, HeaderSlot, parseTime)
	if err != nil {
		return Run{}, err
	}
	if slot == nil {
		return Run{}, errors.New("missing slot")
	}
	run.Slot = slot.time()

	token, err := pick("fencing_token", bodyToken, hdr, HeaderFencingToken, func(s string) (uint64, error) {
		return strconv.ParseUint(s, 10, 64)
	})
	if err != nil {
		return Run{}, err
	}
	if token == nil {
		return Run{}, errors.New("missing fencing_token")
	}
	run.FencingToken = *token

	deadline, err := pick("deadline", bodyDeadline, hdr, HeaderDeadline, parseTime)
	if err != nil {
		return Run{}, err
	}
	if deadline == nil {
		return Run{}, errors.New("missing deadline")
	}
	run.Deadline = deadline.time()

	key, err := pick("idempotency_key", bodyKey, hdr, HeaderIdempotencyKey, identity)
	if err != nil {
		return Run{}, err
	}
	if key != nil && *key != "" {
		run.IdempotencyKey = *key
	} else {
		run.IdempotencyKey = name + "@" + run.Slot.Format(time.RFC3339Nano)
	}

	attempt, err := pick("attempt", bodyAttempt, hdr, HeaderAttempt, parseAttempt)
	if err != nil {
		return Run{}, err
	}
	run.Attempt = 1
	if attempt != nil {
		run.Attempt = *attempt
	}
	return run, nil
}

// repeated are the body's fields that a header may repeat, as text.
type repeated struct {
	job, slot, token, deadline, key, attempt *string
}

// readBodyFields takes each field from the decoded body; a field of the
// wrong JSON type is an error.
func readBodyFields(fields map[string]json.RawMessage) (repeated, error) {
	var b repeated
	str := func(s string) string { return s }
	var err error
	if b.job, err = bodyField(fields, "job", str); err != nil {
		return b, err
	}
	if b.slot, err = bodyField(fields, "slot", str); err != nil {
		return b, err
	}
	if b.token, err = bodyField(fields, "fencing_token", func(v uint64) string { return strconv.FormatUint(v, 10) }); err != nil {
		return b, err
	}
	if b.deadline, err = bodyField(fields, "deadline", str); err != nil {
		return b, err
	}
	if b.key, err = bodyField(fields, "idempotency_key", str); err != nil {
		return b, err
	}
	b.attempt, err = bodyField(fields, "attempt", func(v int64) string { return strconv.FormatInt(v, 10) })
	return b, err
}

// parseAttempt parses a positive decimal attempt number.
func parseAttempt(s string) (int, error) {
	n, err := strconv.ParseUint(s, 10, 31)
	if err != nil {
		return 0, errors.New("not a decimal number")
	}
	if n < 1 {
		return 0, errors.New("not positive")
	}
	return int(n), nil
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
