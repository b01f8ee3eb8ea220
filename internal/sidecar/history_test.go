package sidecar

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/fate"
	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/scheduler"
)

// countingLedger counts AppendAll calls and keeps what they wrote.
type countingLedger struct {
	Ledger
	mu      sync.Mutex
	calls   int
	entries int
	first   chan struct{} // closed when the first write starts
	unblock chan struct{} // the first write waits for it
}

func (c *countingLedger) AppendAll(_ context.Context, entries map[string][]kvlayout.Entry) error {
	c.mu.Lock()
	c.calls++
	first := c.calls == 1
	for _, es := range entries {
		c.entries += len(es)
	}
	c.mu.Unlock()
	if first {
		close(c.first)
		<-c.unblock
	}
	return nil
}

// Slot fates recorded while a history write is under way share the next
// write, however many jobs they belong to; close writes what is queued at
// once, without the interval.
func TestHistoryWritesInBatches(t *testing.T) {
	store := &countingLedger{first: make(chan struct{}), unblock: make(chan struct{})}
	h := newHistoryWriter(store, "web-1", hclog.NewNullLogger())
	rec := func(job string, i int) {
		h.Record(job, scheduler.LastRun{Slot: time.Unix(int64(i), 0), Outcome: fate.Fired, FencingToken: 1})
	}
	rec("a", 0)
	<-store.first // the first write holds one entry and is under way
	for i := range 200 {
		rec(fmt.Sprintf("job%d", i%50), i+1)
	}
	close(store.unblock)
	start := time.Now()
	h.close(5 * time.Second)
	store.mu.Lock()
	defer store.mu.Unlock()
	if store.calls != 2 || store.entries != 201 {
		t.Fatalf("%d writes of %d entries, want 2 writes of 201 (one, then the 200 queued behind it)", store.calls, store.entries)
	}
	if d := time.Since(start); d >= historyInterval {
		t.Errorf("close took %s: it must not wait out the %s interval", d, historyInterval)
	}
}
