package faults

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/consultest"
	"github.com/leadercron/leadercron/internal/testkit"
)

// The shared harness (internal/testkit) under the short names the
// scenarios and the checker use.
type (
	event   = testkit.Event
	history = testkit.History
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

	flag.Parse()
	if testing.Short() {
		// Every scenario runs the binary or a Consul agent, and skips;
		// the checker's own test still runs.
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "leadercron-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if the.binary, err = testkit.BuildSidecar(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
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

// proc is one running leadercron process. It logs JSON; the slots its
// scheduler records as missed, skipped or failed go into the history as
// "record" events, and its leader's acquire and lease end as "acquired"
// and "lease-ended" events.
type proc struct {
	*testkit.Sidecar
	id string
}

// logParser turns a sidecar's JSON log lines into history events.
type logParser struct {
	id      string
	h       *history
	mu      sync.Mutex
	partial []byte
}

func (p *logParser) Write(b []byte) (int, error) {
	p.mu.Lock()
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
			p.h.Add(e)
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

func startProc(t *testing.T, h *history, id string, env map[string]string) *proc {
	t.Helper()
	o := testkit.SidecarOptions{Service: "faults", LogFormat: "json", Tee: &logParser{id: id, h: h}}
	return &proc{Sidecar: testkit.StartSidecar(t, the.binary, id, env, o), id: id}
}

// signal sends sig to the process; one that exited already is no error.
func (p *proc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("signal %s to %s: %v", sig, p.id, err)
	}
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	return p.Wait(t, timeout)
}

// watchLock records every change of the lock key's holder, asking the
// agents at addrs in turn (so it survives a server's death).
func watchLock(t *testing.T, addrs []string, key string, h *history) {
	t.Helper()
	var clients []*api.Client
	for _, a := range addrs {
		clients = append(clients, consultest.Client(t, a))
	}
	testkit.StartLockWatch(t, h, key, clients...)
}
