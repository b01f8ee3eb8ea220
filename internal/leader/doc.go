// Package leader elects one leader among the sidecars of a fleet through a
// Consul session lock, and lets the leader claim schedule slots.
//
// It is built on Consul's session, KV and Txn APIs rather than api.Lock,
// whose lost-lock channel is fed only by a blocking query and so misses a
// partition (hashicorp/consul#18271).
//
// Guarantees:
//
//   - A Term is handed to the lead function only after this sidecar's
//     session acquired the lock key in a Txn; its fencing token is the Raft
//     index (ModifyIndex) of that write, so tokens strictly increase with
//     each new leadership of the same Consul cluster.
//   - Leadership is a local lease: after each successful create or renew
//     sent at time s, the lease runs until s + TTL - TTL/5, by the
//     monotonic clock and by the wall clock, whichever ends first (the
//     monotonic clock stops while a host is suspended). Consul does not
//     invalidate a session earlier than TTL after its last renew, and a peer
//     must then also wait out the lock-delay, so a holder that stops acting
//     when its lease ends never acts beside a new leader. The lease decides:
//     an error from Consul only means "unknown". The lead context is
//     cancelled, with a cause wrapping ErrLockLost, when the lease ends, when
//     a renew answers 404, or when a consistent read or a slot claim shows
//     that another session holds the key.
//   - Renews go every TTL/4 counted from the previous renew's send, not its
//     answer, wait up to TTL/2 and may overlap, so an agent whose answers
//     take up to TTL/2 does not end the leadership by slowness alone (0.05
//     TTL is left for scheduling delays at that latency).
//   - Run never returns, and never campaigns again, while the lead function
//     it called is still running. On a graceful return it releases the key
//     (no lock-delay, so a standby's blocking query wakes at once) and then
//     destroys the session.
//   - Claim moves <prefix>/jobs/<job>/last forward to a slot in one Txn that
//     also checks that the session still holds the lock key, so a slot is
//     claimed at most once across the fleet whatever the sidecars' clocks
//     say. Claims made within a millisecond share one Txn (batch.go): one
//     check-session, then a check-and-set per job; a refused Txn names the
//     ops that failed, those claims are answered (a lost race or a
//     denial) and the others are sent again, so one conflict never costs
//     another job its slot.
//   - A graceful release writes released_at into the lock value, and the
//     acquire Txn reads the value it replaces: Term.PreviousClean tells a
//     new leader whether the leadership before it ended cleanly (every
//     slot it claimed fired or recorded) or was ended by Consul.
//   - Every write has three outcomes and the third is resolved, not
//     guessed. A claim or a run-now take whose answer was lost is retried
//     by re-reading: a claim record holding this term's slot, token and id
//     is this term's (reported won once); a request gone while the lease
//     runs was taken by this term. A Txn Consul refused (all or nothing) is
//     an error for which NotApplied reports true. An acquire cut short when
//     Run ends is released (no lock-delay) before the session is destroyed.
//
// Not guaranteed: that the holder of a claim delivers it. A sidecar that
// claims a slot and then pauses may be too late to send it (the scheduler
// and the app client check the lease up to the first write); a claim or
// take whose outcome stays unknown until the lease runs short is given up
// and reported as an error, and its slot is fired by nobody. The lock is
// advisory and the app is the only true fence. A session destroyed by an operator, or
// whose node is deregistered, is invalidated at once, leaving only the
// lock-delay as a margin.
package leader
