package sidecar

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/scheduler"
)

// historyWriter appends every slot's fate to the job's history in Consul
// KV, in the background and in the order recorded. It never blocks the
// scheduler: when Consul is too slow for the queue, entries are dropped
// with a warning (the history is for people; the claims are what keep
// slots at most once).
type historyWriter struct {
	store Ledger
	id    string
	log   hclog.Logger

	mu     sync.Mutex
	closed bool
	queue  chan historyItem
	done   chan struct{}
}

type historyItem struct {
	job string
	e   kvlayout.Entry
}

func newHistoryWriter(store Ledger, id string, log hclog.Logger) *historyWriter {
	h := &historyWriter{store: store, id: id, log: log, queue: make(chan historyItem, 1024), done: make(chan struct{})}
	go h.run()
	return h
}

// Record implements scheduler.Recorder.
func (h *historyWriter) Record(job string, r scheduler.LastRun) {
	e := kvlayout.Entry{Slot: r.Slot, Outcome: r.Outcome, Reason: r.Reason, HTTPStatus: r.Status,
		DurationMS: r.Duration.Milliseconds(), Attempts: r.Attempts, FencingToken: r.FencingToken,
		ID: h.id, RunNow: r.RunNow, Request: r.Request, Until: r.Until, At: time.Now()}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		h.log.Warn("history entry after shutdown, not recorded", "job", job, "slot", r.Slot.UTC(), "outcome", r.Outcome)
		return
	}
	select {
	case h.queue <- historyItem{job, e}:
	default:
		h.log.Warn("history queue full, entry dropped", "job", job, "slot", r.Slot.UTC(), "outcome", r.Outcome)
	}
}

func (h *historyWriter) run() {
	defer close(h.done)
	for it := range h.queue {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := h.store.Append(ctx, it.job, it.e); err != nil {
			h.log.Warn("record slot history failed", "job", it.job, "slot", it.e.Slot, "error", err)
		}
		cancel()
	}
}

// close stops taking entries and waits up to timeout for the queue to be
// written.
func (h *historyWriter) close(timeout time.Duration) {
	h.mu.Lock()
	if !h.closed {
		h.closed = true
		close(h.queue)
	}
	h.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-h.done:
	case <-t.C:
		h.log.Warn("history not fully written at shutdown", "pending", len(h.queue))
	}
}
