package config_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/config"
)

// ecs is what the caller would have found in the ECS task metadata.
var ecs = config.Defaults{
	Service: "billing",
	ID:      "arn:aws:ecs:eu-west-1:123456789012:task/prod/0123456789abcdef",
}

// mustLoad loads environ and fails the test on any problem.
func mustLoad(t *testing.T, environ map[string]string, def config.Defaults) config.Config {
	t.Helper()
	cfg, err := config.Load(environ, def)
	if err != nil {
		t.Fatalf("Load: unexpected error:\n%v", err)
	}
	return cfg
}

// loadProblems loads environ, expects it to be refused, checks that no
// half-filled Config came back, and returns the problems.
func loadProblems(t *testing.T, environ map[string]string, def config.Defaults) config.Problems {
	t.Helper()
	cfg, err := config.Load(environ, def)
	if err == nil {
		t.Fatalf("Load: no error, want problems; got config %+v", cfg)
	}
	var ps config.Problems
	if !errors.As(err, &ps) {
		t.Fatalf("Load: error is %T (%v), want config.Problems", err, err)
	}
	if !reflect.DeepEqual(cfg, config.Config{}) {
		t.Errorf("Load returned a non-zero Config with its error: %+v", cfg)
	}
	if got, want := strings.Count(err.Error(), "\n")+1, len(ps); got != want {
		t.Errorf("Problems.Error() has %d lines, want one per problem (%d):\n%v", got, want, err)
	}
	return ps
}

// wantProblem is one expected problem: the variable, its value as it must
// be quoted in the message, and a fragment of the explanation.
type wantProblem struct {
	Var   string
	Value string
	Msg   string // a fragment of Problem.Msg
}

// checkProblems asserts that ps is exactly want, in order.
func checkProblems(t *testing.T, ps config.Problems, want ...wantProblem) {
	t.Helper()
	if len(ps) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%v", len(ps), len(want), ps)
	}
	for i, w := range want {
		p := ps[i]
		if p.Var != w.Var || p.Value != w.Value {
			t.Errorf("problem %d is about %s=%q, want %s=%q (%v)", i, p.Var, p.Value, w.Var, w.Value, p)
		}
		prefix := w.Var + ": "
		if w.Value != "" {
			prefix = w.Var + "=" + `"` + w.Value + `": `
		}
		if !strings.HasPrefix(p.Error(), prefix) {
			t.Errorf("problem %d reads %q, want it to start with %q", i, p.Error(), prefix)
		}
		if !strings.Contains(p.Msg, w.Msg) {
			t.Errorf("problem %d reads %q, want it to say %q", i, p.Error(), w.Msg)
		}
	}
}

func TestLoadDefaults(t *testing.T) {
	t.Parallel()
	cfg := mustLoad(t, map[string]string{}, ecs)

	checks := []struct {
		name string
		got  any
		want any
	}{
		{"service from Defaults", cfg.Service, "billing"},
		{"ID from Defaults", cfg.ID, ecs.ID},
		{"KV prefix", cfg.KVPrefix, "leadercron/billing"},
		{"lock key", cfg.Keys().Lock(), "leadercron/billing/leader"},
		{"jobs prefix", cfg.Keys().JobFolder("x"), "leadercron/billing/jobs/x/"},
		{"app URL", cfg.AppURL.String(), "http://127.0.0.1:8081"},
		{"listen", cfg.Listen, "127.0.0.1:9090"},
		{"lock", cfg.Lock, config.LockConsul},
		{"session TTL", cfg.SessionTTL, 15 * time.Second},
		{"lock delay", cfg.LockDelay, 15 * time.Second},
		{"drain timeout", cfg.DrainTimeout, 25 * time.Second},
		{"drain interval", cfg.DrainInterval, time.Second},
		{"trigger timeout", cfg.TriggerTimeout, 10 * time.Minute},
		{"log level", cfg.LogLevel, hclog.Info},
		{"log JSON", cfg.LogJSON, true},
		{"no jobs", len(cfg.Jobs), 0},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestLoadOverrides(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		environ map[string]string
		def     config.Defaults
		got     func(config.Config) any
		want    any
	}{
		{
			name:    "service overrides the task family",
			environ: map[string]string{"LEADERCRON_SERVICE": "payments"},
			def:     ecs,
			got:     func(c config.Config) any { return []string{c.Service, c.KVPrefix, c.Keys().Lock()} },
			want:    []string{"payments", "leadercron/payments", "leadercron/payments/leader"},
		},
		{
			name:    "service without ECS metadata",
			environ: map[string]string{"LEADERCRON_SERVICE": "payments"},
			def:     config.Defaults{ID: "host-1234"},
			got:     func(c config.Config) any { return c.Service },
			want:    "payments",
		},
		{
			name:    "ID overrides the task ARN",
			environ: map[string]string{"LEADERCRON_ID": "sidecar-a"},
			def:     ecs,
			got:     func(c config.Config) any { return c.ID },
			want:    "sidecar-a",
		},
		{
			name:    "KV prefix, trailing slash dropped",
			environ: map[string]string{"LEADERCRON_KV_PREFIX": "teams/billing/cron/"},
			def:     ecs,
			got:     func(c config.Config) any { return []string{c.KVPrefix, c.Keys().Lock(), c.Keys().JobFolder("x")} },
			want:    []string{"teams/billing/cron", "teams/billing/cron/leader", "teams/billing/cron/jobs/x/"},
		},
		{
			name:    "app URL with a base path, trailing slash dropped",
			environ: map[string]string{"LEADERCRON_APP_URL": "http://localhost:3000/app/"},
			def:     ecs,
			got:     func(c config.Config) any { return c.AppURL.String() },
			want:    "http://localhost:3000/app",
		},
		{
			name:    "https app URL",
			environ: map[string]string{"LEADERCRON_APP_URL": "https://app.internal:8443"},
			def:     ecs,
			got:     func(c config.Config) any { return c.AppURL.String() },
			want:    "https://app.internal:8443",
		},
		{
			name:    "listen on all interfaces",
			environ: map[string]string{"LEADERCRON_LISTEN": ":9191"},
			def:     ecs,
			got:     func(c config.Config) any { return c.Listen },
			want:    ":9191",
		},
		{
			name:    "standalone lock",
			environ: map[string]string{"LEADERCRON_LOCK": "none"},
			def:     ecs,
			got:     func(c config.Config) any { return c.Lock },
			want:    config.LockNone,
		},
		{
			name: "timings",
			environ: map[string]string{
				"LEADERCRON_SESSION_TTL":     "30s",
				"LEADERCRON_LOCK_DELAY":      "5s",
				"LEADERCRON_DRAIN_TIMEOUT":   "1m30s",
				"LEADERCRON_DRAIN_INTERVAL":  "250ms",
				"LEADERCRON_TRIGGER_TIMEOUT": "2h",
			},
			def: ecs,
			got: func(c config.Config) any {
				return []time.Duration{c.SessionTTL, c.LockDelay, c.DrainTimeout, c.DrainInterval, c.TriggerTimeout}
			},
			want: []time.Duration{30 * time.Second, 5 * time.Second, 90 * time.Second, 250 * time.Millisecond, 2 * time.Hour},
		},
		{
			name:    "limits are inclusive",
			environ: map[string]string{"LEADERCRON_SESSION_TTL": "24h", "LEADERCRON_LOCK_DELAY": "60s"},
			def:     ecs,
			got:     func(c config.Config) any { return []time.Duration{c.SessionTTL, c.LockDelay} },
			want:    []time.Duration{24 * time.Hour, time.Minute},
		},
		{
			name:    "empty variable means default",
			environ: map[string]string{"LEADERCRON_SESSION_TTL": "", "LEADERCRON_LOG_FORMAT": ""},
			def:     ecs,
			got:     func(c config.Config) any { return []any{c.SessionTTL, c.LogJSON} },
			want:    []any{15 * time.Second, true},
		},
		{
			name:    "log level debug",
			environ: map[string]string{"LEADERCRON_LOG_LEVEL": "debug"},
			def:     ecs,
			got:     func(c config.Config) any { return c.LogLevel },
			want:    hclog.Debug,
		},
		{
			name:    "log level is case-insensitive",
			environ: map[string]string{"LEADERCRON_LOG_LEVEL": "WARN"},
			def:     ecs,
			got:     func(c config.Config) any { return c.LogLevel },
			want:    hclog.Warn,
		},
		{
			name:    "text log format",
			environ: map[string]string{"LEADERCRON_LOG_FORMAT": "text"},
			def:     ecs,
			got:     func(c config.Config) any { return c.LogJSON },
			want:    false,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := mustLoad(t, tc.environ, tc.def)
			if got := tc.got(cfg); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestLoadProblem(t *testing.T) {
	t.Parallel()
	const (
		notDuration = "not a duration"
		positive    = "must be a positive duration"
		badURL      = "must start with http:// or https://"
	)
	tests := []struct {
		name    string
		environ map[string]string
		def     config.Defaults
		want    wantProblem
	}{
		// Timings.
		{"session TTL not a duration", map[string]string{"LEADERCRON_SESSION_TTL": "abc"}, ecs,
			wantProblem{"LEADERCRON_SESSION_TTL", "abc", notDuration}},
		{"lock delay without unit", map[string]string{"LEADERCRON_LOCK_DELAY": "15"}, ecs,
			wantProblem{"LEADERCRON_LOCK_DELAY", "15", notDuration}},
		{"drain timeout not a duration", map[string]string{"LEADERCRON_DRAIN_TIMEOUT": "soon"}, ecs,
			wantProblem{"LEADERCRON_DRAIN_TIMEOUT", "soon", notDuration}},
		{"drain interval not a duration", map[string]string{"LEADERCRON_DRAIN_INTERVAL": "1 s"}, ecs,
			wantProblem{"LEADERCRON_DRAIN_INTERVAL", "1 s", notDuration}},
		{"trigger timeout not a duration", map[string]string{"LEADERCRON_TRIGGER_TIMEOUT": "10 minutes"}, ecs,
			wantProblem{"LEADERCRON_TRIGGER_TIMEOUT", "10 minutes", notDuration}},
		{"zero session TTL", map[string]string{"LEADERCRON_SESSION_TTL": "0s"}, ecs,
			wantProblem{"LEADERCRON_SESSION_TTL", "0s", positive}},
		{"bare zero lock delay", map[string]string{"LEADERCRON_LOCK_DELAY": "0"}, ecs,
			wantProblem{"LEADERCRON_LOCK_DELAY", "0", positive}},
		{"negative lock delay", map[string]string{"LEADERCRON_LOCK_DELAY": "-1s"}, ecs,
			wantProblem{"LEADERCRON_LOCK_DELAY", "-1s", positive}},
		{"negative drain timeout", map[string]string{"LEADERCRON_DRAIN_TIMEOUT": "-25s"}, ecs,
			wantProblem{"LEADERCRON_DRAIN_TIMEOUT", "-25s", positive}},
		{"zero drain interval", map[string]string{"LEADERCRON_DRAIN_INTERVAL": "0ms"}, ecs,
			wantProblem{"LEADERCRON_DRAIN_INTERVAL", "0ms", positive}},
		{"negative trigger timeout", map[string]string{"LEADERCRON_TRIGGER_TIMEOUT": "-10m"}, ecs,
			wantProblem{"LEADERCRON_TRIGGER_TIMEOUT", "-10m", positive}},
		{"session TTL above Consul's maximum", map[string]string{"LEADERCRON_SESSION_TTL": "25h"}, ecs,
			wantProblem{"LEADERCRON_SESSION_TTL", "25h", "at most 24h"}},
		{"lock delay above 60s", map[string]string{"LEADERCRON_LOCK_DELAY": "61s"}, ecs,
			wantProblem{"LEADERCRON_LOCK_DELAY", "61s", "at most 60s"}},

		// Names.
		{"misspelt variable", map[string]string{"LEADERCRON_SESION_TTL": "15s"}, ecs,
			wantProblem{"LEADERCRON_SESION_TTL", "15s", "unknown variable"}},

		// Identity.
		{"missing service", map[string]string{}, config.Defaults{ID: "host-1234"},
			wantProblem{"LEADERCRON_SERVICE", "", "required"}},
		{"service with a space", map[string]string{"LEADERCRON_SERVICE": "my service"}, ecs,
			wantProblem{"LEADERCRON_SERVICE", "my service", "letters, digits"}},
		{"bad service from ECS", map[string]string{}, config.Defaults{Service: "-billing", ID: "x"},
			wantProblem{"LEADERCRON_SERVICE", "-billing", "letters, digits"}},
		{"missing ID", map[string]string{}, config.Defaults{Service: "billing"},
			wantProblem{"LEADERCRON_ID", "", "must not be empty"}},
		{"blank ID", map[string]string{"LEADERCRON_ID": "  "}, ecs,
			wantProblem{"LEADERCRON_ID", "  ", "must not be empty"}},
		{"absolute KV prefix", map[string]string{"LEADERCRON_KV_PREFIX": "/leadercron/billing"}, ecs,
			wantProblem{"LEADERCRON_KV_PREFIX", "/leadercron/billing", "relative Consul key path"}},
		{"KV prefix of only a slash", map[string]string{"LEADERCRON_KV_PREFIX": "/"}, ecs,
			wantProblem{"LEADERCRON_KV_PREFIX", "/", "relative Consul key path"}},
		{"KV prefix with a space", map[string]string{"LEADERCRON_KV_PREFIX": "leadercron/my billing"}, ecs,
			wantProblem{"LEADERCRON_KV_PREFIX", "leadercron/my billing", "without spaces"}},

		// App URL.
		{"app URL without scheme", map[string]string{"LEADERCRON_APP_URL": "localhost:8080"}, ecs,
			wantProblem{"LEADERCRON_APP_URL", "localhost:8080", badURL}},
		{"app URL of only an address", map[string]string{"LEADERCRON_APP_URL": "127.0.0.1:8080"}, ecs,
			wantProblem{"LEADERCRON_APP_URL", "127.0.0.1:8080", "not a URL"}},
		{"app URL with ftp scheme", map[string]string{"LEADERCRON_APP_URL": "ftp://127.0.0.1:8080"}, ecs,
			wantProblem{"LEADERCRON_APP_URL", "ftp://127.0.0.1:8080", badURL}},
		{"app URL without host", map[string]string{"LEADERCRON_APP_URL": "http:///jobs"}, ecs,
			wantProblem{"LEADERCRON_APP_URL", "http:///jobs", "must name a host"}},
		{"app URL with query", map[string]string{"LEADERCRON_APP_URL": "http://127.0.0.1:8080/?token=x"}, ecs,
			wantProblem{"LEADERCRON_APP_URL", "http://127.0.0.1:8080/?token=x", "must not carry a query"}},
		{"app URL with fragment", map[string]string{"LEADERCRON_APP_URL": "http://127.0.0.1:8080/#top"}, ecs,
			wantProblem{"LEADERCRON_APP_URL", "http://127.0.0.1:8080/#top", "fragment"}},
		{"app URL with user info", map[string]string{"LEADERCRON_APP_URL": "http://u:p@127.0.0.1:8080"}, ecs,
			wantProblem{"LEADERCRON_APP_URL", "http://u:p@127.0.0.1:8080", "user info"}},

		// Listen, lock, logging.
		{"listen without port", map[string]string{"LEADERCRON_LISTEN": "127.0.0.1"}, ecs,
			wantProblem{"LEADERCRON_LISTEN", "127.0.0.1", "must be host:port"}},
		{"listen with a named port", map[string]string{"LEADERCRON_LISTEN": "127.0.0.1:http"}, ecs,
			wantProblem{"LEADERCRON_LISTEN", "127.0.0.1:http", "port must be a number"}},
		{"listen port out of range", map[string]string{"LEADERCRON_LISTEN": "127.0.0.1:70000"}, ecs,
			wantProblem{"LEADERCRON_LISTEN", "127.0.0.1:70000", "port must be a number from 0 to 65535"}},
		{"unknown lock", map[string]string{"LEADERCRON_LOCK": "etcd"}, ecs,
			wantProblem{"LEADERCRON_LOCK", "etcd", `must be "consul" or "none"`}},
		{"lock is case-sensitive", map[string]string{"LEADERCRON_LOCK": "Consul"}, ecs,
			wantProblem{"LEADERCRON_LOCK", "Consul", `must be "consul" or "none"`}},
		{"unknown log level", map[string]string{"LEADERCRON_LOG_LEVEL": "verbose"}, ecs,
			wantProblem{"LEADERCRON_LOG_LEVEL", "verbose", "must be trace, debug, info, warn, error or off"}},
		{"unknown log format", map[string]string{"LEADERCRON_LOG_FORMAT": "logfmt"}, ecs,
			wantProblem{"LEADERCRON_LOG_FORMAT", "logfmt", "must be json or text"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			checkProblems(t, loadProblems(t, tc.environ, tc.def), tc.want)
		})
	}
}

// everythingWrong has one problem per line of want in TestLoadReportsEveryProblem.
var everythingWrong = map[string]string{
	"LEADERCRON_SESSION_TTL":     "abc",
	"LEADERCRON_LOCK_DELAY":      "90s",
	"LEADERCRON_DRAIN_TIMEOUT":   "0s",
	"LEADERCRON_DRAIN_INTERVAL":  "often",
	"LEADERCRON_APP_URL":         "ftp://app",
	"LEADERCRON_LISTEN":          "9090",
	"LEADERCRON_LOCK":            "redis",
	"LEADERCRON_LOG_LEVEL":       "loud",
	"LEADERCRON_LOG_FORMAT":      "xml",
	"LEADERCRON_JOB_REPORT":      "61 * * * *",
	"LEADERCRON_JOB_CLEANUP":     "@hourly retries=30",
	"LEADERCRON_JOB_SEND_REPORT": "@daily",
	"LEADERCRON_JOB_send_report": "@hourly",
	"LEADERCRON_JOB_TZ":          "0 9 * * * tz=Mars/Olympus timeout=never",
	"LEADERCRON_JOB_GOOD":        "@hourly",
}

func TestLoadReportsEveryProblem(t *testing.T) {
	t.Parallel()
	want := []wantProblem{
		// caarlos0/env's parse errors, in field order.
		{"LEADERCRON_SESSION_TTL", "abc", "not a duration"},
		{"LEADERCRON_DRAIN_INTERVAL", "often", "not a duration"},
		// Then the globals, in the order Load checks them.
		{"LEADERCRON_SERVICE", "", "required"},
		{"LEADERCRON_ID", "", "must not be empty"},
		{"LEADERCRON_APP_URL", "ftp://app", "http://"},
		{"LEADERCRON_LISTEN", "9090", "host:port"},
		{"LEADERCRON_LOCK", "redis", "consul"},
		{"LEADERCRON_DRAIN_TIMEOUT", "0s", "positive"},
		{"LEADERCRON_LOCK_DELAY", "90s", "at most 60s"},
		{"LEADERCRON_LOG_LEVEL", "loud", "must be"},
		{"LEADERCRON_LOG_FORMAT", "xml", "json or text"},
		// Then the jobs, by variable name; within a job, options first.
		{"LEADERCRON_JOB_CLEANUP", "@hourly retries=30", `option retries="30": must be a whole number from 0 to 10`},
		{"LEADERCRON_JOB_REPORT", "61 * * * *", `invalid schedule "61 * * * *"`},
		{"LEADERCRON_JOB_TZ", "0 9 * * * tz=Mars/Olympus timeout=never", `tz="Mars/Olympus": unknown time zone`},
		{"LEADERCRON_JOB_TZ", "0 9 * * * tz=Mars/Olympus timeout=never", `timeout="never": not a duration`},
		{"LEADERCRON_JOB_send_report", "@hourly", `"send-report" is already defined by LEADERCRON_JOB_SEND_REPORT`},
	}
	first := loadProblems(t, everythingWrong, config.Defaults{})
	checkProblems(t, first, want...)

	// Map iteration order changes from run to run; the report must not.
	for range 20 {
		_, err := config.Load(everythingWrong, config.Defaults{})
		if err == nil || err.Error() != first.Error() {
			t.Fatalf("Load reported the problems differently on another run:\n%v\nthen:\n%v", first, err)
		}
	}
}
