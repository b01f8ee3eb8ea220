package testkit

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"
)

// App is a co-located app that records every request in a History. It
// answers POST /jobs/{name} (204 unless scripted otherwise), POST /drain
// ({"running": n}) and GET /healthz (200, or 503 once SetHealthy(false)).
//
// A trigger whose headers and body disagree, or that lacks a part of the
// contract (slot, fencing token, deadline, the Idempotency-Key that
// matches its job and slot or run-now request), is answered 400 and
// recorded as a "bad" event, never as a trigger. Every other trigger is
// recorded as a "trigger" event before the app answers it.
//
// Its knobs can be turned while it serves: an answer status, a delay
// before the answer, per-job scripts (status and run length of the n-th
// trigger), long runs that go on in the background after a 202, job
// groups whose runs must not overlap (Violations), a drain that reports a
// run for a while or forever, triggers left unanswered, and the app taken
// down and brought up again on the same address.
type App struct {
	Name string
	URL  string // http://host:port

	h            *History
	addr         string
	writeTimeout time.Duration
	stampArrival bool
	holder       func() string

	mu        sync.Mutex
	srv       *http.Server
	delay     time.Duration // how long an answer waits (cut short when the sender hangs up)
	status    int           // the answer; 0 means 204
	longJob   string        // runs of this job go on in the background for longFor
	longFor   time.Duration
	stuck     bool // /drain reports one run forever
	busyPolls int  // /drain reports one run this many more times (-1: forever)
	busyUntil time.Time
	healthy   bool
	noAnswer  func() NoAnswer
	script    map[string]func(n int) (int, time.Duration)
	groups    map[string]string
	count     map[string]int
	running   map[string]int // runs going on, by job: scripted runs and long runs
	overlaps  []string
}

// NoAnswer is how the app leaves a trigger it took unanswered.
type NoAnswer int

const (
	NoAnswerNone  NoAnswer = iota
	NoAnswerReset          // hijack the connection and reset it (RST, no answer)
	NoAnswerLate           // answer only after the server's WriteTimeout: the answer is lost
)

func (n NoAnswer) String() string {
	switch n {
	case NoAnswerReset:
		return "no answer: connection reset"
	case NoAnswerLate:
		return "no answer: answered after the write timeout"
	}
	return ""
}

// LateBy is how long after its WriteTimeout the app answers a trigger it
// leaves unanswered with NoAnswerLate: enough for the deadline to have
// passed even if the server set it late by scheduling lag.
const LateBy = 200 * time.Millisecond

// AppOption configures an App before it serves.
type AppOption func(*App)

// WithWriteTimeout sets the app server's WriteTimeout: an answer written
// after it is lost, and the connection closed.
func WithWriteTimeout(d time.Duration) AppOption { return func(a *App) { a.writeTimeout = d } }

// HolderAtDrain makes every "drain" event carry, in Held, what holder
// returns when the app receives the /drain: the lock holder's session, say.
func HolderAtDrain(holder func() string) AppOption { return func(a *App) { a.holder = holder } }

// BusyPolls makes /drain report one run for the first n polls (-1:
// forever), then none.
func BusyPolls(n int) AppOption { return func(a *App) { a.busyPolls = n } }

// StampArrival stamps a trigger event with the instant the request
// reached the handler, before it is read, rather than when it is
// recorded: for measuring slot delay.
func StampArrival() AppOption { return func(a *App) { a.stampArrival = true } }

// NewApp starts an app on a free loopback port. The caller must call Down.
func NewApp(name string, h *History, opts ...AppOption) (*App, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("app %s: listen: %w", name, err)
	}
	a := &App{Name: name, h: h, addr: ln.Addr().String(), healthy: true,
		script: map[string]func(int) (int, time.Duration){}, groups: map[string]string{},
		count: map[string]int{}, running: map[string]int{}}
	a.URL = "http://" + a.addr
	for _, o := range opts {
		o(a)
	}
	a.serve(ln)
	return a, nil
}

// StartApp is NewApp for a test: it fails the test on error and takes the
// app down when the test ends.
func StartApp(t testing.TB, name string, h *History, opts ...AppOption) *App {
	t.Helper()
	a, err := NewApp(name, h, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Down)
	return a
}

func (a *App) serve(ln net.Listener) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /jobs/{name}", a.job)
	mux.HandleFunc("POST /drain", a.drain)
	mux.HandleFunc("GET /healthz", a.health)
	// Keep-alive stays on (the default): the sidecar's transport reuses
	// connections, as it does against a real app.
	srv := &http.Server{Handler: mux, WriteTimeout: a.writeTimeout}
	a.mu.Lock()
	a.srv = srv
	a.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

// triggerBody is the part of a trigger's JSON body the app reads.
type triggerBody struct {
	Job          string `json:"job"`
	Slot         string `json:"slot"`
	FencingToken uint64 `json:"fencing_token"`
	Attempt      int    `json:"attempt"`
}

// checkTrigger says what is wrong with a trigger, or "".
func checkTrigger(r *http.Request, b triggerBody) (slot time.Time, token uint64, problem string) {
	slot, err := time.Parse(time.RFC3339, b.Slot)
	if err != nil {
		return slot, 0, "slot: " + err.Error()
	}
	token, err = strconv.ParseUint(r.Header.Get("Leadercron-Fencing-Token"), 10, 64)
	if err != nil {
		return slot, 0, "Leadercron-Fencing-Token: " + err.Error()
	}
	key := b.Job + "@" + b.Slot
	if id := r.Header.Get("Leadercron-Run-Now"); id != "" {
		key = b.Job + "@run-now/" + id
	}
	switch {
	case b.Job != r.PathValue("name"):
		return slot, token, fmt.Sprintf("body job %q on path %s", b.Job, r.URL.Path)
	case b.Slot != r.Header.Get("Leadercron-Slot"):
		return slot, token, fmt.Sprintf("body slot %q, header %q", b.Slot, r.Header.Get("Leadercron-Slot"))
	case b.FencingToken != token:
		return slot, token, fmt.Sprintf("body fencing token %d, header %d", b.FencingToken, token)
	case r.Header.Get("Idempotency-Key") != key:
		return slot, token, fmt.Sprintf("Idempotency-Key %q, want %q", r.Header.Get("Idempotency-Key"), key)
	case r.Header.Get("Leadercron-Deadline") == "":
		return slot, token, "no Leadercron-Deadline"
	}
	return slot, token, ""
}

func (a *App) job(w http.ResponseWriter, r *http.Request) {
	arrived := time.Now()
	var body triggerBody
	err := json.NewDecoder(r.Body).Decode(&body)
	_, _ = io.Copy(io.Discard, r.Body) // the trigger is read in full
	problem := ""
	if err != nil {
		problem = "body: " + err.Error()
	}
	slot, token, p := checkTrigger(r, body)
	if problem == "" {
		problem = p
	}
	if problem != "" {
		a.h.Add(Event{Kind: "bad", App: a.Name, Sidecar: r.Header.Get("Leadercron-Id"), Job: r.PathValue("name"), Note: problem})
		http.Error(w, "bad trigger: "+problem, http.StatusBadRequest)
		return
	}
	job := body.Job

	a.mu.Lock()
	a.count[job]++
	n, script := a.count[job], a.script[job]
	delay, status, longJob, longFor := a.delay, a.status, a.longJob, a.longFor
	a.mu.Unlock()
	if status == 0 {
		status = http.StatusNoContent
	}
	var hold time.Duration
	if script != nil {
		status, hold = script(n)
	}
	long := job == longJob && status < 300
	if long {
		status = http.StatusAccepted
	}
	a.mu.Lock()
	if script != nil || long {
		a.startRun(job)
	}
	bad := NoAnswerNone
	if a.noAnswer != nil {
		bad = a.noAnswer()
	}
	a.mu.Unlock()

	e := Event{Kind: "trigger", App: a.Name, Sidecar: r.Header.Get("Leadercron-Id"), Job: job, Slot: slot, Token: token, Status: status,
		Attempt: body.Attempt, Key: r.Header.Get("Idempotency-Key"), RunNow: r.Header.Get("Leadercron-Run-Now"),
		Unanswered: bad != NoAnswerNone, Note: bad.String()}
	if a.stampArrival {
		e.At = arrived
	}
	a.h.Add(e)
	if long {
		time.AfterFunc(longFor, func() {
			a.endRun(job)
			a.h.Add(Event{Kind: "jobdone", App: a.Name, Job: job, Slot: slot, Token: token})
		})
	}
	a.answer(w, r, job, answer{bad: bad, delay: delay, scripted: script != nil, hold: hold, status: status})
}

// answer is how the app answers one trigger.
type answer struct {
	bad         NoAnswer
	delay, hold time.Duration
	scripted    bool
	status      int
}

// answer answers a trigger as planned: a reset or a late answer (no
// answer the sidecar can read), else the status after the app's delay
// and, for a scripted run, its hold.
func (a *App) answer(w http.ResponseWriter, r *http.Request, job string, p answer) {
	switch p.bad {
	case NoAnswerReset:
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(fmt.Sprintf("app %s: hijack: %v", a.Name, err))
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // Close sends RST
		}
		_ = conn.Close()
		return
	case NoAnswerLate:
		// The server set the write deadline when it read the request:
		// wait past it, then answer; the answer is lost and the
		// connection closed.
		time.Sleep(a.writeTimeout + LateBy)
	}
	if p.delay > 0 {
		t := time.NewTimer(p.delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
		}
		t.Stop()
	}
	if p.scripted {
		time.Sleep(p.hold) // the run itself: the app's work, not synchronisation
		a.endRun(job)
	}
	w.WriteHeader(p.status)
}

// startRun counts a run of job as going on, noting an overlap with
// another run of the job or of its group. a.mu is held.
func (a *App) startRun(job string) {
	if a.running[job] > 0 {
		a.overlaps = append(a.overlaps, "job "+job)
	}
	if g := a.groups[job]; g != "" {
		for other, og := range a.groups {
			if other != job && og == g && a.running[other] > 0 {
				a.overlaps = append(a.overlaps, "group "+g+": "+job+" with "+other)
			}
		}
	}
	a.running[job]++
}

func (a *App) endRun(job string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.running[job]--
}

func (a *App) drain(w http.ResponseWriter, r *http.Request) {
	held := ""
	if a.holder != nil {
		held = a.holder()
	}
	a.mu.Lock()
	running := 0
	for _, n := range a.running {
		running += n
	}
	if time.Now().Before(a.busyUntil) {
		running++
	}
	if a.stuck {
		running = max(running, 1)
	}
	if a.busyPolls != 0 {
		running = max(running, 1)
		if a.busyPolls > 0 {
			a.busyPolls--
		}
	}
	a.mu.Unlock()
	a.h.Add(Event{Kind: "drain", App: a.Name, Sidecar: r.Header.Get("Leadercron-Id"), Held: held, Note: "running=" + strconv.Itoa(running)})
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]int{"running": running})
}

func (a *App) health(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	ok := a.healthy
	a.mu.Unlock()
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
}

func (a *App) with(f func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f()
}

// SetStatus sets the answer to every trigger that has no script (0: 204).
func (a *App) SetStatus(status int) { a.with(func() { a.status = status }) }

// SetDelay makes every answer wait d, or until the sender hangs up.
func (a *App) SetDelay(d time.Duration) { a.with(func() { a.delay = d }) }

// SetLongJob makes each run of job answer 202 at once and go on in the
// background for d, counted by /drain; a "jobdone" event marks its end.
func (a *App) SetLongJob(job string, d time.Duration) {
	a.with(func() { a.longJob, a.longFor = job, d })
}

// SetStuck makes /drain report one run, forever, while on.
func (a *App) SetStuck(on bool) { a.with(func() { a.stuck = on }) }

// BusyUntil makes /drain report one more run until t.
func (a *App) BusyUntil(t time.Time) { a.with(func() { a.busyUntil = t }) }

// SetHealthy sets what GET /healthz answers: 200, or 503.
func (a *App) SetHealthy(ok bool) { a.with(func() { a.healthy = ok }) }

// SetNoAnswer picks the triggers left unanswered: f is called once per
// trigger, after the trigger was read and before it is recorded; nil
// answers every trigger.
func (a *App) SetNoAnswer(f func() NoAnswer) { a.with(func() { a.noAnswer = f }) }

// Script makes the n-th trigger of job (1-based) answer f(n)'s status
// after a run of f(n)'s duration, during which /drain counts it.
func (a *App) Script(job string, f func(n int) (status int, run time.Duration)) {
	a.with(func() { a.script[job] = f })
}

// SetGroup puts job in group: a scripted run of it that starts while
// another job of the group runs is a violation.
func (a *App) SetGroup(job, group string) { a.with(func() { a.groups[job] = group }) }

// Violations returns the overlapping runs seen: "job <name>" or
// "group <g>: <job> with <other>".
func (a *App) Violations() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.overlaps...)
}

// Down closes the app's listener and connections: the sidecar's next
// requests are refused.
func (a *App) Down() {
	a.mu.Lock()
	srv := a.srv
	a.srv = nil
	a.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
}

// Up listens again on the same address, after Down.
func (a *App) Up(t testing.TB) {
	t.Helper()
	ln, err := net.Listen("tcp", a.addr)
	if err != nil {
		t.Fatalf("app %s listen again on %s: %v", a.Name, a.addr, err)
	}
	a.serve(ln)
}
