package faults

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/consultest"
	"github.com/leadercron/leadercron/internal/fate"
	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/leader"
	"github.com/leadercron/leadercron/internal/scheduler"
	"github.com/leadercron/leadercron/internal/testkit"
)

// skewedClock is the real clock shifted by a fixed offset: a host whose
// wall clock is wrong. Durations are unaffected.
type skewedClock struct{ offset time.Duration }

func (c skewedClock) Now() time.Time                         { return time.Now().Add(c.offset) }
func (c skewedClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// recorderApp is an in-process app: each trigger goes into the history.
type recorderApp struct {
	id string
	h  *history
}

func (a recorderApp) Trigger(_ context.Context, r scheduler.Run) scheduler.Result {
	a.h.Add(event{Kind: "trigger", App: "app-" + a.id, Sidecar: a.id, Job: r.Job, Slot: r.Slot.UTC(), Token: r.FencingToken, Status: 204})
	return scheduler.Result{Outcome: "fired", Status: 204}
}

// historyRecorder puts the slots a scheduler records as missed or skipped
// into the history. A range with no end (missed while no sidecar led, no
// catch-up) runs up to the recording sidecar's own clock.
type historyRecorder struct {
	id    string
	h     *history
	clock scheduler.Clock
}

func (r historyRecorder) Record(job string, lr scheduler.LastRun) {
	if lr.Outcome != fate.Missed && lr.Outcome != fate.Skipped {
		return
	}
	until := lr.Until
	if until.IsZero() {
		until = lr.Slot
		if lr.Reason == fate.NoLeader {
			until = r.clock.Now()
		}
	}
	r.h.Add(event{Kind: "record", Sidecar: r.id, Job: job, Slot: lr.Slot.UTC(), Until: until.UTC(), Note: string(lr.Outcome) + " " + string(lr.Reason)})
}

// instance is one in-process sidecar: an elector and a scheduler with a
// skewed clock.
type instance struct {
	id     string
	skew   time.Duration
	el     *leader.Elector
	sched  *scheduler.Scheduler
	cancel context.CancelFunc
	done   chan error
}

func (in *instance) lead(ctx context.Context, term *leader.Term) error {
	in.sched.Lead(ctx, term)
	wctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	in.sched.Wait(wctx)
	return nil
}

func (in *instance) start() {
	ctx, cancel := context.WithCancel(context.Background())
	in.cancel, in.done = cancel, make(chan error, 1)
	go func() { in.done <- in.el.Run(ctx, in.lead) }()
}

func (in *instance) stop(t *testing.T) {
	t.Helper()
	in.cancel()
	select {
	case err := <-in.done:
		if err != nil {
			t.Errorf("elector %s: %v", in.id, err)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("elector %s did not stop", in.id)
	}
}

// TestClockSkew runs three in-process sidecars whose clocks are minutes
// apart, both ways, against a real Consul, and hands the lock from one to
// another in a seeded random order. Skew must never fire a slot twice, and
// every slot between the first and the last one fired must have fired or
// been recorded as missed or skipped by some sidecar.
func TestClockSkew(t *testing.T) {
	t.Parallel()
	r := rng(t.Name())
	agent := consultest.Start(t)
	h := testkit.NewHistory()
	watchLock(t, []string{agent.Addr}, lockKey, h)

	skews := []time.Duration{0, between(r, time.Minute, 3*time.Minute), -between(r, time.Minute, 3*time.Minute)}
	var logs testkit.Buffer
	var ins []*instance
	for i, skew := range skews {
		id := string(rune('a' + i))
		clock := skewedClock{skew}
		// JSON, as the binary logs: the leader's acquire and lease-end
		// lines go into the history (see parseLine), for the own-lease
		// check.
		log := hclog.New(&hclog.LoggerOptions{Name: id, Level: hclog.Debug, JSONFormat: true, Output: &leaseLog{id: id, h: h, w: &logs}})
		var sjobs []scheduler.Job
		for name, spec := range jobs {
			s, err := parser.Parse(spec)
			if err != nil {
				t.Fatal(err)
			}
			sjobs = append(sjobs, scheduler.Job{Name: name, Spec: spec, Schedule: s, Location: time.UTC, Timeout: 5 * time.Second})
		}
		in := &instance{id: id, skew: skew}
		in.sched = scheduler.New(sjobs, recorderApp{id, h}, clock, log.Named("scheduler"), scheduler.Options{
			LeaseMargin: ttl / 5,
			Recorder:    historyRecorder{id, h, clock},
		})
		in.el = leader.New(consultest.Client(t, agent.Addr), leader.Options{
			Keys:        kvlayout.New("leadercron/faults"),
			ID:          id,
			SessionName: "faults " + id,
			TTL:         ttl,
			LockDelay:   lockDelay,
		}, log.Named("leader"))
		ins = append(ins, in)
	}
	defer func() {
		if t.Failed() {
			t.Logf("sidecar logs:\n%s", logs.String())
		}
	}()

	// Hand over gracefully: start the next one as the only standby, then
	// stop the leader; the standby takes the released lock at once.
	cur := r.IntN(3)
	ins[cur].start()
	h.WaitFor(t, 20*time.Second, "a first trigger", triggersSince(time.Time{}, 1))
	order := []string{fmt.Sprintf("%s(%+v)", ins[cur].id, ins[cur].skew.Round(time.Second))}
	var handedOver time.Time
	handovers := 6
	if the.soak > 0 {
		handovers = int(the.soak / scenarioCount / (4 * time.Second))
	}
	for range handovers {
		sleep(between(r, 2*time.Second, 4*time.Second))
		next := (cur + 1 + r.IntN(2)) % 3
		ins[next].start()
		handedOver = h.Fault(fmt.Sprintf("handover %s (skew %s) -> %s (skew %s)", ins[cur].id, ins[cur].skew.Round(time.Second), ins[next].id, ins[next].skew.Round(time.Second)))
		ins[cur].stop(t)
		cur = next
		order = append(order, fmt.Sprintf("%s(%+v)", ins[cur].id, ins[cur].skew.Round(time.Second)))
	}
	// Liveness: the last leader fires, whatever the skew of the one
	// before it. It takes the lock at once (released to it); the jobs
	// fire every second, so skewLive triggers take about two seconds.
	lastLeader := ins[cur].id
	live := h.Await(skewLiveWithin, func(evs []event) bool {
		n := 0
		for _, e := range evs {
			if e.Kind == "trigger" && e.Sidecar == lastLeader && e.At.After(handedOver) {
				n++
			}
		}
		return n >= skewLive
	})
	ins[cur].stop(t)

	evs, _ := h.Snapshot()
	v := check(t, t.Name(), evs, checkSpec{})
	if !live {
		n := 0
		for _, e := range evs {
			if e.Kind == "trigger" && e.Sidecar == lastLeader && e.At.After(handedOver) {
				n++
			}
		}
		v.Violations = append(v.Violations, fmt.Sprintf("liveness: after the last handover (%s), the new leader %s (skew %s) fired %d triggers in %s, want at least %d",
			hmsms(handedOver), lastLeader, ins[cur].skew.Round(time.Second), n, skewLiveWithin, skewLive))
	}
	// Continuity: between the first and the last slot fired, every slot
	// fired or was recorded.
	var records []event
	first, last := map[string]time.Time{}, map[string]time.Time{}
	fired := map[string]bool{}
	for _, e := range evs {
		switch e.Kind {
		case "record":
			records = append(records, e)
		case "trigger":
			fired[e.Job+"@"+e.Slot.Format(time.RFC3339)] = true
			if f, ok := first[e.Job]; !ok || e.Slot.Before(f) {
				first[e.Job] = e.Slot
			}
			if e.Slot.After(last[e.Job]) {
				last[e.Job] = e.Slot
			}
		}
	}
	for job, spec := range jobs {
		s, _ := parser.Parse(spec)
		for slot := first[job]; !slot.IsZero() && !slot.After(last[job]); slot = s.Next(slot) {
			v.Expected++
			if fired[job+"@"+slot.Format(time.RFC3339)] {
				v.Fired++
				continue
			}
			v.Missed++
			if _, ok := recorded(records, job, slot); ok {
				v.MissedRecorded++
				continue
			}
			v.Unexplained++
			v.Violations = append(v.Violations, fmt.Sprintf("skipped without a record: %s@%s", job, slot.Format("15:04:05")))
		}
	}
	v.Name = "ClockSkew"
	v.Note = "leaders in order " + strings.Join(order, " → ")
	the.report.add(v)
	t.Log(header())
	t.Log(v.line())
	if len(v.Violations) > 0 {
		t.Errorf("%d violations:\n  %s\nhistory:\n%s", len(v.Violations), strings.Join(v.Violations, "\n  "), testkit.Dump(evs))
	}
}

// skewLive is how many triggers the last leader of TestClockSkew must
// send within skewLiveWithin of the last handover: the jobs fire 1.5
// times a second, and a released lock is taken at once, so a live leader
// sends them in about two seconds; the rest is room for a loaded machine.
const (
	skewLive       = 3
	skewLiveWithin = 10 * time.Second
)

// leaseLog passes an in-process sidecar's JSON log lines on to w, and puts
// its leader's acquire and lease-end lines into the history, as proc does
// for a process.
type leaseLog struct {
	id string
	h  *history
	w  io.Writer
}

func (l *leaseLog) Write(p []byte) (int, error) {
	// hclog writes one line per call.
	if e, ok := parseLine(bytes.TrimSpace(p)); ok && (e.Kind == "acquired" || e.Kind == "lease-ended") {
		e.Sidecar = l.id
		l.h.Add(e)
	}
	return l.w.Write(p)
}
