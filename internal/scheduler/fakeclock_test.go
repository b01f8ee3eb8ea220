package scheduler

import (
	"slices"
	"sync"
	"testing"
	"time"
)

// failsafe bounds every wait on an event in these tests: it is how long a
// test waits before it fails, never a way to let time pass.
const failsafe = 5 * time.Second

// fakeClock is a Clock whose time moves only when a test moves it.
//
// Tests synchronise on its waiters: waitPending blocks until the set of
// pending After deadlines is exactly the expected one, and nextWaiter hands
// out, in order, the deadline of every After call ever made.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []*fakeWaiter
	created []time.Time   // deadlines of every After call, in call order
	seen    int           // how many of created nextWaiter has handed out
	changed chan struct{} // closed and replaced on every change
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock(now time.Time) *fakeClock {
	return &fakeClock{now: now, changed: make(chan struct{})}
}

// Now returns the fake time.
func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// After returns a channel that receives once the fake time reaches now+d.
func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	at := c.now.Add(d)
	c.created = append(c.created, at)
	if d <= 0 {
		ch <- c.now
	} else {
		c.waiters = append(c.waiters, &fakeWaiter{at: at, ch: ch})
	}
	c.broadcast()
	return ch
}

// AdvanceTo sets the fake time to t and fires every waiter due by then.
func (c *fakeClock) AdvanceTo(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if w.at.After(t) {
			kept = append(kept, w)
			continue
		}
		w.ch <- t
	}
	clear(c.waiters[len(kept):])
	c.waiters = kept
	c.broadcast()
}

// Advance moves the fake time on by d.
func (c *fakeClock) Advance(d time.Duration) { c.AdvanceTo(c.Now().Add(d)) }

func (c *fakeClock) broadcast() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// waitUntil blocks until cond, evaluated under the clock's lock, holds.
func (c *fakeClock) waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	timer := time.NewTimer(failsafe)
	defer timer.Stop()
	for {
		c.mu.Lock()
		ok := cond()
		ch := c.changed
		c.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-timer.C:
			c.mu.Lock()
			defer c.mu.Unlock()
			t.Fatalf("fake clock: gave up waiting for %s; now %s, pending %v", what, c.now.UTC(), c.pendingLocked())
		}
	}
}

func (c *fakeClock) pendingLocked() []time.Time {
	out := make([]time.Time, 0, len(c.waiters))
	for _, w := range c.waiters {
		out = append(out, w.at.UTC())
	}
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return out
}

// waitPending blocks until the pending waiters' deadlines are exactly want
// (in any order).
func (c *fakeClock) waitPending(t testing.TB, want ...time.Time) {
	t.Helper()
	w := make([]time.Time, len(want))
	for i, x := range want {
		w[i] = x.UTC()
	}
	slices.SortFunc(w, func(a, b time.Time) int { return a.Compare(b) })
	c.waitUntil(t, "pending waiters "+fmtTimes(w), func() bool {
		return slices.EqualFunc(c.pendingLocked(), w, time.Time.Equal)
	})
}

// nextWaiter blocks until an After call not yet handed out was made and
// returns its deadline.
func (c *fakeClock) nextWaiter(t testing.TB) time.Time {
	t.Helper()
	var at time.Time
	c.waitUntil(t, "a new waiter", func() bool {
		if len(c.created) <= c.seen {
			return false
		}
		at = c.created[c.seen]
		c.seen++
		return true
	})
	return at
}

func fmtTimes(ts []time.Time) string {
	s := "["
	for i, t := range ts {
		if i > 0 {
			s += " "
		}
		s += t.UTC().Format(time.RFC3339Nano)
	}
	return s + "]"
}
