package scheduler

import (
	"slices"
	"sync"
	"time"
)

// A slot is claimed ahead of its instant, by the claim lead, so that at
// the instant only the trigger remains: the claim (a Consul Txn) is off
// the trigger path. The lead follows the claims' measured latency: twice
// the 99th percentile of the last claimLeadSamples answered claims,
// bounded:
//
//   - minClaimLead covers the batch's gathering window (1 ms) and a
//     loopback Txn to a healthy agent (1-3 ms) with room, so that on a
//     healthy agent the claim is done before the instant;
//   - maxClaimLead bounds the window in which a leader that dies between
//     its claim and the instant leaves the slot spent and unfired (the
//     next leader records it as claim_orphaned), and stays far under the
//     lease margin (TTL/5, 3 s by default) that the claim must leave at
//     the instant.
//
// A claim that takes longer than the lead delays its slot, as before.
const (
	minClaimLead     = 10 * time.Millisecond
	maxClaimLead     = 500 * time.Millisecond
	initialClaimLead = 50 * time.Millisecond
	claimLeadSamples = 64
)

// claimLead is the lead in use, from the latest claim latencies.
type claimLead struct {
	obs     Observer
	pinned  func() time.Duration // Options.ClaimLead
	mu      sync.Mutex
	samples []time.Duration // a ring of the last claimLeadSamples
	next    int
	cur     time.Duration
}

func newClaimLead(obs Observer, pinned func() time.Duration) *claimLead {
	l := &claimLead{obs: obs, pinned: pinned, cur: initialClaimLead}
	obs.ClaimLead(l.get())
	return l
}

func (l *claimLead) get() time.Duration {
	if l.pinned != nil {
		return l.pinned()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cur
}

// observe adds one answered claim's latency.
func (l *claimLead) observe(d time.Duration) {
	l.mu.Lock()
	if len(l.samples) < claimLeadSamples {
		l.samples = append(l.samples, d)
	} else {
		l.samples[l.next] = d
		l.next = (l.next + 1) % claimLeadSamples
	}
	sorted := slices.Sorted(slices.Values(l.samples))
	p99 := sorted[(len(sorted)*99)/100]
	l.cur = min(max(2*p99, minClaimLead), maxClaimLead)
	l.mu.Unlock()
	l.obs.ClaimLead(l.get())
}
