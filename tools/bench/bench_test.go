package main

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/consultest"
)

const exposition = `# HELP leadercron_claim_lead_seconds How long before a slot is due its claim is sent.
# TYPE leadercron_claim_lead_seconds gauge
leadercron_claim_lead_seconds 0.25
# HELP leadercron_claim_lead_seconds_max Not the gauge: its name only starts like it.
leadercron_claim_lead_seconds_max 9
leadercron_is_leader 1
`

func TestParseGauge(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       float64 // NaN: absent
		wantErr    bool
	}{
		{"plain", exposition, 0.25, false},
		{"absent", "# TYPE leadercron_is_leader gauge\nleadercron_is_leader 1\n", math.NaN(), false},
		{"labelled, the largest", "leadercron_claim_lead_seconds{job=\"a b\"} 0.1\nleadercron_claim_lead_seconds{job=\"c}\"} 0.3 1700000000\n", 0.3, false},
		{"no value", "leadercron_claim_lead_seconds\n", math.NaN(), true},
		{"not a number", "leadercron_claim_lead_seconds soon\n", math.NaN(), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseGauge(bufio.NewScanner(strings.NewReader(tc.text)), leadMetric)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if math.IsNaN(tc.want) != math.IsNaN(got) || (!math.IsNaN(got) && got != tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestClaimLead(t *testing.T) {
	body := exposition
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		if body == "" {
			http.Error(w, "broken", http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, body)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	if v, err := claimLead(context.Background(), addr); err != nil || v != 0.25 {
		t.Fatalf("claimLead = %v, %v; want 0.25", v, err)
	}
	body = "leadercron_is_leader 1\n"
	if v, err := claimLead(context.Background(), addr); err != nil || !math.IsNaN(v) {
		t.Fatalf("claimLead without the gauge = %v, %v; want NaN and no error", v, err)
	}
	body = ""
	if v, err := claimLead(context.Background(), addr); err == nil || !math.IsNaN(v) {
		t.Fatalf("claimLead of a 500 = %v, %v; want NaN and an error", v, err)
	}
}

func TestKind(t *testing.T) {
	for path, want := range map[string]string{
		"/v1/kv/bench/curve10-leadercron-1/history/j0007":        "GET /v1/kv/…/history/<job>",
		"/v1/kv/bench/curve10-leadercron-1/jobs/j0007/last":      "GET /v1/kv/…/jobs/<job>/last",
		"/v1/kv/bench/curve10-leadercron-1/requests/":            "GET /v1/kv/…/requests/",
		"/v1/kv/bench/curve10-leadercron-1/fleet/members/lc-a":   "GET /v1/kv/…/fleet/members/<id>",
		"/v1/kv/bench/curve10-leadercron-1/fleet/table":          "GET /v1/kv/…/fleet/table",
		"/v1/kv/bench/curve10-leadercron-1/leader":               "GET /v1/kv/…/leader",
		"/v1/session/renew/0c0a4b53-2b1a-4a8f-8f1e-8d2a5f0e2a11": "GET /v1/session/renew",
	} {
		r := httptest.NewRequest(http.MethodGet, path, nil)
		if got := kind(r); got != want {
			t.Errorf("kind(%s) = %q, want %q", path, got, want)
		}
	}
	r := httptest.NewRequest(http.MethodGet, "/v1/kv/bench/x-1/requests/?recurse&index=12", nil)
	if got, want := kind(r), "GET /v1/kv/…/requests/ (blocking)"; got != want {
		t.Errorf("kind(blocking list) = %q, want %q", got, want)
	}
}

func TestPoint(t *testing.T) {
	pt := point{jobs: 1000, standbys: 20, period: 10, dur: 30 * time.Second}
	if pt.perSecond() != 100 || pt.expected() != 3000 {
		t.Fatalf("perSecond, expected = %d, %d; want 100, 3000", pt.perSecond(), pt.expected())
	}
	specs := pt.specs()
	if len(specs) != 1000 || specs["j0013"] != "3/10 * * * * *" || specs["j0990"] != "0/10 * * * * *" {
		t.Fatalf("specs: %d jobs, j0013 %q, j0990 %q", len(specs), specs["j0013"], specs["j0990"])
	}
	if got := (point{jobs: 10, standbys: 1, period: 1, dur: 35 * time.Second}).specs()["j0009"]; got != "* * * * * *" {
		t.Fatalf("a 1 s job's spec = %q", got)
	}
	for n, want := range map[int]string{5: "5", 100: "100", 1000: "1,000", 1234567: "1,234,567"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestCheckBinary(t *testing.T) {
	dir := t.TempDir()
	exe, plain := filepath.Join(dir, "leadercron"), filepath.Join(dir, "notes")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\necho leadercron v0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(plain, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := checkBinary(exe); err != nil || got != exe {
		t.Fatalf("checkBinary(executable) = %q, %v", got, err)
	}
	for path, want := range map[string]string{
		filepath.Join(dir, "missing"): "no such file",
		dir:                           "not a regular file",
		plain:                         "not executable",
	} {
		if _, err := checkBinary(path); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "-leadercron-bin") {
			t.Errorf("checkBinary(%s) = %v, want an error naming -leadercron-bin and saying %q", path, err, want)
		}
	}
	if v, err := binaryVersion(context.Background(), exe); err != nil || v != "leadercron v0" {
		t.Errorf("binaryVersion = %q, %v", v, err)
	}
	old := filepath.Join(dir, "old")
	if err := os.WriteFile(old, []byte("#!/bin/sh\necho unknown command >&2\nexit 2\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if v, err := binaryVersion(context.Background(), old); err != nil || !strings.HasPrefix(v, "version: unknown") {
		t.Errorf("binaryVersion of a build without the command = %q, %v; want unknown and no error", v, err)
	}
	data := filepath.Join(dir, "data")
	if err := os.WriteFile(data, []byte("not a program\x00\x01"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := binaryVersion(context.Background(), data); err == nil || !strings.Contains(err.Error(), "does not run") {
		t.Errorf("binaryVersion of an executable data file: %v, want an error saying it does not run", err)
	}
}

func TestWindowFigures(t *testing.T) {
	at := time.Unix(1000, 0)
	s0 := snap{at: at, raft: 100,
		usage:  []usage{{ticks: 50}, {ticks: 7}, {ticks: 7}},
		counts: []counts{{total: 10}, {total: 1}, {total: 2}}}
	s1 := snap{at: at.Add(10 * time.Second), raft: 120,
		usage:  []usage{{ticks: 60, rssKB: 20 << 10}, {ticks: 7, rssKB: 8 << 10}, {ticks: 7, rssKB: 10 << 10}},
		counts: []counts{{total: 40}, {total: 2}, {total: 4}}}
	fig := figures{}
	windowFigures(s0, s1, 100, fig, "c0_")
	want := figures{"c0_req_per_slot": 0.3, "c0_raft_per_slot": 0.2, "c0_cpu": 1, "c0_rss": 20,
		"c0_load_leader": 180, "c0_rss_standby": 9, "c0_load_standby": 9, "c0_load_total": 198}
	for k, v := range want {
		if math.Abs(fig[k]-v) > 1e-9 {
			t.Errorf("%s = %v, want %v", k, fig[k], v)
		}
	}
}

func TestTargets(t *testing.T) {
	s := settings{points: []point{
		{jobs: 10, standbys: 1, period: 1, dur: 35 * time.Second},
		{jobs: 100, standbys: 1, period: 1, dur: 30 * time.Second},
		{jobs: 1000, standbys: 20, period: 10, dur: 30 * time.Second},
	}}
	run := func(p99, nvP99, raft, missing float64) map[string]figures {
		lc, nv := figures{"handover_missed": 0}, figures{}
		for i := range s.points {
			lc[ck(i, "p99")], nv[ck(i, "p99")] = p99, nvP99
			lc[ck(i, "raft_per_slot")], lc[ck(i, "req_per_slot")] = raft, 0.4
			lc[ck(i, "cpu")], lc[ck(i, "rss")] = 2, 30
			lc[ck(i, "missing")], lc[ck(i, "dupes")] = 0, 0
		}
		lc[ck(1, "missing")] = missing
		return map[string]figures{implLC: lc, implNaive: nv}
	}
	verdicts := func(results []map[string]figures) map[string]bool {
		v := map[string]bool{}
		for _, tg := range targets(s, results) {
			if !tg.measuredOK {
				t.Fatalf("%s: not measured", tg.what)
			}
			v[tg.what] = tg.met
		}
		return v
	}
	v := verdicts([]map[string]figures{run(5, 5, 0.05, 0), run(9, 8, 0.05, 0), run(12, 8, 0.05, 1)})
	for what, met := range map[string]bool{
		"slot delay p99, 10 jobs due each second, leadercron ÷ naive":                                         false, // median ratio 9/8
		"slot delay p99, 1,000 jobs + 20 standbys":                                                            true,  // 9 ms, 1.125×
		"Consul Raft writes per slot fired, 1,000 jobs":                                                       true,
		"Consul requests per slot fired, 10 jobs each second (renewals included)":                             true,
		"leader CPU at 100 slots a second (1,000 jobs)":                                                       true,
		"leader RSS with 1,000 jobs":                                                                          false,
		"missing or duplicated slots, every scenario but the crash failover (whose slots are lost by design)": false, // the worst run
	} {
		got, ok := v[what]
		if !ok || got != met {
			t.Errorf("%s: met = %v (present %v), want %v", what, got, ok, met)
		}
	}
	tg := slotsTarget(s, []map[string]figures{run(5, 5, 0, 0), run(5, 5, 0, 2)})
	if tg.met || !strings.HasPrefix(tg.measured, "2 (scale points 0 / 2 / 0") {
		t.Errorf("slots target = %+v, want missed with the worst run's 2", tg)
	}
	empty := targets(s, []map[string]figures{{implLC: {}, implNaive: {}}})
	for _, tg := range empty {
		if tg.measuredOK {
			t.Errorf("%s: measured with no figures: %q", tg.what, tg.measured)
		}
	}
}

// TestRaftIndexCountsWrites checks on a real agent what raftIndex's
// comment says: every KV write, refused CAS included, is one Raft entry;
// a session renewal and a read are none.
func TestRaftIndexCountsWrites(t *testing.T) {
	a := consultest.Start(t)
	c := consultest.Client(t, a.Addr)
	e := &env{consul: c}
	sid, _, err := c.Session().Create(&api.SessionEntry{TTL: "30s"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	before, err := e.raftIndex()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if _, err := c.KV().Put(&api.KVPair{Key: fmt.Sprintf("probe/%d", i), Value: []byte("v")}, nil); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 {
		ok, _, err := c.KV().CAS(&api.KVPair{Key: "probe/0", ModifyIndex: 1, Value: []byte("x")}, nil)
		if err != nil || ok {
			t.Fatalf("CAS with a stale index = %v, %v; want refused", ok, err)
		}
	}
	writes, err := e.raftIndex()
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if _, _, err := c.Session().Renew(sid, nil); err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.KV().Get("probe/0", nil); err != nil {
			t.Fatal(err)
		}
	}
	after, err := e.raftIndex()
	if err != nil {
		t.Fatal(err)
	}
	// The agent writes on its own now and then (anti-entropy): allow 2.
	if d := writes - before; d < 15 || d > 17 {
		t.Errorf("15 KV writes (5 refused) moved the commit index by %d", d)
	}
	if d := after - writes; d > 2 {
		t.Errorf("20 renewals and 20 reads moved the commit index by %d, want 0 (±2 of the agent's own)", d)
	}
}
