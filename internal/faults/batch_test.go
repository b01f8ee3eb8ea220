package faults

// Scenarios for issue 13: claims due at one instant share one Txn. A
// batch whose answer is lost leaves every claim in it unknown, and each
// must be resolved (fired, or recorded claim_unknown); one job of a batch
// whose record another writer touched must cost that job at most a retry,
// never the others' slots.

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/consultest"
	"github.com/leadercron/leadercron/internal/kvlayout"
)

// batchJobs are due every second together with the fleet's jobs, so that
// every claim Txn is a batch of several.
var batchJobs = map[string]string{"b1": "* * * * * *", "b2": "* * * * * *", "b3": "* * * * * *", "b4": "* * * * * *"}

func batchFleet(t *testing.T, route route) (*fleet, map[string]string) {
	env := map[string]string{}
	for name, spec := range batchJobs {
		env["LEADERCRON_JOB_"+envName(name)] = spec
	}
	all := maps.Clone(jobs)
	maps.Copy(all, batchJobs)
	return newFleet(t, fleetOpts{route: route, env: env}), all
}

// TestBatchAnswerLost loses the answer of every second claim Txn after
// Consul applied it: each claim in that batch is unknown to the leader,
// which must re-read each record and fire the slot, or record it
// claim_unknown. Nothing may fire twice or vanish.
func TestBatchAnswerLost(t *testing.T) {
	t.Parallel()
	r := rng(t.Name())
	f, all := batchFleet(t, faulty)
	_, from := f.warm()
	var excused []window
	loop(func(int) {
		d := between(r, 7*time.Second, 8*time.Second)
		at := f.h.Fault(fmt.Sprintf("every 2nd claim batch applied, its answer lost, for %s", d.Round(time.Millisecond)))
		excused = append(excused, ambLoseClaimAnswers(f, at, d, 2, consultest.ResetAnswer, "claim batch answers lost"))
	})
	to := f.settle(time.Now(), 6, 30*time.Second)
	evs, _ := f.h.Snapshot()
	fired, recorded, biggest := 0, 0, 0
	var lost []string
	for _, e := range evs {
		if e.Kind != "ambiguous" {
			continue
		}
		var n int
		if _, err := fmt.Sscanf(e.Note[strings.LastIndex(e.Note, "batch of"):], "batch of %d", &n); err == nil {
			biggest = max(biggest, n)
		}
		switch {
		case ambFired(evs, e.Job, e.Slot) > 0:
			fired++
		case ambRecordedAs(evs, e.Job, e.Slot, reasonUnknown):
			recorded++
		default:
			lost = append(lost, fmt.Sprintf("%s@%s (claimed by %s)", e.Job, e.Slot.UTC().Format("15:04:05"), e.Sidecar))
		}
	}
	if fired+recorded+len(lost) == 0 {
		t.Fatal("no claim batch was applied with its answer lost: the fault did nothing")
	}
	if biggest < 2 {
		t.Errorf("the lost Txns held at most %d claim: no batch was tested", biggest)
	}
	if len(lost) > 0 {
		t.Errorf("%d slots of lost batches neither fired nor were recorded %s:\n  %s", len(lost), reasonUnknown, strings.Join(lost, "\n  "))
	}
	c := f.spec(from, to, time.Time{}, excused...)
	c.jobs = all
	c.strict = true
	finish(t, f.h, c, fmt.Sprintf("%d claims in lost batches (up to %d a batch): %d fired, %d recorded %s, %d vanished",
		fired+recorded+len(lost), biggest, fired, recorded, reasonUnknown, len(lost)))
}

// TestBatchConflict has another writer rewrite one job's claim record
// (same slot, new index) a few times a second, so the leader's cached
// index for it goes stale and that job's cas fails inside batches. The
// batch must be sent again without it, and the job must re-read its
// record and claim again: every slot of every job fires once, with no
// excuse window at all.
func TestBatchConflict(t *testing.T) {
	t.Parallel()
	f, all := batchFleet(t, direct)
	_, from := f.warm()
	client := consultest.Client(t, f.envs[0]["CONSUL_HTTP_ADDR"])
	key := kvlayout.New("leadercron/faults").Claim("b2")
	at := f.h.Fault("another writer rewrites b2's claim record every 300ms")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	rewrites := 0
	for ctx.Err() == nil {
		if pair, _, err := client.KV().Get(key, nil); err == nil && pair != nil {
			// The same claim with one more field: Consul skips a write of
			// an identical value, and the index must move.
			var rec map[string]any
			if json.Unmarshal(pair.Value, &rec) == nil {
				rec["rewritten"] = rewrites
				value, _ := json.Marshal(rec)
				if _, err := client.KV().Put(&api.KVPair{Key: key, Value: value}, nil); err == nil {
					rewrites++
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(300 * time.Millisecond): // the writer's pace, not a synchronisation
		}
	}
	cancel()
	end := f.h.Fault(fmt.Sprintf("%d rewrites done", rewrites))
	to := f.settle(time.Now(), 6, 30*time.Second)
	refused := 0
	for _, l := range ambLogLines(f.procs) {
		if l["@message"] == "claim batch refused in part: the others sent again" {
			refused++
		}
	}
	if refused == 0 {
		t.Errorf("no claim batch was refused in part in %d rewrites of b2's record: the fault did nothing", rewrites)
	}
	// Only b2 may lose a slot, and only recorded: its claim lost to the
	// writer twice in a row (read, then rewritten before the cas).
	others := maps.Clone(all)
	delete(others, "b2")
	evs, _ := f.h.Snapshot()
	if miss := ambUnexplained(evs, others, from, to, nil); len(miss) > 0 {
		t.Errorf("jobs other than b2 lost slots to b2's conflicts:\n  %s", strings.Join(miss, "\n  "))
	}
	c := f.spec(from, to, time.Time{}, window{from: at, to: end.Add(time.Second), why: "b2's record rewritten by another writer",
		reasons: []string{reasonClaim}, mustRecord: true})
	c.jobs = all
	c.strict = true
	finish(t, f.h, c, fmt.Sprintf("%d rewrites of one job's record; %d batches refused in part and sent again", rewrites, refused))
}
