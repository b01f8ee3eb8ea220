package scheduler

import (
	"context"
	"testing"
	"time"

	"github.com/leadercron/leadercron/internal/fate"
	"github.com/leadercron/leadercron/internal/kvlayout"
)

const claimLeadForTest = 100 * time.Millisecond

func pinnedLead() func() time.Duration { return func() time.Duration { return claimLeadForTest } }

// A slot is claimed a claim lead ahead of its instant and triggered at the
// instant: the claim is off the trigger path.
func TestClaimsAheadOfTheInstant(t *testing.T) {
	const sec = time.Second
	h := newHarness(t, []Job{job("bill", 10*sec)}, Options{LeaseMargin: 5 * sec, ClaimLead: pinnedLead()})
	h.lead()
	h.clock.waitPending(t, at(10*sec-claimLeadForTest))
	h.clock.AdvanceTo(at(10*sec - claimLeadForTest))
	h.clock.waitPending(t, at(10*sec)) // claimed; now waiting for the instant
	checkClaims(t, h.term.claimCalls(), claimCall{job: "bill", slot: at(10 * sec), won: true})
	if got := h.app.drained(); len(got) != 0 {
		checkSlots(t, "triggered before the instant", got)
	}
	h.clock.AdvanceTo(at(10 * sec))
	checkRun(t, h.app.next(t), "bill", at(10*sec), 42, at(40*sec))
	if rest := h.finish(); len(rest) != 0 {
		checkSlots(t, "extra triggers", rest)
	}
}

// A slot claimed ahead is not sent when the lease runs short before its
// instant: it is spent, and recorded as missed, lease_short.
func TestEarlyClaimLeaseEndsBeforeTheInstant(t *testing.T) {
	const sec = time.Second
	opts, rec := withRecorder(Options{LeaseMargin: 5 * sec, ClaimLead: pinnedLead()})
	h := newHarness(t, []Job{job("bill", 10*sec)}, opts)
	h.term.afterClaim = func(claimCall) { h.term.setRemaining(sec) }
	h.lead()
	h.clock.waitPending(t, at(10*sec-claimLeadForTest))
	h.clock.AdvanceTo(at(10*sec - claimLeadForTest))
	h.clock.waitPending(t, at(10*sec))
	h.clock.AdvanceTo(at(10 * sec))
	h.clock.waitPending(t, at(20*sec-claimLeadForTest))
	checkRecorded(t, rec.all(), LastRun{Slot: at(10 * sec), Outcome: fate.Missed, Reason: fate.Lease})
	if rest := h.finish(); len(rest) != 0 {
		checkSlots(t, "triggers with a short lease", rest)
	}
}

// A claim ahead needs a lease that still has its margin at the instant;
// with less, the slot waits for its instant and is claimed then if the
// lease allows (renewals may have restored it).
func TestEarlyClaimNeedsTheLeaseToCoverTheInstant(t *testing.T) {
	const sec = time.Second
	h := newHarness(t, []Job{job("bill", 10*sec)}, Options{LeaseMargin: 5 * sec, ClaimLead: pinnedLead()})
	h.term.setRemaining(5*sec + claimLeadForTest/2) // covers the claim, not the instant
	h.lead()
	h.clock.waitPending(t, at(10*sec-claimLeadForTest))
	h.clock.AdvanceTo(at(10*sec - claimLeadForTest))
	h.clock.waitPending(t, at(10*sec))
	if cl := h.term.claimCalls(); len(cl) != 0 {
		t.Fatalf("claimed ahead of an instant the lease does not cover: %v", cl)
	}
	h.clock.AdvanceTo(at(10 * sec)) // the fake lease does not run down: still enough at the instant
	checkRun(t, h.app.next(t), "bill", at(10*sec), 42, at(40*sec))
	checkClaims(t, h.term.claimCalls(), claimCall{job: "bill", slot: at(10 * sec), won: true})
	if rest := h.finish(); len(rest) != 0 {
		checkSlots(t, "extra triggers", rest)
	}
}

// A slot claimed ahead fires at its instant even when leadership ends
// (a stop) between the claim and the instant: it is spent either way,
// and the drain waits for it.
func TestEarlyClaimedSlotFiresAfterAStop(t *testing.T) {
	const sec = time.Second
	h := newHarness(t, []Job{job("bill", 10*sec)}, Options{LeaseMargin: 5 * sec, ClaimLead: pinnedLead()})
	h.lead()
	h.clock.waitPending(t, at(10*sec-claimLeadForTest))
	h.clock.AdvanceTo(at(10*sec - claimLeadForTest))
	h.clock.waitPending(t, at(10*sec))
	h.cancel() // the stop signal, between the claim and the instant
	h.clock.AdvanceTo(at(10 * sec))
	checkRun(t, h.app.next(t), "bill", at(10*sec), 42, at(40*sec))
	if rest := h.finish(); len(rest) != 0 {
		checkSlots(t, "extra triggers", rest)
	}
}

// fakeFates says which slots have a recorded fate.
type fakeFates map[string]time.Time

func (f fakeFates) Recorded(_ context.Context, job string, slot time.Time) (bool, error) {
	return f[job].Equal(slot), nil
}

// A new term after an ungraceful end records the previous leader's last
// early claim that has no recorded fate as missed, claim_orphaned, and
// does not fire it; a recorded one, a graceful end, or a claim made at
// its instant records nothing.
func TestOrphanedEarlyClaim(t *testing.T) {
	const sec = time.Second
	slot := at(10 * sec)
	early := kvlayout.Claim{Slot: slot, FencingToken: 7, ID: "old", ClaimedAt: slot.Add(-50 * time.Millisecond)}
	for _, c := range []struct {
		name     string
		unclean  bool
		record   kvlayout.Claim
		recorded fakeFates
		want     []LastRun
	}{
		{"unclean, no fate", true, early, fakeFates{}, []LastRun{{Slot: slot, Outcome: fate.Missed, Reason: fate.Orphaned}}},
		{"unclean, fate recorded", true, early, fakeFates{"bill": slot}, nil},
		{"graceful release", false, early, fakeFates{}, nil},
		{"claimed at its instant", true, kvlayout.Claim{Slot: slot, FencingToken: 7, ClaimedAt: slot.Add(time.Millisecond)}, fakeFates{}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			opts, rec := withRecorder(Options{LeaseMargin: 5 * sec, Fates: c.recorded})
			h := newHarness(t, []Job{job("bill", 10*sec)}, opts)
			h.clock.AdvanceTo(slot.Add(sec)) // the new term starts after the instant
			h.term.last["bill"] = slot
			h.term.records = map[string]kvlayout.Claim{"bill": c.record}
			h.term.unclean = c.unclean
			h.lead()
			h.clock.waitPending(t, at(20*sec))
			checkRecorded(t, rec.all(), c.want...)
			if rest := h.finish(); len(rest) != 0 {
				checkSlots(t, "the claimed slot fired again", rest)
			}
		})
	}
}

// The adaptive lead is twice the 99th percentile of the recent claim
// latencies, within its bounds.
func TestClaimLeadFollowsLatency(t *testing.T) {
	var got time.Duration
	l := newClaimLead(leadObserver{&got}, nil)
	if l.get() != initialClaimLead || got != initialClaimLead {
		t.Fatalf("initial lead %s (reported %s), want %s", l.get(), got, initialClaimLead)
	}
	for range claimLeadSamples {
		l.observe(time.Millisecond)
	}
	if l.get() != minClaimLead {
		t.Errorf("lead after fast claims %s, want the floor %s", l.get(), minClaimLead)
	}
	for range 10 {
		l.observe(30 * time.Millisecond) // the top few percent
	}
	if l.get() != 60*time.Millisecond || got != 60*time.Millisecond {
		t.Errorf("lead %s (reported %s), want 2 × the 99th percentile, 60ms", l.get(), got)
	}
	l.observe(2 * time.Second)
	if l.get() != maxClaimLead {
		t.Errorf("lead after a slow claim %s, want the ceiling %s", l.get(), maxClaimLead)
	}
	for range claimLeadSamples {
		l.observe(time.Millisecond)
	}
	if l.get() != minClaimLead {
		t.Errorf("lead once the slow claims left the window %s, want %s", l.get(), minClaimLead)
	}
}

type leadObserver struct{ got *time.Duration }

func (leadObserver) SlotDone(string, fate.Outcome, fate.Reason) {}
func (leadObserver) TriggerSent(string, time.Duration)          {}
func (leadObserver) TriggerDone(string, time.Duration)          {}
func (o leadObserver) ClaimLead(d time.Duration)                { *o.got = d }

// A claim that loses while the record stays before its slot (another
// writer rewrote the record under both of Claim's rounds) leaves the slot
// unclaimed: it is recorded as missed, claim_failed, never dropped
// silently; the next slot fires.
func TestClaimLostToAnotherWriterIsRecorded(t *testing.T) {
	const sec = time.Second
	opts, rec := withRecorder(Options{LeaseMargin: 5 * sec})
	h := newHarness(t, []Job{job("bill", 10*sec)}, opts)
	h.term.races = map[string]int{"bill": 1}
	h.lead()
	h.clock.waitPending(t, at(10*sec))
	h.clock.AdvanceTo(at(10 * sec))
	h.clock.waitPending(t, at(20*sec))
	checkRecorded(t, rec.all(), LastRun{Slot: at(10 * sec), Outcome: fate.Missed, Reason: fate.ClaimFailed})
	h.clock.AdvanceTo(at(20 * sec))
	checkRun(t, h.app.next(t), "bill", at(20*sec), 42, at(50*sec))
	if rest := h.finish(); len(rest) != 0 {
		checkSlots(t, "extra triggers", rest)
	}
}
