package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/consultest"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "leadercron-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "leadercron")
	build := exec.Command("go", "build", "-race", "-o", binary, "github.com/leadercron/leadercron")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build leadercron:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// event is one thing the recording apps or the lock watcher saw.
type event struct {
	At      time.Time
	Kind    string // "trigger", "drain", "lock"
	App     string // which app received it
	Sidecar string // Leadercron-Id
	Job     string
	Slot    string
	Token   uint64
	Session string // for "lock": the holder after the change ("" = free)
	Held    string // for "drain": the lock holder when the app saw it
	Attempt int    // for "trigger": the attempt number in the body
}

// history is the shared, ordered record of a test.
type history struct {
	mu      sync.Mutex
	events  []event
	changed chan struct{}
}

func newHistory() *history { return &history{changed: make(chan struct{})} }

func (h *history) add(e event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	e.At = time.Now()
	h.events = append(h.events, e)
	close(h.changed)
	h.changed = make(chan struct{})
}

func (h *history) snapshot() ([]event, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]event(nil), h.events...), h.changed
}

// waitFor waits until cond holds over the history, re-checking on every new
// event; it fails the test after timeout.
func (h *history) waitFor(t *testing.T, timeout time.Duration, what string, cond func([]event) bool) []event {
	t.Helper()
	deadline := time.After(timeout)
	for {
		evs, changed := h.snapshot()
		if cond(evs) {
			return evs
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("timed out after %s waiting for %s; history:\n%s", timeout, what, dump(evs))
		}
	}
}

func dump(evs []event) string {
	var b bytes.Buffer
	for _, e := range evs {
		fmt.Fprintf(&b, "  %s %-7s app=%s sidecar=%s job=%s slot=%s token=%d session=%s held=%s\n",
			e.At.Format("15:04:05.000"), e.Kind, e.App, e.Sidecar, e.Job, e.Slot, e.Token, e.Session, e.Held)
	}
	return b.String()
}

func filter(evs []event, kind string) []event {
	var out []event
	for _, e := range evs {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

// checkNoDuplicateSlots fails the test if any (job, slot) was triggered
// twice, anywhere in the fleet. Retries (attempt 2 and up) resend a slot
// by design and are not counted.
func checkNoDuplicateSlots(t *testing.T, evs []event) {
	t.Helper()
	seen := map[string]event{}
	for _, e := range filter(evs, "trigger") {
		if e.Attempt > 1 {
			continue
		}
		k := e.Job + "@" + e.Slot
		if first, dup := seen[k]; dup {
			t.Errorf("slot %s triggered twice: by %s (token %d) and by %s (token %d)", k, first.Sidecar, first.Token, e.Sidecar, e.Token)
		}
		seen[k] = e
	}
}

// logSlotDelays logs how late triggers reached the apps after their slot
// (a figure for the README; benchmarks measure it properly).
func logSlotDelays(t *testing.T, evs []event) {
	t.Helper()
	var ds []time.Duration
	for _, e := range filter(evs, "trigger") {
		if slot, err := time.Parse(time.RFC3339, e.Slot); err == nil {
			ds = append(ds, e.At.Sub(slot))
		}
	}
	if len(ds) == 0 {
		return
	}
	slices.Sort(ds)
	t.Logf("slot to app receiving the trigger over %d triggers: p50 %s, max %s", len(ds), ds[len(ds)/2], ds[len(ds)-1])
}

// recordingApp is a co-located app that records every request. Its /drain
// reports `busyPolls` running jobs before it reports 0 (forever if -1),
// and records who held the lock at that moment.
type recordingApp struct {
	name      string
	h         *history
	consul    *api.Client
	lockKey   string
	mu        sync.Mutex
	busyPolls int
	srv       *httptest.Server
}

func startApp(t *testing.T, name string, h *history, consul *api.Client, lockKey string, busyPolls int) *recordingApp {
	t.Helper()
	a := &recordingApp{name: name, h: h, consul: consul, lockKey: lockKey, busyPolls: busyPolls}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /jobs/{name}", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Job          string `json:"job"`
			Slot         string `json:"slot"`
			FencingToken uint64 `json:"fencing_token"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		token, _ := strconv.ParseUint(r.Header.Get("Leadercron-Fencing-Token"), 10, 64)
		if body.Job != r.PathValue("name") || body.Slot != r.Header.Get("Leadercron-Slot") || body.FencingToken != token ||
			r.Header.Get("Idempotency-Key") != body.Job+"@"+body.Slot {
			http.Error(w, "headers and body disagree", http.StatusBadRequest)
			return
		}
		h.add(event{Kind: "trigger", App: name, Sidecar: r.Header.Get("Leadercron-Id"), Job: body.Job, Slot: body.Slot, Token: token})
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /drain", func(w http.ResponseWriter, r *http.Request) {
		held := ""
		if a.consul != nil {
			if pair, _, err := a.consul.KV().Get(a.lockKey, &api.QueryOptions{RequireConsistent: true}); err == nil && pair != nil {
				held = pair.Session
			}
		}
		a.mu.Lock()
		running := 0
		if a.busyPolls != 0 {
			running = 1
			if a.busyPolls > 0 {
				a.busyPolls--
			}
		}
		a.mu.Unlock()
		h.add(event{Kind: "drain", App: name, Sidecar: r.Header.Get("Leadercron-Id"), Held: held})
		_ = json.NewEncoder(w).Encode(map[string]int{"running": running})
	})
	a.srv = httptest.NewServer(mux)
	t.Cleanup(a.srv.Close)
	return a
}

// watchLock records every change of the lock key's holder.
func watchLock(t *testing.T, c *api.Client, key string, h *history) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		var index uint64
		last := "-"
		for ctx.Err() == nil {
			pair, meta, err := c.KV().Get(key, (&api.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Second}).WithContext(ctx))
			if err != nil {
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
				continue
			}
			index = meta.LastIndex
			holder := ""
			if pair != nil {
				holder = pair.Session
			}
			if holder != last {
				h.add(event{Kind: "lock", Session: holder})
				last = holder
			}
		}
	}()
}

// sidecar is one running leadercron process.
type sidecar struct {
	id     string
	listen string
	cmd    *exec.Cmd
	out    *bytes.Buffer
	mu     *sync.Mutex
	exited chan struct{}
	code   int
}

type lockedBuffer struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (l lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func startSidecar(t *testing.T, id string, env map[string]string) *sidecar {
	t.Helper()
	ports, err := consultest.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	s := &sidecar{id: id, listen: "127.0.0.1:" + strconv.Itoa(ports[0]), out: &bytes.Buffer{}, mu: &sync.Mutex{}, exited: make(chan struct{})}
	full := map[string]string{
		"PATH":                  os.Getenv("PATH"),
		"HOME":                  os.Getenv("HOME"),
		"LEADERCRON_ID":         id,
		"LEADERCRON_SERVICE":    "e2e",
		"LEADERCRON_LISTEN":     s.listen,
		"LEADERCRON_LOG_FORMAT": "text",
		"LEADERCRON_LOG_LEVEL":  "debug",
	}
	for k, v := range env {
		full[k] = v
	}
	s.cmd = exec.Command(binary)
	for k, v := range full {
		s.cmd.Env = append(s.cmd.Env, k+"="+v)
	}
	s.cmd.Stdout = lockedBuffer{s.mu, s.out}
	s.cmd.Stderr = s.cmd.Stdout
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = s.cmd.Wait()
		s.code = s.cmd.ProcessState.ExitCode()
		close(s.exited)
	}()
	t.Cleanup(func() {
		_ = s.cmd.Process.Kill()
		<-s.exited
		if t.Failed() {
			t.Logf("sidecar %s output:\n%s", id, s.output())
		}
	})
	return s
}

func (s *sidecar) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

func (s *sidecar) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %s: %v", s.id, err)
	}
}

// wait waits for the process to exit and returns its exit code.
func (s *sidecar) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-s.exited:
		return s.code
	case <-time.After(timeout):
		t.Fatalf("sidecar %s did not exit within %s", s.id, timeout)
		return -1
	}
}
