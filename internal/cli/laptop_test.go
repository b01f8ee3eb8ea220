package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leadercron/leadercron/internal/cli"
	"github.com/leadercron/leadercron/internal/consultest"
	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/ledger"
	"github.com/leadercron/leadercron/internal/testkit"
)

const laptopService = "laptop-test"

// fleetSidecar is one sidecar run in-process through cli.Main, with its
// own app.
type fleetSidecar struct {
	id      string
	port    int
	logs    *testkit.SyncBuffer
	healthy atomic.Bool // what the app's /health answers
	cancel  context.CancelFunc
	code    chan int
}

// startFleetSidecar runs a sidecar of the laptop-test fleet with jobs (the
// values of LEADERCRON_JOB_<NAME>, by NAME) and an app that answers every
// trigger 200, every drain {"running":0}, and /health as s.healthy says.
func startFleetSidecar(t *testing.T, consulAddr, id string, jobs map[string]string) *fleetSidecar {
	t.Helper()
	s := &fleetSidecar{id: id, port: freePort(t), logs: &testkit.SyncBuffer{}, code: make(chan int, 1)}
	s.healthy.Store(true)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/health" && !s.healthy.Load():
			w.WriteHeader(http.StatusServiceUnavailable)
		case r.URL.Path == "/drain":
			_, _ = io.WriteString(w, `{"running":0}`)
		}
	}))
	t.Cleanup(app.Close)
	env := []string{
		"CONSUL_HTTP_ADDR=" + consulAddr,
		"LEADERCRON_SERVICE=" + laptopService, "LEADERCRON_ID=" + id,
		"LEADERCRON_LISTEN=127.0.0.1:" + strconv.Itoa(s.port),
		"LEADERCRON_APP_URL=" + app.URL,
		"LEADERCRON_APP_HEALTH_URL=" + app.URL + "/health",
		"LEADERCRON_APP_HEALTH_INTERVAL=100ms", "LEADERCRON_APP_HEALTH_FAILURES=1",
		"LEADERCRON_DRAIN_TIMEOUT=5s", "LEADERCRON_LOG_LEVEL=debug",
	}
	for name, v := range jobs {
		env = append(env, "LEADERCRON_JOB_"+name+"="+v)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() { s.code <- cli.Main(ctx, nil, env, io.Discard, s.logs) }()
	return s
}

// stop stops the sidecar and checks that it exited 0.
func (s *fleetSidecar) stop(t *testing.T) {
	t.Helper()
	s.cancel()
	select {
	case c := <-s.code:
		if c != cli.ExitOK {
			t.Errorf("sidecar %s exited %d, want 0\n%s", s.id, c, s.logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Errorf("sidecar %s did not stop within 30s\n%s", s.id, s.logs.String())
	}
}

// get GETs path on the sidecar's admin port.
func (s *fleetSidecar) get(path string) (string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://127.0.0.1:" + strconv.Itoa(s.port) + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %d", path, resp.StatusCode)
	}
	return string(b), err
}

// eventually polls cond, a read of another process's state (the admin port
// or Consul), every 50ms until it holds or 30s have passed.
func eventually(t *testing.T, what string, cond func() bool, logs ...*fleetSidecar) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			for _, s := range logs {
				t.Logf("logs of %s:\n%s", s.id, s.logs.String())
			}
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitTable waits, with blocking queries on P/fleet/, until the job table
// and the member records satisfy cond.
func waitTable(t *testing.T, store *ledger.Store, what string, cond func(ledger.Tables) bool, logs ...*fleetSidecar) ledger.Tables {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var index uint64
	for {
		tb, next, err := store.Tables(ctx, index, 5*time.Second)
		if err == nil && cond(tb) {
			return tb
		}
		if ctx.Err() != nil {
			for _, s := range logs {
				t.Logf("logs of %s:\n%s", s.id, s.logs.String())
			}
			t.Fatalf("timed out waiting until %s (last read %+v, %v)", what, tb, err)
		}
		index = next
	}
}

// TestFleetCommandsFromALaptop runs a real fleet (a Consul agent, sidecars
// run in-process through cli.Main, each with its own app) and the fleet
// commands with an environment that holds only CONSUL_HTTP_ADDR and the
// service name: status shows the fleet, pause lands at the leader, an
// unknown job exits 2 naming the fleet's jobs; then a second sidecar with
// another job table leads, and both status and the new leader's metric
// and log report that the replicas disagree.
func TestFleetCommandsFromALaptop(t *testing.T) {
	agent := consultest.Start(t)
	useConsul(t, agent.Addr) // api.DefaultConfig reads the process environment
	store := ledger.New(consultest.Client(t, agent.Addr), "leadercron/"+laptopService)
	laptop := []string{"CONSUL_HTTP_ADDR=" + agent.Addr, "LEADERCRON_SERVICE=" + laptopService}

	// Before any sidecar ran there is no table and no local job.
	r := run(t, laptop, "pause", "nightly")
	if r.code != cli.ExitConfig || !strings.Contains(r.stderr, `unknown job "nightly"; known jobs: none: no job table in Consul yet`) {
		t.Fatalf("pause with no fleet yet = %+v", r)
	}

	web1 := startFleetSidecar(t, agent.Addr, "web-1", map[string]string{
		"NIGHTLY": "0 3 * * * tz=Europe/Berlin timeout=20s",
		"TICK":    "@every 1h retries=2",
	})
	defer web1.stop(t)
	waitTable(t, store, "web-1 published its table", func(tb ledger.Tables) bool {
		return tb.Table != nil && tb.Table.Publisher == "web-1" && len(tb.Members) == 1
	}, web1)

	t.Run("Status", func(t *testing.T) {
		r := run(t, laptop, "status")
		if r.code != cli.ExitOK || r.stderr != "" {
			t.Fatalf("status = %+v", r)
		}
		t.Logf("status:\n%s", r.stdout)
		for _, want := range []string{
			"service laptop-test (KV prefix leadercron/laptop-test)",
			"leader  web-1 (session ",
			"lease: session ttl 15s",
			"jobs    the fleet's job table: published by web-1 (version dev) at ",
			"web-1    dev      ",
			"leader, the fleet's table",
			"JOB      SCHEDULE   TZ             NEXT SLOT",
			"nightly  0 3 * * *  Europe/Berlin  ",
			"tick     @every 1h  UTC            ",
		} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("status lacks %q", want)
			}
		}
		if strings.Contains(r.stdout, "WARNING") {
			t.Errorf("status warns with one replica")
		}

		r = run(t, []string{"CONSUL_HTTP_ADDR=" + agent.Addr}, "status", "-service", laptopService, "-json")
		if r.code != cli.ExitOK {
			t.Fatalf("status -service -json = %+v", r)
		}
		var st struct {
			Leader    *ledger.Leader     `json:"leader"`
			JobSource string             `json:"job_source"`
			JobTable  *kvlayout.JobTable `json:"job_table"`
			Jobs      []struct {
				kvlayout.JobSpec
				NextSlot *time.Time `json:"next_slot"`
			} `json:"jobs"`
			Replicas []struct {
				ID           string `json:"id"`
				Live         bool   `json:"live"`
				Leader       bool   `json:"leader"`
				MatchesTable bool   `json:"matches_table"`
			} `json:"replicas"`
			TablesDisagree bool `json:"tables_disagree"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
			t.Fatalf("status -json: %v\n%s", err, r.stdout)
		}
		berlin, _ := time.LoadLocation("Europe/Berlin")
		if st.Leader == nil || st.Leader.ID != "web-1" || st.JobSource != "fleet" || st.JobTable == nil ||
			st.JobTable.Publisher != "web-1" || st.JobTable.FencingToken != st.Leader.FencingToken || st.TablesDisagree {
			t.Fatalf("status -json = %+v", st)
		}
		if len(st.Jobs) != 2 || st.Jobs[0].Name != "nightly" || st.Jobs[0].Timeout != "20s" || st.Jobs[1].Retries != 2 ||
			st.Jobs[0].NextSlot == nil || st.Jobs[0].NextSlot.In(berlin).Hour() != 3 || !st.Jobs[0].NextSlot.After(time.Now()) ||
			st.Jobs[1].NextSlot == nil || st.Jobs[1].NextSlot.Minute() != 0 {
			t.Fatalf("status -json jobs = %+v", st.Jobs)
		}
		if len(st.Replicas) != 1 || st.Replicas[0].ID != "web-1" || !st.Replicas[0].Live || !st.Replicas[0].Leader || !st.Replicas[0].MatchesTable {
			t.Fatalf("status -json replicas = %+v", st.Replicas)
		}
	})

	// The commands as a shell runs them: a process whose whole
	// environment is CONSUL_HTTP_ADDR and LEADERCRON_SERVICE.
	t.Run("FromAShell", func(t *testing.T) {
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		shell := func(args ...string) result {
			t.Helper()
			var out, errb bytes.Buffer
			cmd := &exec.Cmd{Path: exe, Args: append([]string{"leadercron"}, args...), Env: laptop, Stdout: &out, Stderr: &errb}
			err := cmd.Run()
			var exit *exec.ExitError
			if err != nil && !errors.As(err, &exit) {
				t.Fatalf("run %v: %v", args, err)
			}
			return result{cmd.ProcessState.ExitCode(), out.String(), errb.String()}
		}
		r := shell("status", "-history", "0")
		if r.code != cli.ExitOK || !strings.Contains(r.stdout, "leader  web-1 (session ") ||
			!strings.Contains(r.stdout, "nightly  0 3 * * *  Europe/Berlin  ") || r.stderr != "" {
			t.Fatalf("status from a shell = %+v", r)
		}
		r = shell("pause", "-by", "bob", "nightly")
		if r.code != cli.ExitOK || !strings.HasPrefix(r.stdout, "paused nightly (by bob") {
			t.Fatalf("pause from a shell = %+v", r)
		}
		if p, err := store.IsPaused(context.Background(), "nightly"); err != nil || p == nil || p.By != "bob" {
			t.Fatalf("pause from a shell did not land: %+v, %v", p, err)
		}
		r = shell("pause", "nope")
		if r.code != cli.ExitConfig || !strings.Contains(r.stderr, `unknown job "nope"; known jobs: nightly, tick (the fleet's job table`) {
			t.Fatalf("pause nope from a shell = %+v", r)
		}
		r = shell("resume", "nightly")
		if r.code != cli.ExitOK || !strings.HasPrefix(r.stdout, "resumed nightly (paused by bob") {
			t.Fatalf("resume from a shell = %+v", r)
		}
	})

	t.Run("PauseLandsAtTheLeader", func(t *testing.T) {
		r := run(t, laptop, "pause", "-by", "alice", "-reason", "INC-1", "nightly")
		if r.code != cli.ExitOK || !strings.HasPrefix(r.stdout, "paused nightly (by alice") || r.stderr != "" {
			t.Fatalf("pause = %+v", r)
		}
		eventually(t, "web-1's /status shows nightly paused", func() bool {
			body, err := web1.get("/status")
			if err != nil {
				return false
			}
			var st struct {
				Leader bool `json:"leader"`
				Jobs   []struct {
					Name   string `json:"name"`
					Paused *bool  `json:"paused"`
				} `json:"jobs"`
			}
			if json.Unmarshal([]byte(body), &st) != nil || !st.Leader {
				return false
			}
			for _, j := range st.Jobs {
				if j.Name == "nightly" {
					return j.Paused != nil && *j.Paused
				}
			}
			return false
		}, web1)
		r = run(t, laptop, "status")
		if !strings.Contains(r.stdout, `by alice at `) || !strings.Contains(r.stdout, `reason "INC-1"`) {
			t.Errorf("status does not show the pause:\n%s", r.stdout)
		}
		r = run(t, laptop, "resume", "nightly")
		if r.code != cli.ExitOK || !strings.HasPrefix(r.stdout, "resumed nightly (paused by alice") {
			t.Fatalf("resume = %+v", r)
		}
		r = run(t, laptop, "run", "-by", "alice", "tick")
		if r.code != cli.ExitOK || !strings.HasPrefix(r.stdout, "run-now request for tick queued") {
			t.Fatalf("run = %+v", r)
		}
	})

	t.Run("UnknownJob", func(t *testing.T) {
		r := run(t, laptop, "pause", "nope")
		want := `leadercron pause: unknown job "nope"; known jobs: nightly, tick (the fleet's job table leadercron/laptop-test/fleet/table, published by web-1, version dev, at `
		if r.code != cli.ExitConfig || !strings.Contains(r.stderr, want) {
			t.Fatalf("pause nope = %+v\nwant %q", r, want)
		}
		// A local configuration does not override the fleet's table.
		r = run(t, append(laptop[:2:2], "LEADERCRON_JOB_NOPE=@hourly"), "pause", "nope")
		if r.code != cli.ExitConfig || !strings.Contains(r.stderr, `unknown job "nope"; known jobs: nightly, tick`) {
			t.Fatalf("pause nope with a local job nope = %+v", r)
		}
		if p, err := store.IsPaused(context.Background(), "nope"); err != nil || p != nil {
			t.Fatalf("an unknown job was paused: %v, %v", p, err)
		}
		r = run(t, []string{"CONSUL_HTTP_ADDR=" + agent.Addr}, "status")
		if r.code != cli.ExitConfig || !strings.Contains(r.stderr, "which fleet? set LEADERCRON_SERVICE or pass -service NAME") {
			t.Fatalf("status without a service = %+v", r)
		}
	})

	t.Run("ReplicasDisagree", func(t *testing.T) {
		// web-2 runs another job table: tick every 2h, report, no
		// nightly. It waits as a standby until web-1's app turns
		// unhealthy, which takes web-1 out of the election but keeps it
		// running (and its member record live).
		web2 := startFleetSidecar(t, agent.Addr, "web-2", map[string]string{
			"TICK":   "@every 2h retries=2",
			"REPORT": "@daily",
		})
		defer web2.stop(t)
		eventually(t, "web-2 serves /status", func() bool { _, err := web2.get("/status"); return err == nil }, web2)
		web1.healthy.Store(false)
		waitTable(t, store, "web-2 leads and published its table", func(tb ledger.Tables) bool {
			return tb.Table != nil && tb.Table.Publisher == "web-2" && len(tb.Members) == 2
		}, web1, web2)

		eventually(t, "web-2's leadercron_job_table_mismatch is 1", func() bool {
			body, err := web2.get("/metrics")
			return err == nil && strings.Contains(body, "\nleadercron_job_table_mismatch 1\n")
		}, web2)
		if body, _ := web1.get("/metrics"); !strings.Contains(body, "\nleadercron_job_table_mismatch 0\n") {
			t.Errorf("web-1, not leading, reports a mismatch:\n%s", body)
		}
		logs := web2.logs.String()
		if !strings.Contains(logs, "replicas of this fleet run a different job table") ||
			!strings.Contains(logs, `nightly: only in web-1; report: only in this leader; tick: schedule \"@every 2h\" (this leader) vs \"@every 1h\" (web-1)`) {
			t.Errorf("web-2 did not warn about web-1's table:\n%s", logs)
		}

		r := run(t, laptop, "status")
		if r.code != cli.ExitOK {
			t.Fatalf("status = %+v", r)
		}
		t.Logf("status:\n%s", r.stdout)
		for _, want := range []string{
			"leader  web-2 (session ",
			"jobs    the fleet's job table: published by web-2",
			`DIFFERENT job table: nightly: only in web-1; report: only in the fleet's table; tick: schedule "@every 2h" (the fleet's table) vs "@every 1h" (web-1)`,
			"leader, the fleet's table",
			"WARNING: web-1 runs a job table other than the fleet's (a deploy half done?)",
			"report  @daily     UTC  ",
		} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("status lacks %q", want)
			}
		}
		r = run(t, laptop, "status", "-json")
		var st struct {
			TablesDisagree bool `json:"tables_disagree"`
			Replicas       []struct {
				ID           string   `json:"id"`
				MatchesTable bool     `json:"matches_table"`
				Differences  []string `json:"differences"`
			} `json:"replicas"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || !st.TablesDisagree || len(st.Replicas) != 2 ||
			st.Replicas[0].ID != "web-1" || st.Replicas[0].MatchesTable || len(st.Replicas[0].Differences) != 3 || !st.Replicas[1].MatchesTable {
			t.Fatalf("status -json = %+v, %v\n%s", st, err, r.stdout)
		}

		// The fleet's table is now web-2's: nightly is no longer a job.
		r = run(t, laptop, "pause", "nightly")
		if r.code != cli.ExitConfig || !strings.Contains(r.stderr, `unknown job "nightly"; known jobs: report, tick (the fleet's job table`) {
			t.Fatalf("pause nightly under web-2's table = %+v", r)
		}
	})
}
