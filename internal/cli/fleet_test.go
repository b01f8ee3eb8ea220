package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/cli"
	"github.com/leadercron/leadercron/internal/consultest"
	"github.com/leadercron/leadercron/internal/fate"
	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/ledger"
)

const prefix = "leadercron/fleet-test"

var fleetEnv = []string{
	"LEADERCRON_SERVICE=fleet-test",
	"LEADERCRON_ID=alice",
	"LEADERCRON_JOB_NIGHTLY=0 3 * * * tz=Europe/Berlin",
	"LEADERCRON_JOB_REPORT=@every 1m",
}

type result struct {
	code           int
	stdout, stderr string
}

func run(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	code := cli.Main(ctx, args, env, &out, &errb)
	return result{code, out.String(), errb.String()}
}

// useConsul points the process's CONSUL_HTTP_ADDR at addr: load() builds the
// client with api.DefaultConfig, which reads the process environment.
func useConsul(t *testing.T, addr string) {
	t.Setenv("CONSUL_HTTP_ADDR", addr)
	t.Setenv("CONSUL_HTTP_TOKEN", "")
	t.Setenv("CONSUL_HTTP_SSL", "")
}

func TestFleetCommands(t *testing.T) {
	agent := consultest.Start(t)
	useConsul(t, agent.Addr)
	c := consultest.Client(t, agent.Addr)
	kv := c.KV()
	get := func(key string) *api.KVPair {
		t.Helper()
		p, _, err := kv.Get(prefix+"/"+key, nil)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}

	t.Run("PauseAndResume", func(t *testing.T) {
		r := run(t, fleetEnv, "pause", "nightly", "-reason", "vendor outage")
		if r.code != cli.ExitOK || !strings.HasPrefix(r.stdout, "paused nightly (by alice") {
			t.Fatalf("pause = %+v", r)
		}
		p := get("jobs/nightly/paused")
		if p == nil || !strings.Contains(string(p.Value), `"by":"alice"`) || !strings.Contains(string(p.Value), `"reason":"vendor outage"`) {
			t.Fatalf("paused key = %+v", p)
		}
		r = run(t, fleetEnv, "pause", "-by", "bob", "-reason", "other", "nightly")
		if r.code != cli.ExitOK || !strings.Contains(r.stdout, "already paused by alice") {
			t.Fatalf("second pause = %+v", r)
		}
		r = run(t, fleetEnv, "resume", "nightly")
		if r.code != cli.ExitOK || !strings.HasPrefix(r.stdout, "resumed nightly (paused by alice") {
			t.Fatalf("resume = %+v", r)
		}
		if p := get("jobs/nightly/paused"); p != nil {
			t.Fatalf("paused key still there: %s", p.Value)
		}
		r = run(t, fleetEnv, "resume", "nightly")
		if r.code != cli.ExitOK || !strings.Contains(r.stdout, "was not paused") {
			t.Fatalf("second resume = %+v", r)
		}
	})

	t.Run("RunIsIdempotentWhilePending", func(t *testing.T) {
		r := run(t, fleetEnv, "run", "report", "-by", "carol")
		if r.code != cli.ExitOK || !strings.HasPrefix(r.stdout, "run-now request for report queued") {
			t.Fatalf("run = %+v", r)
		}
		p := get("requests/report")
		var req kvlayout.Request
		if p == nil || json.Unmarshal(p.Value, &req) != nil || req.By != "carol" || req.ID == "" {
			t.Fatalf("request key = %+v", p)
		}
		r = run(t, fleetEnv, "run", "report")
		if r.code != cli.ExitOK || !strings.Contains(r.stdout, "already pending (id "+req.ID+", by carol") {
			t.Fatalf("second run = %+v", r)
		}
		if again := get("requests/report"); again.ModifyIndex != p.ModifyIndex {
			t.Fatalf("second run rewrote the request: index %d -> %d", p.ModifyIndex, again.ModifyIndex)
		}
		if _, err := kv.Delete(prefix+"/requests/report", nil); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("Status", func(t *testing.T) {
		sess, _, err := c.Session().CreateNoChecks(&api.SessionEntry{Name: "leadercron fleet-test web-1", TTL: "30s"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = c.Session().Destroy(sess, nil) })
		if ok, _, err := kv.Acquire(&api.KVPair{Key: prefix + "/leader", Value: []byte(`{"id":"web-1","service":"fleet-test"}`), Session: sess}, nil); err != nil || !ok {
			t.Fatalf("acquire = %v, %v", ok, err)
		}
		ctx := context.Background()
		store := ledger.New(c, prefix)
		slot := time.Date(2026, 11, 22, 2, 0, 0, 0, time.UTC)
		for _, e := range []kvlayout.Entry{
			{Slot: slot, Outcome: fate.Missed, Reason: "no_leader", At: slot.Add(time.Minute), ID: "web-2"},
			{Slot: slot.Add(-24 * time.Hour), Outcome: fate.Fired, HTTPStatus: 200, DurationMS: 1500, Attempts: 1, ID: "web-1", At: slot.Add(-24 * time.Hour)},
		} {
			if err := store.Append(ctx, "nightly", e); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := store.Pause(ctx, "report", "carol", ""); err != nil {
			t.Fatal(err)
		}
		if err := store.Append(ctx, "retired", kvlayout.Entry{Slot: slot, Outcome: fate.Fired}); err != nil {
			t.Fatal(err)
		}

		r := run(t, fleetEnv, "status")
		if r.code != cli.ExitOK {
			t.Fatalf("status = %+v", r)
		}
		for _, want := range []string{
			"leader  web-1 (session " + sess,
			"nightly  0 3 * * *",
			"Europe/Berlin",
			"by carol at",
			"2026-11-22T02:00:00Z  missed   no_leader  -     -         -         web-2",
			"2026-11-21T02:00:00Z  fired    -          200   1.5s      1         web-1",
			"also in Consul, not in this configuration: retired",
		} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("status output lacks %q:\n%s", want, r.stdout)
			}
		}
		t.Logf("status output:\n%s", r.stdout)

		r = run(t, fleetEnv, "status", "-json")
		if r.code != cli.ExitOK {
			t.Fatalf("status -json = %+v", r)
		}
		var st struct {
			Leader *ledger.Leader `json:"leader"`
			Jobs   []struct {
				Name     string           `json:"name"`
				TZ       string           `json:"tz"`
				NextSlot *time.Time       `json:"next_slot"`
				Paused   *kvlayout.Paused `json:"paused"`
				History  []kvlayout.Entry `json:"history"`
			} `json:"jobs"`
			OtherJobs map[string]json.RawMessage `json:"other_jobs"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
			t.Fatalf("status -json is not JSON: %v\n%s", err, r.stdout)
		}
		if st.Leader == nil || st.Leader.ID != "web-1" || st.Leader.Session != sess || len(st.Jobs) != 2 || st.OtherJobs["retired"] == nil {
			t.Fatalf("status -json = %+v", st)
		}
		berlin, _ := time.LoadLocation("Europe/Berlin")
		n := st.Jobs[0]
		if n.Name != "nightly" || n.TZ != "Europe/Berlin" || n.NextSlot == nil || !n.NextSlot.After(time.Now()) ||
			n.NextSlot.In(berlin).Hour() != 3 || time.Until(*n.NextSlot) > 25*time.Hour {
			t.Fatalf("nightly = %+v; want next slot at the next 03:00 Berlin", n)
		}
		if len(n.History) != 2 || n.History[0].Reason != "no_leader" {
			t.Fatalf("nightly history = %+v", n.History)
		}
		if rep := st.Jobs[1]; rep.Name != "report" || rep.Paused == nil || rep.Paused.By != "carol" {
			t.Fatalf("report = %+v", rep)
		}
	})

	t.Run("Refusals", func(t *testing.T) {
		r := run(t, fleetEnv, "pause", "nope")
		if r.code != cli.ExitConfig || !strings.Contains(r.stderr, `unknown job "nope"; known jobs: nightly, report`) {
			t.Fatalf("unknown job = %+v", r)
		}
		if p := get("jobs/nope/paused"); p != nil {
			t.Fatal("an unknown job was paused")
		}
		r = run(t, fleetEnv, "run")
		if r.code != cli.ExitConfig || !strings.Contains(r.stderr, "usage: leadercron run [-by NAME] <job>") {
			t.Fatalf("run without a job = %+v", r)
		}
		r = run(t, fleetEnv, "resume", "-json", "nightly")
		if r.code != cli.ExitConfig || !strings.Contains(r.stderr, "-json is not accepted") {
			t.Fatalf("resume -json = %+v", r)
		}
		r = run(t, append(fleetEnv[:len(fleetEnv):len(fleetEnv)], "LEADERCRON_LOCK=none"), "status")
		if r.code != cli.ExitConfig || !strings.Contains(r.stderr, "LEADERCRON_LOCK=none: fleet commands work through Consul KV") {
			t.Fatalf("standalone = %+v", r)
		}
	})
}

// A Consul that does not answer is exit 1 with the operation named.
func TestFleetConsulDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	useConsul(t, addr)
	for _, args := range [][]string{{"pause", "nightly"}, {"resume", "nightly"}, {"run", "nightly"}, {"status"}} {
		r := run(t, fleetEnv, args...)
		want := "leadercron " + args[0] + ": "
		if args[0] != "status" {
			want += map[string]string{"pause": "pause nightly", "resume": "resume nightly", "run": "request run of nightly"}[args[0]]
		} else {
			want += "snapshot"
		}
		if r.code != cli.ExitFailure || !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "connection refused") {
			t.Errorf("%v with Consul down = %+v; want exit 1 and %q", args, r, want)
		}
	}
}
