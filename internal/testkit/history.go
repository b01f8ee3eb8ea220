package testkit

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// Event is one thing the apps, the lock watcher, the sidecars' logs or a
// test saw. Kind says which fields are set.
type Event struct {
	At      time.Time
	Kind    string // "trigger", "jobdone", "drain", "lock", "fault", "record", "acquired", "lease-ended", "bad"
	App     string // the app that received a request
	Sidecar string // Leadercron-Id, or the lock holder's id for "lock"
	Job     string
	Slot    time.Time
	Token   uint64
	Session string    // "lock": the holding session, "" when free; "acquired", "lease-ended": the sidecar's session
	Held    string    // "drain": the lock holder's session when the app saw it (HolderAtDrain)
	Attempt int       // "trigger": the attempt number in the body
	Note    string    // "fault": what was done; "drain": the running count; "lease-ended": the cause; "bad": what is wrong
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

// SlotKey is job@slot (RFC 3339, UTC), the Idempotency-Key of a
// scheduled slot.
func (e Event) SlotKey() string { return e.Job + "@" + e.Slot.UTC().Format(time.RFC3339) }

// History is the shared, ordered record of one test. It is safe for
// concurrent use.
type History struct {
	mu      sync.Mutex
	events  []Event
	changed chan struct{}
}

// NewHistory returns an empty history.
func NewHistory() *History { return &History{changed: make(chan struct{})} }

// Add appends e, stamped with the current time unless e.At is set, wakes
// every waiter, and returns e.At.
func (h *History) Add(e Event) time.Time {
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

// Fault records a fault injected by a test and returns its time.
func (h *History) Fault(note string) time.Time { return h.Add(Event{Kind: "fault", Note: note}) }

// Snapshot returns a copy of the events so far, and a channel closed at
// the next Add.
func (h *History) Snapshot() ([]Event, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Event(nil), h.events...), h.changed
}

// Events returns a copy of the events so far.
func (h *History) Events() []Event {
	evs, _ := h.Snapshot()
	return evs
}

// Wait waits until cond holds over the history, re-checking on every new
// event, and returns the events it held over. When ctx ends first it
// returns the last events checked and ctx's cause.
func (h *History) Wait(ctx context.Context, cond func([]Event) bool) ([]Event, error) {
	for {
		evs, changed := h.Snapshot()
		if cond(evs) {
			return evs, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return evs, context.Cause(ctx)
		}
	}
}

// WaitFor is Wait for a test: it fails the test after timeout, printing
// what it waited for and the history.
func (h *History) WaitFor(t testing.TB, timeout time.Duration, what string, cond func([]Event) bool) []Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	evs, err := h.Wait(ctx, cond)
	if err != nil {
		t.Fatalf("timed out after %s waiting for %s; history:\n%s", timeout, what, Dump(evs))
	}
	return evs
}

// Await is Wait with a timeout that reports whether cond held, without
// failing anything, so that a checker can report what is missing.
func (h *History) Await(timeout time.Duration, cond func([]Event) bool) bool {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := h.Wait(ctx, cond)
	return err == nil
}

// Filter returns the events of one kind, in order.
func Filter(evs []Event, kind string) []Event {
	var out []Event
	for _, e := range evs {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

// Dump formats events one a line, for a failure message.
func Dump(evs []Event) string {
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
			if e.Attempt > 1 {
				extra += fmt.Sprintf(" attempt=%d", e.Attempt)
			}
		case "drain":
			if e.Held != "" {
				extra += " held=" + e.Held
			}
		}
		fmt.Fprintf(&b, "  %s %-7s app=%s sidecar=%s job=%s slot=%s token=%d session=%.8s status=%d %s\n",
			e.At.Format("15:04:05.000"), e.Kind, e.App, e.Sidecar, e.Job, slot, e.Token, e.Session, e.Status, extra)
	}
	return b.String()
}
