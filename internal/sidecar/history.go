package sidecar

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/scheduler"
)

// historyWriter appends every slot's fate to the job's history in Consul
// KV, in the background, in batches: whatever is queued when a write
// starts goes in it (Ledger.AppendAll: one Txn for as many jobs' lists as
// fit), and the next write waits historyInterval, so a leader firing a
// hundred slots a second sends about one history write a second. It never
// blocks the scheduler: when Consul is too slow for the queue, entries
// are dropped with a warning (the history is for people; the claims are
// what keep slots at most once).
type historyWriter struct {
	store Ledger
	id    string
	log   hclog.Logger

	mu      sync.Mutex
	closed  bool
	queue   chan historyItem
	closing chan struct{} // closed by close: write what is queued at once
	done    chan struct{}
}

// historyInterval is the pause between two history writes. /status and
// `leadercron status` show a slot's fate at most this long (plus one
// write) after it is recorded; the longer it is, the more slots share a
// write.
const historyInterval = time.Second

// historyQueue bounds the entries waiting for a write: over a
// historyInterval plus a slow write (10 s) at a hundred slots a second,
// with room.
const historyQueue = 4096

type historyItem struct {
	job string
	e   kvlayout.Entry
}

func newHistoryWriter(store Ledger, id string, log hclog.Logger) *historyWriter {
	h := &historyWriter{store: store, id: id, log: log, queue: make(chan historyItem, historyQueue),
		closing: make(chan struct{}), done: make(chan struct{})}
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
	for {
		batch, n, ok := h.next()
		if !ok {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := h.store.AppendAll(ctx, batch); err != nil {
			h.log.Warn("record slot history failed", "entries", n, "jobs", len(batch), "error", err)
		}
		cancel()
		t := time.NewTimer(historyInterval)
		select {
		case <-t.C:
		case <-h.closing:
		}
		t.Stop()
	}
}

// next waits for an entry and returns it with every entry queued behind
// it, by job; ok is false once the queue is closed and empty.
func (h *historyWriter) next() (map[string][]kvlayout.Entry, int, bool) {
	it, ok := <-h.queue
	if !ok {
		return nil, 0, false
	}
	batch := map[string][]kvlayout.Entry{it.job: {it.e}}
	n := 1
	for {
		select {
		case it, ok := <-h.queue:
			if !ok {
				return batch, n, true
			}
			batch[it.job] = append(batch[it.job], it.e)
			n++
		default:
			return batch, n, true
		}
	}
}

// close stops taking entries and waits up to timeout for the queue to be
// written.
func (h *historyWriter) close(timeout time.Duration) {
	h.mu.Lock()
	if !h.closed {
		h.closed = true
		close(h.queue)
		close(h.closing)
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

// historyFates answers scheduler.Fates from the ledger's history.
type historyFates struct{ l Ledger }

// Recorded reports whether job's history holds a fate for scheduled slot.
func (f historyFates) Recorded(ctx context.Context, job string, slot time.Time) (bool, error) {
	list, err := f.l.History(ctx, job)
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(list, func(e kvlayout.Entry) bool {
		return !e.RunNow && (e.Slot.Equal(slot) || !e.Until.IsZero() && !slot.Before(e.Slot) && !slot.After(e.Until))
	}), nil
}
