package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/consultest"
)

// suite is the state TestMain sets up once for every scenario.
type suite struct {
	binary string
	seed   uint64
	soak   time.Duration
	report *report
}

var the suite

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	the.report = &report{}
	if v := os.Getenv("LEADERCRON_FAULT_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			fmt.Fprintf(os.Stderr, "LEADERCRON_FAULT_SEED=%q: %v\n", v, err)
			return 2
		}
		the.seed = s
	} else {
		the.seed = uint64(time.Now().UnixNano())
	}
	if v := os.Getenv("LEADERCRON_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			fmt.Fprintf(os.Stderr, "LEADERCRON_SOAK=%q: want a positive duration such as 1h\n", v)
			return 2
		}
		the.soak = d
	}
	fmt.Printf("fault seed %d (replay with LEADERCRON_FAULT_SEED=%d)\n", the.seed, the.seed)

	dir, err := os.MkdirTemp("", "leadercron-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	the.binary = filepath.Join(dir, "leadercron")
	build := exec.Command("go", "build", "-race", "-o", the.binary, "github.com/leadercron/leadercron")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build leadercron:", err)
		return 1
	}
	code := m.Run()
	the.report.print(os.Stdout, the.seed)
	return code
}

// rng returns the scenario's random source: the suite seed mixed with the
// scenario's name, so a scenario replays the same way whatever runs.
func rng(name string) *rand.Rand {
	h := fnv.New64a()
	_, _ = h.Write([]byte(name))
	return rand.New(rand.NewPCG(the.seed, h.Sum64()))
}

// between returns a random duration in [lo, hi).
func between(r *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(r.Int64N(int64(hi-lo)))
}

// rounds returns how many fault rounds a scenario runs: one, or as many as
// fit in its share of the soak time.
func soakUntil(share int) time.Time {
	if the.soak == 0 {
		return time.Time{}
	}
	return time.Now().Add(the.soak / time.Duration(share))
}

// event is one thing the apps, the lock watcher, the sidecars' logs or the
// scenario saw.
type event struct {
	At      time.Time
	Kind    string // "trigger", "jobdone", "drain", "lock", "fault", "record", "acquired", "lease-ended"
	App     string // the app that received a request
	Sidecar string // Leadercron-Id, or the lock holder's id for "lock"
	Job     string
	Slot    time.Time
	Token   uint64
	Session string    // "lock": the holding session, "" when free; "acquired", "lease-ended": the sidecar's session
	Note    string    // "fault": what was done; "drain": the running count; "lease-ended": the cause
	Status  int       // "trigger": what the app answered
	Until   time.Time // "record": the last slot of a recorded range; "lease-ended": ended_at
	Key     string    // "trigger": the Idempotency-Key header
	RunNow  string    // "trigger": the Leadercron-Run-Now header (run-now request id; "" for a scheduled slot); "record": a run-now's request id (or "true")
	Outcome string    // "record": missed, skipped or failed
	Reason  string    // "record": the recorded reason (scheduler.Reason*, or no_answer for failed)
	// Unanswered: "trigger": the app read and recorded it, then gave no
	// answer (reset the connection, or answered after its write timeout).
	Unanswered bool
}

// history is the shared, ordered record of one scenario.
type history struct {
	mu      sync.Mutex
	events  []event
	changed chan struct{}
}

func newHistory() *history { return &history{changed: make(chan struct{})} }

func (h *history) add(e event) time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	if e.At.IsZero() {
		e.At = time.Now()
	}
	h.events = append(h.events, e)
	close(h.changed)
	h.changed = make(chan struct{})
	return e.At
}

// fault records a fault injected by the scenario and returns its time.
func (h *history) fault(note string) time.Time { return h.add(event{Kind: "fault", Note: note}) }

func (h *history) snapshot() ([]event, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]event(nil), h.events...), h.changed
}

// waitFor waits until cond holds over the history, re-checking on every
// new event; it fails the test after timeout.
func (h *history) waitFor(t *testing.T, timeout time.Duration, what string, cond func([]event) bool) []event {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		evs, changed := h.snapshot()
		if cond(evs) {
			return evs
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("timed out after %s waiting for %s; history:\n%s", timeout, what, dump(evs))
		}
	}
}

// await waits until cond holds over the history, re-checking on every new
// event, and reports whether it did before timeout; unlike waitFor it
// does not fail the test, so that the checker can report what is missing.
func (h *history) await(timeout time.Duration, cond func([]event) bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		evs, changed := h.snapshot()
		if cond(evs) {
			return true
		}
		select {
		case <-changed:
		case <-deadline.C:
			return false
		}
	}
}

// triggersSince returns a condition: n triggers from anyone but not, sent
// after since.
func triggersSince(since time.Time, n int, not ...string) func([]event) bool {
	return func(evs []event) bool {
		c := 0
	next:
		for _, e := range evs {
			if e.Kind != "trigger" || e.At.Before(since) {
				continue
			}
			for _, x := range not {
				if e.Sidecar == x {
					continue next
				}
			}
			c++
		}
		return c >= n
	}
}

func dump(evs []event) string {
	var b bytes.Buffer
	for _, e := range evs {
		slot := ""
		if !e.Slot.IsZero() {
			slot = e.Slot.UTC().Format("15:04:05")
		}
		extra := e.Note
		switch e.Kind {
		case "record":
			extra = strings.TrimSpace(e.Outcome + " " + e.Reason)
			if !e.Until.Equal(e.Slot) {
				extra += " until " + e.Until.UTC().Format("15:04:05")
			}
		case "lease-ended":
			extra = "ended_at " + e.Until.Format("15:04:05.000") + " " + e.Note
		case "trigger":
			if e.RunNow != "" {
				extra += " run-now=" + e.RunNow
			}
		}
		fmt.Fprintf(&b, "  %s %-7s app=%s sidecar=%s job=%s slot=%s token=%d session=%.8s status=%d %s\n",
			e.At.Format("15:04:05.000"), e.Kind, e.App, e.Sidecar, e.Job, slot, e.Token, e.Session, e.Status, extra)
	}
	return b.String()
}

// recordingApp is one sidecar's co-located app. It records every request
// in the history, and can be made slow, made to fail, taken down (refused
// connections), kept from draining, or made to leave triggers unanswered.
type recordingApp struct {
	name string
	h    *history
	addr string
	URL  string
	// writeTimeout is the app server's WriteTimeout (0: none); an answer
	// written after it is lost, and the connection closed.
	writeTimeout time.Duration

	mu      sync.Mutex
	srv     *http.Server
	delay   time.Duration // how long a run takes before the answer
	status  int           // the answer; 0 means 204
	longJob string        // runs of this job go on in the background for longFor
	longFor time.Duration
	running int  // background runs still going
	stuck   bool // /drain reports one run forever
	// ambiguous, when set, picks the triggers left unanswered: it is
	// called once per trigger, after the trigger was read and recorded,
	// and returns noAnswerNone, noAnswerReset or noAnswerLate.
	ambiguous func() noAnswer
}

// noAnswer is how the app leaves a trigger it took unanswered.
type noAnswer int

const (
	noAnswerNone  noAnswer = iota
	noAnswerReset          // hijack the connection and reset it (RST, no answer)
	noAnswerLate           // answer only after the server's WriteTimeout: the answer is lost
)

func (n noAnswer) String() string {
	switch n {
	case noAnswerReset:
		return "no answer: connection reset"
	case noAnswerLate:
		return "no answer: answered after the write timeout"
	}
	return ""
}

// appOption configures a recording app before it serves.
type appOption func(*recordingApp)

// withWriteTimeout sets the app server's WriteTimeout.
func withWriteTimeout(d time.Duration) appOption {
	return func(a *recordingApp) { a.writeTimeout = d }
}

func startApp(t *testing.T, name string, h *history, opts ...appOption) *recordingApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &recordingApp{name: name, h: h, addr: ln.Addr().String()}
	a.URL = "http://" + a.addr
	for _, o := range opts {
		o(a)
	}
	a.serve(ln)
	t.Cleanup(a.down)
	return a
}

func (a *recordingApp) serve(ln net.Listener) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /jobs/{name}", a.job)
	mux.HandleFunc("POST /drain", a.drain)
	// Keep-alive stays on (the default): the sidecar's transport reuses
	// connections, as it does against a real app.
	srv := &http.Server{Handler: mux, WriteTimeout: a.writeTimeout}
	a.mu.Lock()
	a.srv = srv
	a.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

func (a *recordingApp) job(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Job          string `json:"job"`
		Slot         string `json:"slot"`
		FencingToken uint64 `json:"fencing_token"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	_, _ = io.Copy(io.Discard, r.Body) // the trigger is read in full
	slot, err := time.Parse(time.RFC3339, body.Slot)
	token, terr := strconv.ParseUint(r.Header.Get("Leadercron-Fencing-Token"), 10, 64)
	if err != nil || terr != nil || body.Job != r.PathValue("name") || body.FencingToken != token {
		http.Error(w, "bad trigger", http.StatusBadRequest)
		return
	}
	a.mu.Lock()
	delay, status, long, longFor := a.delay, a.status, a.longJob, a.longFor
	if status == 0 {
		status = http.StatusNoContent
	}
	if body.Job == long && status < 300 {
		status = http.StatusAccepted
		a.running++
	}
	bad := noAnswerNone
	if a.ambiguous != nil {
		bad = a.ambiguous()
	}
	a.mu.Unlock()
	a.h.add(event{Kind: "trigger", App: a.name, Sidecar: r.Header.Get("Leadercron-Id"), Job: body.Job, Slot: slot, Token: token, Status: status,
		Key: r.Header.Get("Idempotency-Key"), RunNow: r.Header.Get("Leadercron-Run-Now"), Unanswered: bad != noAnswerNone, Note: bad.String()})
	if status == http.StatusAccepted {
		time.AfterFunc(longFor, func() {
			a.mu.Lock()
			a.running--
			a.mu.Unlock()
			a.h.add(event{Kind: "jobdone", App: a.name, Job: body.Job, Slot: slot, Token: token})
		})
	}
	switch bad {
	case noAnswerReset:
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(fmt.Sprintf("app %s: hijack: %v", a.name, err))
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // Close sends RST
		}
		_ = conn.Close()
		return
	case noAnswerLate:
		// The server set the write deadline when it read the request:
		// wait past it, then answer; the answer is lost and the
		// connection closed.
		time.Sleep(a.writeTimeout + lateBy)
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
		}
		t.Stop()
	}
	w.WriteHeader(status)
}

// lateBy is how long after its WriteTimeout the app answers a trigger it
// leaves unanswered that way: enough for the deadline to have passed even
// if the deadline was set late by scheduling lag.
const lateBy = 200 * time.Millisecond

func (a *recordingApp) drain(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	running := a.running
	if a.stuck {
		running = max(running, 1)
	}
	a.mu.Unlock()
	a.h.add(event{Kind: "drain", App: a.name, Sidecar: r.Header.Get("Leadercron-Id"), Note: "running=" + strconv.Itoa(running)})
	_ = json.NewEncoder(w).Encode(map[string]int{"running": running})
}

func (a *recordingApp) set(f func(a *recordingApp)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f(a)
}

// down closes the app's listener and connections: the sidecar's next
// requests are refused.
func (a *recordingApp) down() {
	a.mu.Lock()
	srv := a.srv
	a.srv = nil
	a.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
}

// up listens again on the same address.
func (a *recordingApp) up(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", a.addr)
	if err != nil {
		t.Fatalf("app %s listen again on %s: %v", a.name, a.addr, err)
	}
	a.serve(ln)
}

// watchLock records every change of the lock key's holder, asking the
// agents at addrs in turn (so it survives a server's death).
func watchLock(t *testing.T, addrs []string, key string, h *history) {
	t.Helper()
	clients := make([]*api.Client, len(addrs))
	for i, a := range addrs {
		clients[i] = consultest.Client(t, a)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		var index uint64
		last, i := "-", 0
		for ctx.Err() == nil {
			q := &api.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Second}
			rctx, rcancel := context.WithTimeout(ctx, 7*time.Second)
			pair, meta, err := clients[i].KV().Get(key, q.WithContext(rctx))
			rcancel()
			if err != nil {
				i = (i + 1) % len(clients)
				index = 0
				select {
				case <-ctx.Done():
				case <-time.After(50 * time.Millisecond):
				}
				continue
			}
			if meta.LastIndex < index {
				index = 0
			} else {
				index = meta.LastIndex
			}
			session, holder := "", ""
			if pair != nil && pair.Session != "" {
				session, holder = pair.Session, holderID(pair.Value)
			}
			if session != last {
				h.add(event{Kind: "lock", Session: session, Sidecar: holder})
				last = session
			}
		}
	}()
}

// holderID reads the sidecar id from the lock key's value: leadercron's
// JSON {"id": ...}, or the naive leader's plain id.
func holderID(v []byte) string {
	var x struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(v, &x) == nil && x.ID != "" {
		return x.ID
	}
	return string(v)
}

// proc is one running leadercron process. It logs JSON; the slots its
// scheduler records as missed, skipped or failed go into the history as
// "record" events, and its leader's acquire and lease end as "acquired"
// and "lease-ended" events.
type proc struct {
	id      string
	h       *history
	cmd     *exec.Cmd
	out     *bytes.Buffer
	mu      sync.Mutex
	partial []byte
	exited  chan struct{}
	code    int
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	p.out.Write(b)
	p.partial = append(p.partial, b...)
	var lines [][]byte
	for {
		i := bytes.IndexByte(p.partial, '\n')
		if i < 0 {
			break
		}
		lines = append(lines, append([]byte(nil), p.partial[:i]...))
		p.partial = p.partial[i+1:]
	}
	p.mu.Unlock()
	for _, l := range lines {
		if e, ok := parseLine(l); ok {
			e.Sidecar = p.id
			p.h.add(e)
		}
	}
	return len(b), nil
}

// logLine is the part of a sidecar's JSON log line (hclog) the suite
// reads.
type logLine struct {
	At      time.Time       `json:"@timestamp"`
	Message string          `json:"@message"`
	Job     string          `json:"job"`
	Outcome string          `json:"outcome"`
	Reason  string          `json:"reason"`
	Slot    string          `json:"slot"`
	First   string          `json:"first"`
	Firing  string          `json:"firing"`
	RunNow  bool            `json:"run_now"`
	Request string          `json:"request"`
	Session string          `json:"session"`
	Token   json.Number     `json:"fencing_token"`
	Cause   json.RawMessage `json:"cause"`
	EndedAt string          `json:"ended_at"`
}

// parseLine reads one sidecar log line: see parseRecord, and
//
//	"leadership acquired" (fencing_token, session): an "acquired" event
//	at the line's time;
//	"leadership lease ended" (session, cause, ended_at): a "lease-ended"
//	event whose Until is ended_at, the instant the sidecar's lease ended
//	or it learnt of the loss, whichever came first.
func parseLine(line []byte) (event, bool) {
	var l logLine
	if json.Unmarshal(line, &l) != nil {
		return event{}, false
	}
	switch l.Message {
	case "leadership acquired":
		tok, err := strconv.ParseUint(l.Token.String(), 10, 64)
		if err != nil || l.Session == "" {
			return event{}, false
		}
		return event{At: l.At, Kind: "acquired", Token: tok, Session: l.Session}, true
	case "leadership lease ended":
		ended, err := time.Parse(time.RFC3339Nano, l.EndedAt)
		if err != nil || l.Session == "" {
			return event{}, false
		}
		cause := string(l.Cause)
		var s string
		if json.Unmarshal(l.Cause, &s) == nil {
			cause = s
		}
		return event{At: l.At, Kind: "lease-ended", Session: l.Session, Until: ended, Note: cause}, true
	}
	return parseRecord(l)
}

// parseRecord reads a scheduler log line that records slots as missed or
// skipped: one slot ("slot"), or a range from "first" up to the slot
// "firing" (exclusive), or up to the time of the line when nothing fired;
// or a slot whose trigger failed ("slot finished", outcome failed).
func parseRecord(l logLine) (event, bool) {
	if l.Job == "" || (l.Outcome != "missed" && l.Outcome != "skipped" && l.Outcome != labelFailed) {
		return event{}, false
	}
	e := event{Kind: "record", Job: l.Job, Note: l.Outcome + " " + l.Reason, Outcome: l.Outcome, Reason: l.Reason}
	if l.RunNow {
		e.RunNow = "true"
		if l.Request != "" {
			e.RunNow = l.Request
		}
	}
	if t, err := time.Parse(time.RFC3339, l.Slot); err == nil {
		e.Slot, e.Until = t, t
		return e, true
	}
	first, err := time.Parse(time.RFC3339, l.First)
	if err != nil {
		return event{}, false
	}
	e.Slot, e.Until = first, l.At
	if t, err := time.Parse(time.RFC3339, l.Firing); err == nil {
		e.Until = t.Add(-time.Millisecond)
	}
	return e, true
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func startProc(t *testing.T, h *history, id string, env map[string]string) *proc {
	t.Helper()
	ports, err := consultest.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{id: id, h: h, out: &bytes.Buffer{}, exited: make(chan struct{})}
	full := map[string]string{
		"PATH":                  os.Getenv("PATH"),
		"HOME":                  os.Getenv("HOME"),
		"LEADERCRON_ID":         id,
		"LEADERCRON_SERVICE":    "faults",
		"LEADERCRON_LISTEN":     "127.0.0.1:" + strconv.Itoa(ports[0]),
		"LEADERCRON_LOG_FORMAT": "json",
		"LEADERCRON_LOG_LEVEL":  "debug",
	}
	for k, v := range env {
		full[k] = v
	}
	p.cmd = exec.Command(the.binary)
	for k, v := range full {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		_ = p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("sidecar %s output:\n%s", id, p.output())
		}
	})
	return p
}

func (p *proc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("signal %s to %s: %v", sig, p.id, err)
	}
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
		return p.code
	case <-time.After(timeout):
		t.Fatalf("sidecar %s did not exit within %s", p.id, timeout)
		return -1
	}
}
