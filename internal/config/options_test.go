package config_test

import (
	"testing"
	"time"

	"github.com/leadercron/leadercron/internal/config"
	"github.com/leadercron/leadercron/internal/scheduler"
)

func TestJobOptions(t *testing.T) {
	t.Parallel()
	defaults := config.Job{Job: scheduler.Job{Catchup: config.DefaultCatchup, Backoff: config.DefaultBackoff}}
	tests := []struct {
		value string
		want  config.Job // only the option fields are compared
	}{
		{"@hourly", defaults},
		{"@hourly overlap=forbid", defaults},
		{"@hourly overlap=allow", config.Job{Job: scheduler.Job{AllowOverlap: true, Catchup: time.Minute, Backoff: time.Second}}},
		{"@hourly group=billing-api", config.Job{Job: scheduler.Job{Group: "billing-api", Catchup: time.Minute, Backoff: time.Second}}},
		{"@hourly catchup=0", config.Job{Job: scheduler.Job{Catchup: 0, Backoff: time.Second}}},
		{"@hourly catchup=2h", config.Job{Job: scheduler.Job{Catchup: 2 * time.Hour, Backoff: time.Second}}},
		{"@hourly retries=3", config.Job{Job: scheduler.Job{Retries: 3, Catchup: time.Minute, Backoff: time.Second}}},
		{"@hourly retries=3 backoff=250ms", config.Job{Job: scheduler.Job{Retries: 3, Backoff: 250 * time.Millisecond, Catchup: time.Minute}}},
		{"*/5 * * * * * group=a overlap=allow catchup=10s retries=1 backoff=2s timeout=3s",
			config.Job{Job: scheduler.Job{Group: "a", AllowOverlap: true, Catchup: 10 * time.Second, Retries: 1, Backoff: 2 * time.Second}}},
	}
	for _, tc := range tests {
		t.Run(tc.value, func(t *testing.T) {
			t.Parallel()
			got := oneJob(t, "X", tc.value, nil)
			if got.AllowOverlap != tc.want.AllowOverlap || got.Group != tc.want.Group || got.Catchup != tc.want.Catchup ||
				got.Retries != tc.want.Retries || got.Backoff != tc.want.Backoff {
				t.Errorf("options of %q = overlap %v group %q catchup %v retries %d backoff %v; want %v %q %v %d %v", tc.value,
					got.AllowOverlap, got.Group, got.Catchup, got.Retries, got.Backoff,
					tc.want.AllowOverlap, tc.want.Group, tc.want.Catchup, tc.want.Retries, tc.want.Backoff)
			}
		})
	}
}

// TestDaylightSaving checks slots across real transitions: a wall-clock slot
// in a skipped hour fires at the jump, one in a repeated hour fires once,
// and schedules with * in the hour field follow real time.
func TestDaylightSaving(t *testing.T) {
	t.Parallel()
	utc := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		name, value, from string
		want              []string // UTC
	}{
		// America/New_York, 2026-03-08: 02:00 EST -> 03:00 EDT (07:00Z).
		{"New York spring forward: 02:30 fires at the jump", "30 2 * * * tz=America/New_York", "2026-03-07T00:00:00Z",
			[]string{"2026-03-07T07:30:00Z", "2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"}},
		{"New York spring forward: several slots in the gap fire once", "0,20,40 2 * * * tz=America/New_York", "2026-03-08T06:50:00Z",
			[]string{"2026-03-08T07:00:00Z", "2026-03-09T06:00:00Z"}},
		{"New York spring forward: 03:00 is unaffected", "0 3 * * * tz=America/New_York", "2026-03-08T00:00:00Z",
			[]string{"2026-03-08T07:00:00Z", "2026-03-09T07:00:00Z"}},
		// America/New_York, 2026-11-01: 02:00 EDT -> 01:00 EST (06:00Z).
		{"New York fall back: 01:30 fires once", "30 1 * * * tz=America/New_York", "2026-10-31T12:00:00Z",
			[]string{"2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"}},
		{"New York fall back: from inside the repeated hour", "30 1 * * * tz=America/New_York", "2026-11-01T06:10:00Z",
			[]string{"2026-11-02T06:30:00Z"}},
		{"New York fall back: every 30 minutes follows real time", "*/30 * * * * tz=America/New_York", "2026-11-01T05:00:00Z",
			[]string{"2026-11-01T05:30:00Z", "2026-11-01T06:00:00Z", "2026-11-01T06:30:00Z", "2026-11-01T07:00:00Z"}},
		// Europe/Berlin, 2026-03-29: 02:00 CET -> 03:00 CEST (01:00Z).
		{"Berlin spring forward: 02:15 fires at the jump", "15 2 * * * tz=Europe/Berlin", "2026-03-28T12:00:00Z",
			[]string{"2026-03-29T01:00:00Z", "2026-03-30T00:15:00Z"}},
		// Europe/Berlin, 2026-10-25: 03:00 CEST -> 02:00 CET (01:00Z).
		{"Berlin fall back: 02:30 fires once", "0 30 2 * * * tz=Europe/Berlin", "2026-10-24T12:00:00Z",
			[]string{"2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"}},
		{"Berlin fall back: a range of hours through the repeat", "0 1-3 * * * tz=Europe/Berlin", "2026-10-24T22:00:00Z",
			[]string{"2026-10-24T23:00:00Z", "2026-10-25T00:00:00Z", "2026-10-25T02:00:00Z", "2026-10-26T00:00:00Z"}},
		{"UTC has no transitions", "30 2 * * *", "2026-03-08T00:00:00Z",
			[]string{"2026-03-08T02:30:00Z", "2026-03-09T02:30:00Z"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			j := oneJob(t, "X", tc.value, nil)
			at := utc(tc.from)
			for i, w := range tc.want {
				at = j.Schedule.Next(at)
				if !at.Equal(utc(w)) {
					t.Fatalf("slot %d after %s = %s, want %s", i+1, tc.from, at.UTC().Format(time.RFC3339), w)
				}
			}
		})
	}
}

func TestAppHealthGate(t *testing.T) {
	t.Parallel()
	cfg := mustLoad(t, map[string]string{"LEADERCRON_APP_HEALTH_URL": "http://127.0.0.1:8080/healthz"}, ecs)
	if cfg.AppHealthURL == nil || cfg.AppHealthURL.String() != "http://127.0.0.1:8080/healthz" ||
		cfg.AppHealthInterval != 2*time.Second || cfg.AppHealthFailures != 3 {
		t.Errorf("health gate = %v every %v after %d failures; want the URL, 2s, 3", cfg.AppHealthURL, cfg.AppHealthInterval, cfg.AppHealthFailures)
	}
	if cfg := mustLoad(t, nil, ecs); cfg.AppHealthURL != nil {
		t.Errorf("health gate on by default: %v", cfg.AppHealthURL)
	}
	checkProblems(t, loadProblems(t, map[string]string{
		"LEADERCRON_APP_HEALTH_URL":      "localhost:8080/healthz",
		"LEADERCRON_APP_HEALTH_INTERVAL": "0s",
		"LEADERCRON_APP_HEALTH_FAILURES": "0",
	}, ecs),
		wantProblem{"LEADERCRON_APP_HEALTH_URL", "localhost:8080/healthz", "must start with http:// or https://"},
		wantProblem{"LEADERCRON_APP_HEALTH_FAILURES", "0", "must be at least 1"},
		wantProblem{"LEADERCRON_APP_HEALTH_INTERVAL", "0s", "must be a positive duration"},
	)
	checkProblems(t, loadProblems(t, map[string]string{"LEADERCRON_APP_HEALTH_FAILURES": "many"}, ecs),
		wantProblem{"LEADERCRON_APP_HEALTH_FAILURES", "many", "not a whole number"})
}
