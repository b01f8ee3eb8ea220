package faults

// Scenarios for issue 10, "What the fault suite must be able to see":
// writes that Consul applied but whose answers were lost (a reset
// connection, or a 500 as around a Raft leader change), a slow agent, a
// pause shorter than Consul's view of the session, and SIGTERM while a
// take or an acquire is in flight. Each is checked by the strict checker
// and by its own assertions on what the fault did, below.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/consultest"
	"github.com/leadercron/leadercron/internal/ledger"
)

// ambKVPrefix is the fleet's KV prefix (LEADERCRON_SERVICE=faults).
const ambKVPrefix = "leadercron/faults"

// TestConsulAmbiguousClaims makes every third claim Txn ambiguous: Consul
// applies it, and the leader gets a reset connection (then, in a second
// phase, a 500) instead of the answer. A claim is the slot's only ticket:
// once it is written no one else may fire the slot, so the leader must
// find out that the write was its own (re-read it) and fire, or record the
// slot as missed with reason claim_unknown. Nothing may fire twice.
//
// Old code: the retry re-read the record, saw the slot claimed, took that
// for a peer's claim and moved on: the slot was neither fired nor
// recorded.
func TestConsulAmbiguousClaims(t *testing.T) {
	t.Parallel()
	r := rng(t.Name())
	f := newFleet(t, fleetOpts{route: faulty})
	_, from := f.warm()
	var excused []window
	loop(func(int) {
		for _, loss := range []consultest.Loss{consultest.ResetAnswer, consultest.Answer500} {
			d := between(r, 7*time.Second, 8*time.Second)
			at := f.h.Fault(fmt.Sprintf("every 3rd claim applied, its answer lost (%s), for %s", loss, d.Round(time.Millisecond)))
			excused = append(excused, ambLoseClaimAnswers(f, at, d, 3, loss, "claim answers lost"))
		}
	})
	to := f.settle(time.Now(), 6, 30*time.Second)
	applied := 0
	for _, p := range f.faults {
		applied += p.Lost()[consultest.OpClaim].Applied
	}
	if applied == 0 {
		t.Fatal("no claim was applied with its answer lost: the fault did nothing")
	}
	evs, _ := f.h.Snapshot()
	fired, recorded, lost := 0, 0, []string{}
	for _, e := range evs {
		if e.Kind != "ambiguous" {
			continue
		}
		switch {
		case ambFired(evs, e.Job, e.Slot) > 0:
			fired++
		case ambRecordedAs(evs, e.Job, e.Slot, reasonUnknown):
			recorded++
		default:
			lost = append(lost, fmt.Sprintf("%s@%s (claimed by %s, %s)", e.Job, e.Slot.UTC().Format("15:04:05"), e.Sidecar, e.Note))
		}
	}
	if len(lost) > 0 {
		t.Errorf("%d of %d slots whose claim was applied but its answer lost neither fired nor were recorded as %s:\n  %s",
			len(lost), fired+recorded+len(lost), reasonUnknown, strings.Join(lost, "\n  "))
	}
	c := f.spec(from, to, time.Time{}, excused...)
	c.strict = true
	finish(t, f.h, c, fmt.Sprintf("%d claims applied, answer lost: %d fired, %d recorded %s, %d vanished",
		applied, fired, recorded, reasonUnknown, len(lost)))
}

// TestConsulAmbiguousLock loses the answers of applied renews (every
// second one: reset, 500, or held 700 ms), then of releases and acquires
// across graceful handovers: a lost or late renew answer alone must not
// cost the leadership (the next renew succeeds well inside the lease), a
// release whose answer was lost must not impose the lock-delay on the
// next holder, and an acquire whose answer was lost must not give two
// holders or a stale trigger.
//
// Old code: a renew timed out after TTL/3 and the next one was sent a
// retry interval after that, so a renew answer held 700 ms let the lease
// run out although Consul had renewed the session.
func TestConsulAmbiguousLock(t *testing.T) {
	t.Parallel()
	r := rng(t.Name())
	f := newFleet(t, fleetOpts{route: faulty})
	_, from := f.warm()
	var first time.Time
	var excused []window
	var notes []string
	loop(func(int) {
		// Renews: every second answer lost (reset, then 500), then every
		// second one held 700 ms after Consul applied it: past TTL/3, a
		// renew timeout that gives up on an answer that is only late.
		at := f.h.Fault("every 2nd renew applied, its answer lost")
		for _, loss := range []consultest.Loss{consultest.ResetAnswer, consultest.Answer500, consultest.LateAnswer} {
			rule := consultest.Rule{Match: consultest.Ops(consultest.OpRenew), Every: 2, Loss: loss}
			if loss == consultest.LateAnswer {
				rule.Hold = 700 * time.Millisecond
				f.h.Fault("every 2nd renew applied, its answer held 700ms")
			}
			for _, p := range f.faults {
				p.LoseAnswers(rule)
			}
			sleep(between(r, 3*time.Second, 4*time.Second))
		}
		for _, p := range f.faults {
			p.LoseAnswers()
		}
		end := f.h.Fault("renew answers delivered again")
		// A renew answered 700 ms late leaves less than the margin of
		// lease for a moment before it lands (the lease counts from the
		// send of the last renew answered): a slot then is missed,
		// recorded.
		excused = append(excused, window{from: at, to: end.Add(time.Second), why: "renew answers lost or late",
			reasons: []string{reasonLease}, mustRecord: true})
		evs, _ := f.h.Snapshot()
		if s, free := ambLockSessions(evs, at, end); len(s) != 1 || free {
			t.Errorf("lost renew answers cost the leadership: the lock had %d sessions (free at times: %v) from %s to %s",
				len(s), free, at.Format("15:04:05.000"), end.Format("15:04:05.000"))
		}

		// Handovers whose release, and the next holder's acquire, are
		// applied but their answers lost.
		for _, loss := range []consultest.Loss{consultest.Answer500, consultest.ResetAnswer} {
			l := f.leader(2, time.Now(), 30*time.Second)
			id := f.procs[l].id
			for _, p := range f.faults {
				p.LoseAnswers(
					consultest.Rule{Match: consultest.Ops(consultest.OpRelease), Loss: loss},
					consultest.Rule{Match: consultest.Ops(consultest.OpAcquire), Loss: loss, Max: 1},
				)
			}
			sleep(between(r, 0, time.Second))
			at := f.h.Fault(fmt.Sprintf("SIGTERM %s; release and acquire answers lost (%s)", id, loss))
			if first.IsZero() {
				first = at
			}
			f.procs[l].signal(t, syscall.SIGTERM)
			if code := f.procs[l].wait(t, 15*time.Second); code != 0 {
				t.Errorf("leader exited %d after SIGTERM, want 0", code)
			}
			evs := f.h.WaitFor(t, 15*time.Second, "a trigger from the new leader", triggersSince(at, 1, id))
			released, took := ambLockMoves(evs, at, id)
			switch {
			case released.IsZero() || took.IsZero():
				t.Errorf("handover from %s not seen by the lock watcher (released %v, taken %v)", id, released, took)
			case took.Sub(released) > time.Second:
				t.Errorf("lock taken %s after its release by %s (answer lost: %s): a lock-delay was imposed (want under 1s)",
					took.Sub(released).Round(time.Millisecond), id, loss)
			}
			for _, p := range f.faults {
				p.LoseAnswers()
			}
			excused = append(excused, window{from: at, to: took.Add(2 * time.Second), why: "graceful handover, acquire answer lost",
				reasons: []string{reasonNoLeader, reasonEnded}, mustRecord: true})
			notes = append(notes, fmt.Sprintf("%s: drain %s, release→holder %s", loss,
				released.Sub(at).Round(10*time.Millisecond), took.Sub(released).Round(10*time.Millisecond)))
			f.restart(l)
		}
	})
	lost := map[consultest.Op]consultest.LostAnswers{}
	for _, p := range f.faults {
		for op, n := range p.Lost() {
			c := lost[op]
			c.Lost += n.Lost
			c.Applied += n.Applied
			c.Late += n.Late
			lost[op] = c
		}
	}
	for _, op := range []consultest.Op{consultest.OpRenew, consultest.OpRelease, consultest.OpAcquire} {
		if lost[op].Applied == 0 {
			t.Errorf("no %s was applied with its answer lost: the fault did nothing (%+v)", op, lost)
		}
	}
	if lost[consultest.OpRenew].Late+lost[consultest.OpRenew].Applied == 0 {
		t.Errorf("no renew answer was lost or held: the fault did nothing (%+v)", lost)
	}
	to := f.settle(time.Now(), 6, 30*time.Second)
	c := f.spec(from, to, first, excused...)
	c.strict = true
	v := finish(t, f.h, c, fmt.Sprintf("answers lost of applied renews %d (and %d held 700ms, delivered), releases %d, acquires %d; %s",
		lost[consultest.OpRenew].Applied, lost[consultest.OpRenew].Late, lost[consultest.OpRelease].Applied, lost[consultest.OpAcquire].Applied, strings.Join(notes, "; ")))
	if v.TwoLeaders > 0 {
		t.Errorf("two sidecars acted as leader for %s", v.TwoLeaders)
	}
}

// TestSlowAgent delays every Consul request by 10% to 40% of the TTL
// (200-800 ms, drawn per request) for 20 s. A slow agent is not a dead
// one: the leader must keep the lock the whole time (one session), and
// every slot it could not fire must be recorded with a reason.
//
// Old code: a renew timed out after TTL/3 and the next one was scheduled
// from its failure, so the lease ran out; 9 different sessions held the
// lock in 20 s at 0.5 s of latency.
func TestSlowAgent(t *testing.T) {
	t.Parallel()
	r := rng(t.Name())
	f := newFleet(t, fleetOpts{route: faulty})
	_, from := f.warm()
	const slowFor = 20 * time.Second
	lo, hi := ttl/10, ttl*4/10
	reasons := []string{reasonLease, reasonUnknown, reasonClaim, reasonOverslept}
	var excused []window
	var note string
	loop(func(int) {
		at := f.h.Fault(fmt.Sprintf("consul answers %s-%s late, for %s", lo, hi, slowFor))
		for _, p := range f.faults {
			p.DelayBetween(lo, hi, r.Uint64())
		}
		sleep(slowFor)
		for _, p := range f.faults {
			p.Delay(0)
		}
		end := f.h.Fault("consul fast again")
		// Requests sent before the end are still held up to hi.
		excused = append(excused, window{from: at, to: end.Add(hi + time.Second), why: "consul slow", reasons: reasons, mustRecord: true})
		evs, _ := f.h.Snapshot()
		sessions, free := ambLockSessions(evs, at, end)
		if len(sessions) != 1 || free {
			t.Errorf("leadership lost while Consul was slow: %d sessions held the lock in %s (free at times: %v)", len(sessions), slowFor, free)
		}
		note = fmt.Sprintf("%d session(s) held the lock in %s of %s-%s latency", len(sessions), slowFor, lo, hi)
	})
	to := f.settle(time.Now(), 6, 30*time.Second)
	evs, _ := f.h.Snapshot()
	for _, w := range excused {
		if bad := ambUnexplained(evs, jobs, ambLater(from, w.from), ambEarlier(to, w.to), w.reasons); len(bad) > 0 {
			t.Errorf("slots missed while Consul was slow, not recorded with one of %v:\n  %s", w.reasons, strings.Join(bad, "\n  "))
		}
	}
	c := f.spec(from, to, time.Time{}, excused...)
	c.strict = true
	finish(t, f.h, c, note)
}

// TestShortPause stops the leader (SIGSTOP) for between TTL-TTL/5 and
// 2xTTL: its local lease ends during the pause while Consul, which waits
// up to 2xTTL, may still show its session holding the lock. After SIGCONT
// it must not trigger on the old lease, whatever Consul shows.
func TestShortPause(t *testing.T) {
	t.Parallel()
	r := rng(t.Name())
	f := newFleet(t, fleetOpts{})
	_, from := f.warm()
	var first time.Time
	var excused []window
	var notes []string
	loopN(2, func(int) {
		l := f.leader(2, time.Now(), 30*time.Second)
		sleep(between(r, 0, time.Second))
		id := f.procs[l].id
		pause := between(r, ttl-ttl/5, 2*ttl)
		at := f.h.Fault(fmt.Sprintf("SIGSTOP %s for %s", id, pause.Round(time.Millisecond)))
		if first.IsZero() {
			first = at
		}
		f.procs[l].signal(t, syscall.SIGSTOP)
		sleep(pause)
		evs, _ := f.h.Snapshot()
		token := tokenOf(evs, id, at)
		cont := f.h.Fault("SIGCONT " + id)
		f.procs[l].signal(t, syscall.SIGCONT)
		f.h.WaitFor(t, 15*time.Second, "triggers after the pause", triggersSince(cont, 3))
		sleep(time.Second)
		evs, _ = f.h.Snapshot()
		for _, e := range evs {
			if e.Kind == "trigger" && e.Sidecar == id && e.Token == token && e.At.After(cont) {
				t.Errorf("%s fired %s@%s on its old lease (token %d) at %s, after SIGCONT: its lease ended in the pause",
					id, e.Job, e.Slot.UTC().Format("15:04:05"), token, e.At.Format("15:04:05.000"))
			}
		}
		// In the pause nothing can be recorded; after it, the paused
		// leader records what its lost lease cost it, and the next one
		// (after the lock-delay of the session given up) the gap.
		reasons := []string{reasonLease, reasonOverslept, reasonNoLeader, reasonEnded, reasonUnknown, reasonClaim}
		excused = append(excused,
			window{from: at, to: cont, why: "leader paused", reasons: reasons},
			window{from: cont, to: cont.Add(lockDelay + 2*time.Second), why: "after the pause", reasons: reasons, mustRecord: true})
		sessions, _ := ambLockSessions(evs, at, cont)
		next := "retaken by " + id + " itself"
		if took := lockTakeover(evs, at, id); took >= 0 {
			next = fmt.Sprintf("taken over %s after SIGSTOP", took.Round(10*time.Millisecond))
		}
		notes = append(notes, fmt.Sprintf("paused %s (session survived in Consul: %v); %s",
			pause.Round(10*time.Millisecond), len(sessions) == 1 && !ambLockFreed(evs, at, cont), next))
	})
	to := f.settle(time.Now(), 6, 30*time.Second)
	c := f.spec(from, to, first, excused...)
	c.strict = true
	finish(t, f.h, c, strings.Join(notes, "; "))
}

// TestRunNowSameSecond issues run-now requests for tick (every second)
// while it runs, each landing in the same second as a scheduled slot, and
// where possible two in one second (the second is refused while the first
// is pending; once the leader took the first, it is issued again). Every
// request must fire exactly once under its own Idempotency-Key, and every
// scheduled slot of that second must fire too.
//
// Old code: a run-now trigger's key was <job>@<second>, the same as the
// scheduled slot's, so an app that deduplicates by key (as the examples
// do) refused one of them; the recording app does not deduplicate, so
// the keys are compared here.
func TestRunNowSameSecond(t *testing.T) {
	t.Parallel()
	r := rng(t.Name())
	f := newFleet(t, fleetOpts{})
	_, from := f.warm()
	client := consultest.Client(t, f.envs[0]["CONSUL_HTTP_ADDR"])
	store := ledger.New(client, ambKVPrefix)
	type issued struct {
		id  string
		sec time.Time // the second the request was written in
	}
	var reqs []issued
	doubles, refused := 0, 0
	loopN(3, func(int) {
		f.leader(1, time.Now(), 30*time.Second)
		// Just after a second boundary: the leader lists requests at
		// most once a second, woken by the writes of the slot that
		// just fell due, so a request written then is taken within
		// the second, as that slot fires.
		now := time.Now()
		sleep(now.Truncate(time.Second).Add(2*time.Second + time.Millisecond).Sub(now))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		req, created, err := store.RequestRun(ctx, "tick", "faults-test")
		cancel()
		if err != nil || !created {
			t.Fatalf("run-now request: created=%v err=%v", created, err)
		}
		sec := req.At.Truncate(time.Second)
		reqs = append(reqs, issued{req.ID, sec})
		f.h.Fault("run-now tick " + req.ID + " written at " + req.At.Format("15:04:05.000"))
		// A second one in the same second, with the command.
		for time.Now().Before(sec.Add(900 * time.Millisecond)) {
			before := time.Now()
			run := ambRunCommand(t, f, 1, "tick")
			after := time.Now()
			if !run.created {
				refused++
				f.h.Fault("run-now tick refused: " + run.id + " pending")
				ambWaitTaken(t, client, "tick", 3*time.Second)
				continue
			}
			// Written between before and after; the leader's log
			// tells the exact time (below).
			at := after.Truncate(time.Second)
			reqs = append(reqs, issued{run.id, at})
			f.h.Fault(fmt.Sprintf("run-now tick %s issued by the command in %s", run.id, (after.Sub(before)).Round(time.Millisecond)))
			if at.Equal(sec) {
				doubles++
			}
			break
		}
		ambWaitTaken(t, client, "tick", 5*time.Second)
		sleep(between(r, time.Second, 2*time.Second))
	})
	to := f.settle(time.Now(), 6, 30*time.Second)
	evs, _ := f.h.Snapshot()
	// The second each request was written in, as the leader logged it.
	for _, l := range ambLogLines(f.procs) {
		for i, q := range reqs {
			if at, ok := l["requested_at"].(string); ok && l["request"] == q.id {
				if ts, err := time.Parse(time.RFC3339Nano, at); err == nil {
					reqs[i].sec = ts.Truncate(time.Second)
				}
			}
		}
	}

	// Each request fired exactly once, under its own key.
	for _, q := range reqs {
		var got []event
		for _, e := range evs {
			if e.Kind == "trigger" && e.RunNow == q.id {
				got = append(got, e)
			}
		}
		want := "tick@run-now/" + q.id
		switch {
		case len(got) != 1:
			t.Errorf("run-now %s (written in %s) fired %d times with its id in Leadercron-Run-Now, want once", q.id, q.sec.UTC().Format("15:04:05"), len(got))
		case got[0].Key != want:
			t.Errorf("run-now %s fired with Idempotency-Key %q, want %q", q.id, got[0].Key, want)
		}
		// The scheduled slot of that second fired too, or, if the
		// run-now was still in flight when it fell due, was recorded
		// as skipped for overlap (the job forbids overlap).
		if ambFired(evs, "tick", q.sec) == 0 && !ambSkippedOverlap(evs, "tick", q.sec) {
			t.Errorf("scheduled slot tick@%s, the second of run-now %s, neither fired nor was recorded skipped for overlap", q.sec.UTC().Format("15:04:05"), q.id)
		}
	}
	if dups := ambKeyCollisions(evs); len(dups) > 0 {
		t.Errorf("%d Idempotency-Keys sent for two different runs (an app that deduplicates refuses the second):\n  %s", len(dups), strings.Join(dups, "\n  "))
	}
	// A run-now still in flight when the job's next slot falls due makes
	// that slot skip for overlap (the job forbids overlap): the one loss
	// a run-now may cause, and it must be recorded.
	var excused []window
	for _, q := range reqs {
		excused = append(excused, window{from: q.sec, to: q.sec.Add(2 * time.Second), why: "run-now in flight",
			reasons: []string{reasonOverlap}, mustRecord: true})
	}
	c := f.spec(from, to, time.Time{}, excused...)
	c.strict = true
	c.runNows = len(reqs)
	finish(t, f.h, c, fmt.Sprintf("%d run-now requests in the seconds of scheduled slots, %d pairs in one second, %d refused as pending", len(reqs), doubles, refused))
}

// TestSigtermDuringTake sends SIGTERM to the leader while it takes a
// run-now request: Consul is slowed (60 ms) and the take's answer held
// 150 ms more once Consul applied it, and the SIGTERM lands then. The
// request is gone from Consul, so it must fire exactly once (inside the
// old leader's drain), or be recorded as missed with a reason: never lost
// silently.
//
// Old code: the take was made with the leadership's context, so SIGTERM
// cancelled it; the request was deleted but neither fired nor recorded.
func TestSigtermDuringTake(t *testing.T) {
	t.Parallel()
	r := rng(t.Name())
	const latency = 60 * time.Millisecond
	f := newFleet(t, fleetOpts{route: faulty})
	for _, p := range f.faults {
		p.Delay(latency)
	}
	_, from := f.warm()
	all := slices.Clone(f.procs)
	var first time.Time
	var excused []window
	var ids []string
	var note string
	loopN(3, func(int) {
		l := f.leader(2, time.Now(), 30*time.Second)
		id := f.procs[l].id
		taken := make(chan struct{}, 1)
		f.faults[l].LoseAnswers(consultest.Rule{Match: consultest.Ops(consultest.OpTake), Loss: consultest.LateAnswer,
			Hold: 150 * time.Millisecond, Max: 1, OnApplied: func(consultest.Request) {
				select {
				case taken <- struct{}{}:
				default:
				}
			}})
		sleep(between(r, 0, 500*time.Millisecond))
		// The command runs on while the leader takes its request: the
		// SIGTERM goes out as soon as the take is applied.
		type result struct {
			run ambRun
			err error
		}
		issued := make(chan result, 1)
		go func() {
			run, err := ambRunCommandErr(f, (l+1)%3, "tick")
			issued <- result{run, err}
		}()
		select {
		case <-taken:
		case <-time.After(10 * time.Second):
			t.Fatalf("leader %s did not take the run-now request within 10s", id)
		}
		at := f.h.Fault("SIGTERM " + id + " as its take of a run-now request is applied")
		if first.IsZero() {
			first = at
		}
		f.procs[l].signal(t, syscall.SIGTERM)
		res := <-issued
		if res.err != nil {
			t.Fatal(res.err)
		}
		if !res.run.created {
			t.Fatalf("run-now request not created: %s", res.run.out)
		}
		ids = append(ids, res.run.id)
		f.h.Fault("run-now tick " + res.run.id + " was the one taken")
		if code := f.procs[l].wait(t, 15*time.Second); code != 0 {
			t.Errorf("leader exited %d after SIGTERM, want 0", code)
		}
		evs := f.h.WaitFor(t, 10*time.Second, "a trigger from the new leader", triggersSince(at, 1, id))
		released, _ := ambLockMoves(evs, at, id)
		excused = append(excused, window{from: at, to: released.Add(time.Second), why: "graceful handover",
			reasons: []string{reasonEnded, reasonNoLeader}, mustRecord: true})
		note = fmt.Sprintf("SIGTERM with the take applied, its answer in flight; released after %s", released.Sub(at).Round(time.Millisecond))
		f.faults[l].LoseAnswers()
		f.restart(l)
		all = append(all, f.procs[l])
	})
	to := f.settle(time.Now(), 6, 30*time.Second)
	sleep(time.Second) // the fates of the last runs reach the logs
	evs, _ := f.h.Snapshot()
	lines := ambLogLines(all)
	var bad []string
	fates := map[string]int{}
	for _, q := range ids {
		fired, rec := ambRunNowFate(evs, lines, q)
		switch {
		case fired > 1:
			bad = append(bad, fmt.Sprintf("run-now %s fired %d times", q, fired))
		case fired == 0 && rec == "":
			bad = append(bad, fmt.Sprintf("run-now %s lost: taken, neither fired nor recorded", q))
		case fired == 1:
			fates["fired"]++
		default:
			fates["recorded "+rec]++
		}
	}
	if len(bad) > 0 {
		t.Errorf("run-now requests taken as SIGTERM came:\n  %s", strings.Join(bad, "\n  "))
	}
	c := f.spec(from, to, first, excused...)
	c.strict = true
	c.runNows = len(ids)
	finish(t, f.h, c, fmt.Sprintf("%d run-now taken during SIGTERM: %v; %s", len(ids), fates, note))
}

// TestSigtermDuringAcquire hands the lock over (SIGTERM to the leader)
// and sends SIGTERM to the standby that acquires it the moment Consul has
// applied its acquire, while the answer is held (so the standby does not
// know it holds the lock). The third sidecar, slowed a little so that it
// loses the race, must then take the lock at once: the exiting standby
// must release what it may hold, not leave it to the lock-delay.
//
// Old code: the exiting standby destroyed its session, which still held
// the key, so Consul imposed the lock-delay on the next holder.
func TestSigtermDuringAcquire(t *testing.T) {
	t.Parallel()
	r := rng(t.Name())
	f := newFleet(t, fleetOpts{route: faulty})
	_, from := f.warm()
	// The standby's release and the third's acquire, plus the lock
	// watcher's view; far below the 2 s lock-delay.
	const bound = 1500 * time.Millisecond
	var first time.Time
	var excused []window
	var notes []string
	loopN(2, func(int) {
		l := f.leader(2, time.Now(), 30*time.Second)
		a, b := (l+1)%3, (l+2)%3
		if r.IntN(2) == 1 {
			a, b = b, a
		}
		lid, aid, bid := f.procs[l].id, f.procs[a].id, f.procs[b].id
		f.faults[b].Delay(150 * time.Millisecond)
		applied := make(chan struct{}, 1)
		f.faults[a].LoseAnswers(consultest.Rule{Match: consultest.Ops(consultest.OpAcquire), Loss: consultest.LateAnswer,
			Hold: 400 * time.Millisecond, Max: 1, OnApplied: func(consultest.Request) {
				select {
				case applied <- struct{}{}:
				default:
				}
			}})
		sleep(between(r, 0, time.Second))
		at := f.h.Fault("SIGTERM leader " + lid)
		if first.IsZero() {
			first = at
		}
		f.procs[l].signal(t, syscall.SIGTERM)
		select {
		case <-applied:
		case <-time.After(10 * time.Second):
			t.Fatalf("standby %s did not acquire within 10s of the leader's SIGTERM", aid)
		}
		atA := f.h.Fault("SIGTERM standby " + aid + " as its acquire is applied")
		f.procs[a].signal(t, syscall.SIGTERM)
		if code := f.procs[l].wait(t, 15*time.Second); code != 0 {
			t.Errorf("leader %s exited %d after SIGTERM, want 0", lid, code)
		}
		if code := f.procs[a].wait(t, 15*time.Second); code != 0 {
			t.Errorf("standby %s exited %d after SIGTERM, want 0", aid, code)
		}
		evs := f.h.WaitFor(t, 15*time.Second, "a trigger from "+bid, func(evs []event) bool {
			for _, e := range evs {
				if e.Kind == "trigger" && e.Sidecar == bid && e.At.After(atA) {
					return true
				}
			}
			return false
		})
		var heldA, tookB time.Time
		for _, e := range evs {
			if e.Kind == "lock" && e.At.After(at) && e.Session != "" {
				if e.Sidecar == aid && heldA.IsZero() {
					heldA = e.At
				}
				if e.Sidecar == bid && tookB.IsZero() {
					tookB = e.At
				}
			}
		}
		switch {
		case heldA.IsZero():
			t.Errorf("the lock watcher never saw %s hold the lock: its acquire was not applied as planned", aid)
		case tookB.IsZero():
			t.Errorf("%s never took the lock", bid)
		case tookB.Sub(atA) > bound:
			t.Errorf("%s took the lock %s after %s got SIGTERM holding it unknowingly, want under %s (lock-delay is %s)",
				bid, tookB.Sub(atA).Round(time.Millisecond), aid, bound, lockDelay)
		}
		if !tookB.IsZero() {
			notes = append(notes, fmt.Sprintf("%s held the lock unknowingly, took over %s after its SIGTERM", aid, tookB.Sub(atA).Round(10*time.Millisecond)))
		}
		excused = append(excused, window{from: at, to: ambLater(tookB, atA).Add(2 * time.Second), why: "handover, standby stopped while acquiring",
			reasons: []string{reasonNoLeader, reasonEnded}, mustRecord: true})
		f.faults[b].Delay(0)
		f.faults[a].LoseAnswers()
		f.restart(l)
		f.restart(a)
	})
	to := f.settle(time.Now(), 6, 30*time.Second)
	c := f.spec(from, to, first, excused...)
	c.strict = true
	finish(t, f.h, c, strings.Join(notes, "; "))
}

// ambLoseClaimAnswers loses the answer of every nth claim Txn of every
// sidecar after Consul applied it, for d from at, marking each claim of
// those Txns, and returns the window: slots recorded claim_unknown there
// are explained, and every lost one must be recorded.
func ambLoseClaimAnswers(f *fleet, at time.Time, d time.Duration, every int, loss consultest.Loss, why string) window {
	for i, p := range f.faults {
		p.LoseAnswers(consultest.Rule{Match: consultest.Ops(consultest.OpClaim), Every: every, Loss: loss,
			OnApplied: ambMarkClaim(f.h, f.procs[i].id, loss)})
	}
	sleep(d)
	for _, p := range f.faults {
		p.LoseAnswers()
	}
	end := f.h.Fault("claim answers delivered again")
	return window{from: at, to: end.Add(time.Second), why: why, reasons: []string{reasonUnknown}, mustRecord: true}
}

// ambMarkClaim returns an OnApplied hook that records, for sidecar id, the
// job and slot of every claim of a claim Txn (a batch: the claims due
// together) that Consul applied and whose answer is about to be lost.
func ambMarkClaim(h *history, id string, loss consultest.Loss) func(consultest.Request) {
	return func(r consultest.Request) {
		claims := ambClaimsOf(r.Body)
		for _, c := range claims {
			h.Add(event{Kind: "ambiguous", Sidecar: id, Job: c.job, Slot: c.slot,
				Note: fmt.Sprintf("claim applied, answer lost (%s), batch of %d", loss, len(claims))})
		}
	}
}

type ambClaim struct {
	job  string
	slot time.Time
}

// ambClaimsOf reads the jobs and slots of a claim Txn from its body: each
// cas on <prefix>/jobs/<job>/last, whose value holds the slot.
func ambClaimsOf(body []byte) []ambClaim {
	var ops []struct {
		KV *struct {
			Verb, Key string
			Value     []byte
		}
	}
	if json.Unmarshal(body, &ops) != nil {
		return nil
	}
	var out []ambClaim
	for _, o := range ops {
		if o.KV == nil || o.KV.Verb != "cas" || !strings.HasSuffix(o.KV.Key, "/last") {
			continue
		}
		var rec struct {
			Slot time.Time `json:"slot"`
		}
		if json.Unmarshal(o.KV.Value, &rec) == nil {
			out = append(out, ambClaim{path.Base(path.Dir(o.KV.Key)), rec.Slot})
		}
	}
	return out
}

// ambFired counts the triggers of job's scheduled slot s (run-now
// triggers excluded).
func ambFired(evs []event, job string, s time.Time) int {
	n := 0
	for _, e := range evs {
		if e.Kind == "trigger" && e.RunNow == "" && e.Job == job && e.Slot.Equal(s) {
			n++
		}
	}
	return n
}

// ambReason is the reason of a "record" event.
func ambReason(e event) string {
	if e.Reason != "" {
		return e.Reason
	}
	_, reason, _ := strings.Cut(e.Note, " ") // "missed claim_unknown"
	return reason
}

// ambRecordedAs reports whether a sidecar recorded job's slot s as missed or
// skipped with one of reasons.
func ambRecordedAs(evs []event, job string, s time.Time, reasons ...string) bool {
	for _, e := range evs {
		if e.Kind == "record" && e.RunNow == "" && e.Job == job && !s.Before(e.Slot) && !s.After(e.Until) && slices.Contains(reasons, ambReason(e)) {
			return true
		}
	}
	return false
}

// ambUnexplained lists the slots of jobs in (from, to] that did not fire and
// were not recorded with one of reasons.
func ambUnexplained(evs []event, jobs map[string]string, from, to time.Time, reasons []string) []string {
	var out []string
	for job, spec := range jobs {
		sched, err := parser.Parse(spec)
		if err != nil {
			return []string{err.Error()}
		}
		for s := sched.Next(from); !s.After(to); s = sched.Next(s) {
			if ambFired(evs, job, s) == 0 && !ambRecordedAs(evs, job, s, reasons...) {
				rec := "not recorded"
				for _, e := range evs {
					if e.Kind == "record" && e.RunNow == "" && e.Job == job && !s.Before(e.Slot) && !s.After(e.Until) {
						rec = "recorded " + strings.TrimSpace(e.Outcome+" "+ambReason(e)) + " by " + e.Sidecar
					}
				}
				out = append(out, fmt.Sprintf("%s@%s: %s", job, s.UTC().Format("15:04:05"), rec))
			}
		}
	}
	slices.Sort(out)
	return out
}

// ambLockSessions returns the sessions that held the lock at some time in
// [from, to] (the holder at from included), and whether it was free at
// some time in between.
func ambLockSessions(evs []event, from, to time.Time) (sessions []string, free bool) {
	note := func(s string) {
		if s == "" {
			free = true
		} else if !slices.Contains(sessions, s) {
			sessions = append(sessions, s)
		}
	}
	cur := "-"
	for _, e := range evs {
		if e.Kind != "lock" || e.At.After(to) {
			continue
		}
		if e.At.After(from) && cur != "-" {
			note(cur)
		}
		cur = e.Session
	}
	if cur != "-" {
		note(cur)
	}
	return sessions, free
}

// ambLockFreed reports whether the lock watcher saw the key free in
// (from, to].
func ambLockFreed(evs []event, from, to time.Time) bool {
	for _, e := range evs {
		if e.Kind == "lock" && e.Session == "" && e.At.After(from) && !e.At.After(to) {
			return true
		}
	}
	return false
}

// ambLockMoves returns when the lock watcher, after at, first saw the key
// free, and then first saw it held by a sidecar other than id.
func ambLockMoves(evs []event, at time.Time, id string) (released, took time.Time) {
	for _, e := range evs {
		if e.Kind != "lock" || !e.At.After(at) {
			continue
		}
		if e.Session == "" && released.IsZero() {
			released = e.At
		}
		if e.Session != "" && e.Sidecar != id && !released.IsZero() && took.IsZero() {
			took = e.At
		}
	}
	return released, took
}

// ambKeyCollisions lists the Idempotency-Keys that came with two different
// runs (another job, slot or run-now request), not retries of one run.
func ambKeyCollisions(evs []event) []string {
	type run struct {
		job, slot, runNow string
	}
	seen := map[string]run{}
	var out []string
	for _, e := range evs {
		if e.Kind != "trigger" || e.Key == "" {
			continue
		}
		r := run{e.Job, e.Slot.UTC().Format(time.RFC3339), e.RunNow}
		if prev, ok := seen[e.Key]; ok && prev != r {
			out = append(out, fmt.Sprintf("%s: %+v and %+v", e.Key, prev, r))
			continue
		}
		seen[e.Key] = r
	}
	return out
}

// ambRun is what `leadercron run <job>` did.
type ambRun struct {
	id      string
	created bool
	out     string
}

var ambRunID = regexp.MustCompile(`\(id ([^,]+), by `)

// ambRunCommand runs `leadercron run <job>` with the environment of
// sidecar i (its Consul address and jobs), as an operator would from a
// replica.
func ambRunCommand(t *testing.T, f *fleet, i int, job string) ambRun {
	t.Helper()
	r, err := ambRunCommandErr(f, i, job)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// ambRunCommandErr is ambRunCommand for other goroutines than the test's.
func ambRunCommandErr(f *fleet, i int, job string) (ambRun, error) {
	cmd := exec.Command(the.binary, "run", "-by", "faults-test", job)
	env := map[string]string{
		"PATH":                  os.Getenv("PATH"),
		"HOME":                  os.Getenv("HOME"),
		"LEADERCRON_ID":         "operator",
		"LEADERCRON_SERVICE":    "faults",
		"LEADERCRON_LOG_FORMAT": "json",
		// A race-enabled binary sleeps a second at exit by default.
		"GORACE": "atexit_sleep_ms=0",
	}
	for k, v := range f.envs[i] {
		env[k] = v
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return ambRun{}, fmt.Errorf("leadercron run %s: %v\nstdout: %s\nstderr: %s", job, err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	m := ambRunID.FindStringSubmatch(out)
	if m == nil {
		return ambRun{}, fmt.Errorf("leadercron run %s: no request id in %q (stderr %q)", job, out, stderr.String())
	}
	// "run-now request for <job> queued (id ...)", or "a run-now request
	// for <job> is already pending (id ...); not queued again".
	return ambRun{id: m[1], created: strings.HasPrefix(out, "run-now request for "), out: out}, nil
}

// ambWaitTaken polls until no run-now request for job is pending.
func ambWaitTaken(t *testing.T, client *api.Client, job string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		pair, _, err := client.KV().Get(ambKVPrefix+"/requests/"+job, nil)
		if err == nil && pair == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("run-now request for %s still pending after %s (err %v)", job, timeout, err)
		}
		time.Sleep(10 * time.Millisecond) // polling Consul, an external process
	}
}

// ambLogLines parses the JSON log lines of procs, each with its sidecar id.
func ambLogLines(procs []*proc) []map[string]any {
	var out []map[string]any
	for _, p := range procs {
		sc := bufio.NewScanner(strings.NewReader(p.Output()))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				m["sidecar"] = p.id
				out = append(out, m)
			}
		}
	}
	return out
}

// ambRunNowFate returns how often run-now request id fired, and the outcome
// and reason a sidecar recorded for it if it did not fire. A trigger
// carrying the id in Leadercron-Run-Now counts; without it (older
// sidecars), a sidecar's log of a run-now slot fired at the request's
// time, after the sidecar logged taking the request, counts.
func ambRunNowFate(evs []event, lines []map[string]any, id string) (fired int, recorded string) {
	for _, e := range evs {
		if e.Kind == "trigger" && e.RunNow == id {
			fired++
		}
	}
	// Where and for which slot the request was taken.
	var by, slot string
	for _, l := range lines {
		if l["request"] == id {
			if at, ok := l["requested_at"].(string); ok {
				if t, err := time.Parse(time.RFC3339Nano, at); err == nil {
					by, slot = l["sidecar"].(string), t.UTC().Format(time.RFC3339)
				}
			}
			if o, ok := l["outcome"].(string); ok && (o == "missed" || o == "skipped") {
				recorded = o + " " + fmt.Sprint(l["reason"])
			}
		}
	}
	if slot == "" {
		return fired, recorded
	}
	logged := false // a run-now of that slot logged as fired by its taker
	for _, l := range lines {
		if l["sidecar"] != by || l["run_now"] != true || l["slot"] != slot {
			continue
		}
		switch o, _ := l["outcome"].(string); o {
		case "fired", "failed":
			logged = true
		case "missed", "skipped":
			if recorded == "" {
				recorded = o + " " + fmt.Sprint(l["reason"])
			}
		}
	}
	if fired == 0 && logged {
		fired = 1
	}
	return fired, recorded
}

func ambLater(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func ambEarlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// ambSkippedOverlap reports whether a sidecar recorded job's slot as
// skipped for overlap.
func ambSkippedOverlap(evs []event, job string, slot time.Time) bool {
	for _, e := range evs {
		if e.Kind == "record" && e.RunNow == "" && e.Job == job && e.Slot.Equal(slot) && e.Note == "skipped "+reasonOverlap {
			return true
		}
	}
	return false
}
