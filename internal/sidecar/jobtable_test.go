package sidecar

import (
	"context"
	"errors"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/config"
	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/ledger"
	"github.com/leadercron/leadercron/internal/metrics"
	"github.com/leadercron/leadercron/internal/scheduler"
	"github.com/leadercron/leadercron/internal/testkit"
)

// fakeFleet is a Ledger with P/fleet/ in memory: its first failTable
// table writes fail, and Tables answers once with members, then blocks
// like a blocking query with no change.
type fakeFleet struct {
	*fakeLedger
	mu        sync.Mutex
	failTable int
	table     *kvlayout.JobTable
	members   []kvlayout.Member
	answered  bool
}

func (f *fakeFleet) PublishJobTable(_ context.Context, t kvlayout.JobTable) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failTable > 0 {
		f.failTable--
		f.ev.add("publish table failed")
		return false, errors.New("put: connection refused")
	}
	f.table = &t
	f.ev.add("publish table %d", t.FencingToken)
	return true, nil
}

func (f *fakeFleet) PublishMember(_ context.Context, m kvlayout.Member) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.members = append(f.members, m)
	f.ev.add("publish member %s", m.ID)
	return nil
}

func (f *fakeFleet) RemoveMember(_ context.Context, m kvlayout.Member) (bool, error) {
	f.ev.add("remove member %s at %d", m.ID, m.ModifyIndex)
	return true, nil
}

func (f *fakeFleet) Tables(ctx context.Context, _ uint64, wait time.Duration) (ledger.Tables, uint64, error) {
	f.mu.Lock()
	answered := f.answered
	f.answered = true
	t := ledger.Tables{Table: f.table, Members: f.members}
	f.mu.Unlock()
	if answered {
		select {
		case <-ctx.Done():
			return ledger.Tables{}, 1, ctx.Err()
		case <-time.After(wait):
		}
	}
	f.ev.add("tables")
	return t, 1, nil
}

// The leader keeps scheduling while its table writes fail: each failure
// is logged and counted, and retried until it lands. It then reports a
// live replica with another table in leadercron_job_table_mismatch, removes
// a stale member record, and removes its own when it stops.
func TestPublishJobTable(t *testing.T) {
	ev := newEvents()
	m, err := metrics.New(nil, metrics.Options{Version: "v9"})
	if err != nil {
		t.Fatal(err)
	}
	jobs := []config.Job{{Job: scheduler.Job{Name: "report", Spec: "@every 1h", Schedule: never{}, Location: time.UTC}}}
	other := ledger.JobSpecs([]scheduler.Job{{Name: "report", Spec: "@every 2h", Location: time.UTC}})
	f := &fakeFleet{fakeLedger: newFakeLedger(ev), failTable: 2, members: []kvlayout.Member{
		{ID: "web-2", Version: "v8", Digest: ledger.Digest(other), Jobs: other, At: time.Now()},
		{ID: "web-3", Version: "v7", Digest: "old", At: time.Now().Add(-ledger.MemberTTL - time.Second), ModifyIndex: 42},
	}}
	var logs testkit.SyncBuffer
	s := New(config.Config{ID: "web-1", Jobs: jobs}, Deps{Ledger: f, Metrics: m, Clock: scheduler.SystemClock{},
		Log: hclog.New(&hclog.LoggerOptions{Output: &logs, JSONFormat: true})})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		s.publishJobTable(ctx, &fakeTerm{token: 7})
		close(done)
	}()
	ev.await(t, "remove member web-3 at 42", 1)
	list := ev.await(t, "publish table 7", 1)
	if n := strings.Count(strings.Join(list, "\n"), "publish table failed"); n != 2 {
		t.Errorf("%d failed table writes before the one that landed, want 2:\n%s", n, strings.Join(list, "\n"))
	}
	scrape := func() string {
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		return rec.Body.String()
	}
	// The first list, and its check, came before the second write.
	if body := scrape(); !strings.Contains(body, "\nleadercron_job_table_mismatch 1\n") {
		t.Errorf("the replica with another table is not reported:\n%s", body)
	}
	if body := scrape(); !strings.Contains(body, `leadercron_consul_errors_total{op="publish_fleet"} 2`) {
		t.Errorf("the failed writes are not counted:\n%s", body)
	}
	if f.table == nil || f.table.Publisher != "web-1" || f.table.Version != "v9" || f.table.Digest != ledger.Digest(ledger.JobSpecs([]scheduler.Job{jobs[0].Job})) {
		t.Errorf("table = %+v", f.table)
	}
	out := logs.String()
	for _, want := range []string{"publish the job table failed; retrying", "replicas of this fleet run a different job table",
		`report: schedule \"@every 1h\" (this leader) vs \"@every 2h\" (web-2)`, "removed a stale member record"} {
		if !strings.Contains(out, want) {
			t.Errorf("logs lack %q:\n%s", want, out)
		}
	}

	cancel()
	<-done
	if body := scrape(); !strings.Contains(body, "\nleadercron_job_table_mismatch 0\n") {
		t.Errorf("mismatch not reset when the term ended:\n%s", body)
	}
	if list, _ := ev.snapshot(); slices.Contains(list, "remove member web-1 at 0") || slices.Contains(list, "publish member web-1") {
		t.Errorf("the leader's publisher wrote or removed its own member record (keepMember owns it): %q", list)
	}
}

// Every sidecar, standby or leader, keeps its own member record while it
// runs (so a replica that never led is seen) and removes it when it stops.
func TestKeepMember(t *testing.T) {
	ev := newEvents()
	m, err := metrics.New(nil, metrics.Options{Version: "v9"})
	if err != nil {
		t.Fatal(err)
	}
	jobs := []config.Job{{Job: scheduler.Job{Name: "report", Spec: "@every 1h", Schedule: never{}, Location: time.UTC}}}
	f := &fakeFleet{fakeLedger: newFakeLedger(ev)}
	s := New(config.Config{ID: "web-1", Jobs: jobs}, Deps{Ledger: f, Metrics: m, Clock: scheduler.SystemClock{},
		Log: hclog.NewNullLogger()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		s.keepMember(ctx)
		close(done)
	}()
	ev.await(t, "publish member web-1", 1)
	f.mu.Lock()
	got := f.members[len(f.members)-1]
	f.mu.Unlock()
	if got.Version != "v9" || got.Digest != ledger.Digest(ledger.JobSpecs([]scheduler.Job{jobs[0].Job})) || got.At.IsZero() {
		t.Errorf("member record %+v", got)
	}
	cancel()
	<-done
	ev.await(t, "remove member web-1 at 0", 1)
}
