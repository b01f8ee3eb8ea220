package ledger_test

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/config"
	"github.com/leadercron/leadercron/internal/consultest"
	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/ledger"
	"github.com/leadercron/leadercron/internal/scheduler"
)

// specsOf loads the jobs of environ's LEADERCRON_JOB_* variables with the
// sidecar's own parser and returns their canonical table.
func specsOf(t *testing.T, jobs ...string) []kvlayout.JobSpec {
	t.Helper()
	env := map[string]string{"LEADERCRON_SERVICE": "s", "LEADERCRON_ID": "a"}
	for _, j := range jobs {
		k, v, _ := strings.Cut(j, "=")
		env[k] = v
	}
	cfg, err := config.Load(env, config.Defaults{})
	if err != nil {
		t.Fatalf("load %v: %v", jobs, err)
	}
	sj := make([]scheduler.Job, len(cfg.Jobs))
	for i, j := range cfg.Jobs {
		sj[i] = j.Job
	}
	return ledger.JobSpecs(sj)
}

// Equal configurations, however written, have one canonical table and one
// digest; any option that differs changes the digest and is named.
func TestJobTableCanonical(t *testing.T) {
	a := specsOf(t,
		"LEADERCRON_JOB_ZETA=0 3 * * * tz=Europe/Berlin retries=2 backoff=2s",
		"LEADERCRON_JOB_ALPHA=@every 10s")
	b := specsOf(t,
		"LEADERCRON_JOB_ALPHA=@every   10s timeout=10m catchup=1m overlap=forbid",
		"LEADERCRON_JOB_ZETA= 0  3 * * *  backoff=2000ms tz=Europe/Berlin retries=2 ")
	if !reflect.DeepEqual(a, b) || ledger.Digest(a) != ledger.Digest(b) {
		t.Fatalf("equal configurations differ:\n%+v\n%+v", a, b)
	}
	if a[0].Name != "alpha" || a[1].Name != "zeta" {
		t.Fatalf("not sorted by name: %+v", a)
	}
	want := kvlayout.JobSpec{Name: "zeta", Schedule: "0 3 * * *", TZ: "Europe/Berlin", Timeout: "10m0s", Overlap: "forbid",
		Catchup: "1m0s", Retries: 2, Backoff: "2s"}
	if a[1] != want {
		t.Fatalf("zeta = %+v, want %+v", a[1], want)
	}
	if d := ledger.Digest(a); len(d) != 64 || ledger.ShortDigest(d) != d[:12] {
		t.Fatalf("digest %q", d)
	}
	if ledger.Digest(nil) != ledger.Digest([]kvlayout.JobSpec{}) {
		t.Fatal("no jobs has two digests")
	}

	for _, c := range []struct {
		job, diff string
	}{
		{"LEADERCRON_JOB_ZETA=0 4 * * * tz=Europe/Berlin retries=2 backoff=2s", `zeta: schedule "0 3 * * *" (mine) vs "0 4 * * *" (theirs)`},
		{"LEADERCRON_JOB_ZETA=0 3 * * * tz=UTC retries=2 backoff=2s", `zeta: tz "Europe/Berlin" (mine) vs "UTC" (theirs)`},
		{"LEADERCRON_JOB_ZETA=0 3 * * * tz=Europe/Berlin retries=2 backoff=2s timeout=1m", `zeta: timeout "10m0s" (mine) vs "1m0s" (theirs)`},
		{"LEADERCRON_JOB_ZETA=0 3 * * * tz=Europe/Berlin retries=2 backoff=2s overlap=allow", `zeta: overlap "forbid" (mine) vs "allow" (theirs)`},
		{"LEADERCRON_JOB_ZETA=0 3 * * * tz=Europe/Berlin retries=2 backoff=2s group=g", `zeta: group "" (mine) vs "g" (theirs)`},
		{"LEADERCRON_JOB_ZETA=0 3 * * * tz=Europe/Berlin retries=2 backoff=2s catchup=0", `zeta: catchup "1m0s" (mine) vs "0s" (theirs)`},
		{"LEADERCRON_JOB_ZETA=0 3 * * * tz=Europe/Berlin retries=3 backoff=2s", `zeta: retries "2" (mine) vs "3" (theirs)`},
		{"LEADERCRON_JOB_ZETA=0 3 * * * tz=Europe/Berlin retries=2 backoff=3s", `zeta: backoff "2s" (mine) vs "3s" (theirs)`},
	} {
		c2 := specsOf(t, "LEADERCRON_JOB_ALPHA=@every 10s", c.job)
		if ledger.Digest(c2) == ledger.Digest(a) {
			t.Errorf("%s: same digest as the original", c.job)
		}
		if got := ledger.DiffJobs(a, c2, "mine", "theirs"); !slices.Equal(got, []string{c.diff}) {
			t.Errorf("%s: diff %q, want %q", c.job, got, c.diff)
		}
	}
	other := specsOf(t, "LEADERCRON_JOB_BETA=@hourly", "LEADERCRON_JOB_ZETA=0 3 * * * tz=Europe/Berlin retries=2 backoff=2s")
	if got, want := ledger.DiffJobs(a, other, "mine", "web-2"), []string{"alpha: only in mine", "beta: only in web-2"}; !slices.Equal(got, want) {
		t.Errorf("diff %q, want %q", got, want)
	}
	if got := ledger.DiffJobs(a, b, "mine", "theirs"); got != nil {
		t.Errorf("equal tables differ: %q", got)
	}
}

// Every field of scheduler.Job is in the job table, or listed here as not
// part of it: a new job option must reach kvlayout.JobSpec and
// ledger.JobSpecs, or two sidecars that differ in it would compare equal.
func TestJobTableCoversEveryOption(t *testing.T) {
	covered := map[string]string{
		"Name": "name", "Spec": "schedule", "Location": "tz", "Timeout": "timeout", "AllowOverlap": "overlap",
		"Group": "group", "Catchup": "catchup", "Retries": "retries", "Backoff": "backoff",
		"Schedule": "", // parsed from Spec and Location
	}
	for f := range reflect.TypeFor[scheduler.Job]().Fields() {
		if _, ok := covered[f.Name]; !ok {
			t.Errorf("scheduler.Job.%s is not in the job table: add it to kvlayout.JobSpec and ledger.JobSpecs", f.Name)
		}
	}
}

func TestJobTableStore(t *testing.T) {
	agent := consultest.Start(t)
	c := consultest.Client(t, agent.Addr)
	ctx := ctxT(t)
	const p = "leadercron/jt"
	keys := kvlayout.New(p)
	s := ledger.New(c, p)
	specs := specsOf(t, "LEADERCRON_JOB_TICK=@every 5s")

	if tb, err := s.JobTable(ctx); err != nil || tb != nil {
		t.Fatalf("JobTable before any = %v, %v", tb, err)
	}
	tbl := kvlayout.JobTable{Digest: ledger.Digest(specs), Jobs: specs, Publisher: "web-1", Version: "v1", FencingToken: 10,
		PublishedAt: time.Now()}
	index := func() uint64 {
		t.Helper()
		pair, _, err := c.KV().Get(keys.JobTable(), nil)
		if err != nil || pair == nil {
			t.Fatalf("get table: %v, %v", pair, err)
		}
		return pair.ModifyIndex
	}
	if wrote, err := s.PublishJobTable(ctx, tbl); err != nil || !wrote {
		t.Fatalf("first publish = %v, %v", wrote, err)
	}
	first := index()
	again := tbl
	again.PublishedAt = again.PublishedAt.Add(time.Minute)
	if wrote, err := s.PublishJobTable(ctx, again); err != nil || wrote || index() != first {
		t.Fatalf("publishing the same table again = %v, %v (index %d -> %d); want no write", wrote, err, first, index())
	}
	older := tbl
	older.FencingToken, older.Publisher, older.Digest = 9, "web-0", "other"
	if wrote, err := s.PublishJobTable(ctx, older); err != nil || wrote || index() != first {
		t.Fatalf("an older leadership's table = %v, %v; want it refused", wrote, err)
	}
	newer := tbl
	newer.FencingToken, newer.Publisher = 20, "web-2"
	if wrote, err := s.PublishJobTable(ctx, newer); err != nil || !wrote {
		t.Fatalf("a later leadership's table = %v, %v", wrote, err)
	}
	got, err := s.JobTable(ctx)
	if err != nil || got == nil || got.Publisher != "web-2" || got.FencingToken != 20 || !reflect.DeepEqual(got.Jobs, specs) {
		t.Fatalf("JobTable = %+v, %v", got, err)
	}
	if k, _ := keys.Parse(keys.JobTable()); k != kvlayout.KindJobTable {
		t.Fatalf("Parse(table) = %v", k)
	}

	now := time.Now()
	for _, m := range []kvlayout.Member{
		{ID: "web-2", Version: "v1", Digest: tbl.Digest, Jobs: specs, At: now},
		{ID: "web-1", Version: "v0", Digest: "old", At: now.Add(-ledger.MemberTTL - time.Minute)},
	} {
		if err := s.PublishMember(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if k, id := keys.Parse(keys.Member("web-2")); k != kvlayout.KindMember || id != "web-2" {
		t.Fatalf("Parse(member) = %v, %q", k, id)
	}
	tables, idx, err := s.Tables(ctx, 0, 0)
	if err != nil || tables.Table == nil || tables.Table.Publisher != "web-2" || len(tables.Members) != 2 || idx == 0 {
		t.Fatalf("Tables = %+v, %d, %v", tables, idx, err)
	}
	stale, live := tables.Members[0], tables.Members[1]
	if stale.ID != "web-1" || live.ID != "web-2" || ledger.Live(stale, now) || !ledger.Live(live, now) || stale.ModifyIndex == 0 {
		t.Fatalf("members = %+v", tables.Members)
	}

	// A blocking Tables waits while nothing changes, and wakes on a
	// change under P/fleet/.
	start := time.Now()
	if _, next, err := s.Tables(ctx, idx, time.Second); err != nil || next != idx || time.Since(start) < 900*time.Millisecond {
		t.Fatalf("blocking Tables without a change: index %d -> %d, %v after %s; want it to wait about 1s", idx, next, err, time.Since(start))
	}
	woke := make(chan uint64, 1)
	go func() {
		_, next, _ := s.Tables(ctx, idx, 20*time.Second)
		woke <- next
	}()
	start = time.Now()
	if err := s.PublishMember(ctx, kvlayout.Member{ID: "web-3", Digest: "x", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if next := <-woke; next <= idx || time.Since(start) > 10*time.Second {
		t.Fatalf("blocking Tables: index %d -> %d after %s; want a wake on the write", idx, next, time.Since(start))
	}

	// The stale record is rewritten after it was read: the delete-cas
	// at the old index keeps it.
	if err := s.PublishMember(ctx, kvlayout.Member{ID: "web-1", Digest: "new", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if removed, err := s.RemoveMember(ctx, stale); err != nil || removed {
		t.Fatalf("remove a rewritten record = %v, %v; want kept", removed, err)
	}
	if removed, err := s.RemoveMember(ctx, kvlayout.Member{ID: "web-1"}); err != nil || !removed {
		t.Fatalf("remove = %v, %v", removed, err)
	}
	if pair, _, err := c.KV().Get(keys.Member("web-1"), nil); err != nil || pair != nil {
		t.Fatalf("web-1's record after remove: %v, %v", pair, err)
	}

	// A value that does not decode is reported, the rest still read.
	if _, err := c.KV().Put(&api.KVPair{Key: keys.Member("bad"), Value: []byte("{")}, nil); err != nil {
		t.Fatal(err)
	}
	tables, _, err = s.Tables(ctx, 0, 0)
	if err != nil || len(tables.Problems) != 1 || !strings.Contains(tables.Problems[0], keys.Member("bad")) || len(tables.Members) != 2 {
		t.Fatalf("Tables with a bad value = %+v, %v", tables, err)
	}
}
