package config_test

import (
	"reflect"
	"testing"
	"time"
	_ "time/tzdata" // the zone tests must not depend on the host's zoneinfo

	"github.com/leadercron/leadercron/internal/config"
)

func mustZone(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// oneJob loads an environment with the single job LEADERCRON_JOB_<suffix>.
func oneJob(t *testing.T, suffix, value string, extra map[string]string) config.Job {
	t.Helper()
	environ := map[string]string{config.JobPrefix + suffix: value}
	for k, v := range extra {
		environ[k] = v
	}
	cfg := mustLoad(t, environ, ecs)
	if len(cfg.Jobs) != 1 {
		t.Fatalf("got %d jobs, want 1: %+v", len(cfg.Jobs), cfg.Jobs)
	}
	return cfg.Jobs[0]
}

func TestJobName(t *testing.T) {
	t.Parallel()
	tests := []struct{ suffix, want string }{
		{"SEND_REPORT", "send-report"},
		{"send_report", "send-report"},
		{"Nightly_Backup_2", "nightly-backup-2"},
		{"X", "x"},
		{"PAYOUTS", "payouts"},
	}
	for _, tc := range tests {
		t.Run(tc.suffix, func(t *testing.T) {
			t.Parallel()
			if got := config.JobName(tc.suffix); got != tc.want {
				t.Errorf("JobName(%q) = %q, want %q", tc.suffix, got, tc.want)
			}
			if got := oneJob(t, tc.suffix, "@hourly", nil); got.Name != tc.want || got.Var != config.JobPrefix+tc.suffix {
				t.Errorf("loaded job is %q from %s, want %q from %s", got.Name, got.Var, tc.want, config.JobPrefix+tc.suffix)
			}
		})
	}
}

func TestJobsSortedByVariable(t *testing.T) {
	t.Parallel()
	environ := map[string]string{
		"LEADERCRON_JOB_alpha":       "@daily",
		"LEADERCRON_JOB_Zeta":        "@hourly",
		"LEADERCRON_JOB_SEND_REPORT": "0 9 * * 1-5 tz=Europe/Berlin timeout=5m",
		"LEADERCRON_JOB_BEAT":        "@every 30s",
		"LEADERCRON_JOB_TICK":        "*/10 * * * * *",
	}
	cfg := mustLoad(t, environ, ecs)

	type row struct {
		Name, Var, Spec, Zone string
		Timeout               time.Duration
	}
	var got []row
	for _, j := range cfg.Jobs {
		got = append(got, row{j.Name, j.Var, j.Spec, j.Location.String(), j.Timeout})
	}
	want := []row{
		{"beat", "LEADERCRON_JOB_BEAT", "@every 30s", "UTC", 10 * time.Minute},
		{"send-report", "LEADERCRON_JOB_SEND_REPORT", "0 9 * * 1-5", "Europe/Berlin", 5 * time.Minute},
		{"tick", "LEADERCRON_JOB_TICK", "*/10 * * * * *", "UTC", 10 * time.Minute},
		{"zeta", "LEADERCRON_JOB_Zeta", "@hourly", "UTC", 10 * time.Minute},
		{"alpha", "LEADERCRON_JOB_alpha", "@daily", "UTC", 10 * time.Minute},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("jobs:\n got %+v\nwant %+v", got, want)
	}
}

func TestJobTimeout(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		value   string
		environ map[string]string
		want    time.Duration
	}{
		{"built-in default", "@hourly", nil, 10 * time.Minute},
		{"LEADERCRON_TRIGGER_TIMEOUT", "@hourly", map[string]string{"LEADERCRON_TRIGGER_TIMEOUT": "90s"}, 90 * time.Second},
		{"timeout= option", "@hourly timeout=5m", nil, 5 * time.Minute},
		{"timeout= beats the global", "@hourly timeout=1h30m", map[string]string{"LEADERCRON_TRIGGER_TIMEOUT": "90s"}, 90 * time.Minute},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := oneJob(t, "X", tc.value, tc.environ).Timeout; got != tc.want {
				t.Errorf("timeout %v, want %v", got, tc.want)
			}
		})
	}
}

func TestJobSchedule(t *testing.T) {
	t.Parallel()
	seoul := mustZone(t, "Asia/Seoul")
	utc := func(s string) time.Time {
		t.Helper()
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		name  string
		value string
		zone  string
		from  time.Time
		want  []string // successive slots, RFC 3339 in UTC
	}{
		{"five fields", "*/15 * * * *", "UTC", utc("2024-01-01T10:07:30Z"),
			[]string{"2024-01-01T10:15:00Z", "2024-01-01T10:30:00Z", "2024-01-01T10:45:00Z"}},
		{"six fields: seconds", "*/10 * * * * *", "UTC", utc("2024-01-01T10:00:05Z"),
			[]string{"2024-01-01T10:00:10Z", "2024-01-01T10:00:20Z", "2024-01-01T10:00:30Z"}},
		{"six fields: one second of the day", "30 0 9 * * *", "UTC", utc("2024-01-01T10:00:00Z"),
			[]string{"2024-01-02T09:00:30Z", "2024-01-03T09:00:30Z"}},
		{"on a slot: the next one", "0 9 * * *", "UTC", utc("2024-01-01T09:00:00Z"),
			[]string{"2024-01-02T09:00:00Z", "2024-01-03T09:00:00Z"}},
		{"weekdays", "0 9 * * MON-FRI", "UTC", utc("2024-01-05T10:00:00Z"), // a Friday
			[]string{"2024-01-08T09:00:00Z", "2024-01-09T09:00:00Z"}},
		{"@hourly", "@hourly", "UTC", utc("2024-01-01T10:59:59Z"),
			[]string{"2024-01-01T11:00:00Z", "2024-01-01T12:00:00Z"}},
		{"@daily is midnight UTC by default", "@daily", "UTC", utc("2024-03-10T23:00:00Z"),
			[]string{"2024-03-11T00:00:00Z", "2024-03-12T00:00:00Z"}},
		{"tz=Asia/Seoul: 09:00 KST is 00:00 UTC", "0 9 * * * tz=Asia/Seoul", "Asia/Seoul", utc("2024-01-01T12:00:00Z"),
			[]string{"2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z"}},
		{"tz= applies to descriptors", "@daily tz=Asia/Seoul", "Asia/Seoul", utc("2024-01-01T12:00:00Z"),
			[]string{"2024-01-01T15:00:00Z", "2024-01-02T15:00:00Z"}},
		{"tz= follows daylight saving", "0 9 * * * tz=America/New_York", "America/New_York", utc("2024-03-09T15:00:00Z"),
			[]string{"2024-03-10T13:00:00Z", "2024-03-11T13:00:00Z"}},
		{"@every 30s", "@every 30s", "UTC", utc("2024-01-01T12:00:00Z"),
			[]string{"2024-01-01T12:00:30Z", "2024-01-01T12:01:00Z"}},
		{"@every 1m30s", "@every 1m30s", "UTC", utc("2024-01-01T12:00:01Z"),
			[]string{"2024-01-01T12:01:30Z", "2024-01-01T12:03:00Z"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			j := oneJob(t, "X", tc.value, nil)
			if j.Location.String() != tc.zone {
				t.Errorf("location %v, want %s", j.Location, tc.zone)
			}
			// The caller's zone must not matter: ask from UTC and from Seoul.
			for _, from := range []time.Time{tc.from, tc.from.In(seoul)} {
				at := from
				for i, w := range tc.want {
					at = j.Schedule.Next(at)
					if got := at.UTC().Format(time.RFC3339); got != w {
						t.Fatalf("Next #%d from %v: %s, want %s", i+1, from, got, w)
					}
				}
			}
		})
	}
}

func TestJobEverySchedule(t *testing.T) {
	t.Parallel()
	j := oneJob(t, "BEAT", "@every 30s", nil)
	if want := (config.Every{Interval: 30 * time.Second}); j.Schedule != want {
		t.Errorf("schedule %#v, want %#v (epoch-aligned, not robfig/cron's @every)", j.Schedule, want)
	}
	if j.Spec != "@every 30s" {
		t.Errorf("spec %q", j.Spec)
	}
}

func TestEveryNext(t *testing.T) {
	t.Parallel()
	seoul := mustZone(t, "Asia/Seoul")
	unix := func(sec, nsec int64) time.Time { return time.Unix(sec, nsec).UTC() }
	tests := []struct {
		name     string
		interval time.Duration
		at       time.Time
		want     time.Time
	}{
		{"the epoch is a boundary: next one", 30 * time.Second, unix(0, 0), unix(30, 0)},
		{"between boundaries", 30 * time.Second, unix(1_700_000_000, 0), unix(1_700_000_010, 0)},
		{"exactly on a boundary: next one", 30 * time.Second, unix(1_700_000_010, 0), unix(1_700_000_040, 0)},
		{"a nanosecond past a boundary", 30 * time.Second, unix(1_700_000_010, 1), unix(1_700_000_040, 0)},
		{"a nanosecond before a boundary", 30 * time.Second, unix(1_700_000_009, 999_999_999), unix(1_700_000_010, 0)},
		{"interval not dividing a minute", 7 * time.Second, unix(1_700_000_000, 0), unix(1_700_000_001, 0)},
		{"hourly on the hour", time.Hour,
			time.Date(2024, 1, 1, 10, 0, 0, 0, time.UTC), time.Date(2024, 1, 1, 11, 0, 0, 0, time.UTC)},
		{"hourly a second before", time.Hour,
			time.Date(2024, 1, 1, 10, 59, 59, 0, time.UTC), time.Date(2024, 1, 1, 11, 0, 0, 0, time.UTC)},
		{"24h is midnight UTC, whatever the zone", 24 * time.Hour,
			time.Date(2024, 1, 1, 8, 0, 0, 0, seoul), time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"before the epoch", 10 * time.Second, unix(-5, 0), unix(0, 0)},
		{"before the epoch, on a boundary", 10 * time.Second, unix(-10, 0), unix(0, 0)},
		{"before the epoch, past a boundary", 10 * time.Second, unix(-11, 0), unix(-10, 0)},
		{"half a second before the epoch", 10 * time.Second, unix(-1, 500_000_000), unix(0, 0)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := config.Every{Interval: tc.interval}
			got := e.Next(tc.at)
			if !got.Equal(tc.want) {
				t.Errorf("Every{%v}.Next(%v) = %v, want %v", tc.interval, tc.at, got.UTC(), tc.want)
			}
			if got.Location() != tc.at.Location() {
				t.Errorf("Next returned zone %v, want the caller's %v", got.Location(), tc.at.Location())
			}
		})
	}
}

// TestEveryNextProperties checks, over a spread of instants, that Next is
// the first multiple of the interval strictly after its input.
func TestEveryNextProperties(t *testing.T) {
	t.Parallel()
	start := time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)
	for _, iv := range []time.Duration{time.Second, 7 * time.Second, 30 * time.Second, 5 * time.Minute, 24 * time.Hour} {
		e := config.Every{Interval: iv}
		for _, off := range []time.Duration{0, 1, 499 * time.Millisecond, time.Second, 7 * time.Second, 59 * time.Second, 3*time.Hour + 1} {
			at := start.Add(off)
			next := e.Next(at)
			if !next.After(at) || next.Sub(at) > iv {
				t.Errorf("Every{%v}.Next(%v) = %v: not within (at, at+interval]", iv, at, next)
			}
			if next.UnixNano()%int64(iv) != 0 {
				t.Errorf("Every{%v}.Next(%v) = %v: not a multiple of the interval since the epoch", iv, at, next)
			}
		}
	}
}

func TestJobProblem(t *testing.T) {
	t.Parallel()
	const noSchedule = "no schedule"
	tests := []struct {
		name    string
		environ map[string]string
		want    []wantProblem
	}{
		{"invalid cron minute", map[string]string{"LEADERCRON_JOB_X": "61 * * * *"},
			[]wantProblem{{"LEADERCRON_JOB_X", "61 * * * *", `invalid schedule "61 * * * *"`}}},
		{"seven fields", map[string]string{"LEADERCRON_JOB_X": "0 0 0 * * * 2024"},
			[]wantProblem{{"LEADERCRON_JOB_X", "0 0 0 * * * 2024", "invalid schedule"}}},
		{"four fields", map[string]string{"LEADERCRON_JOB_X": "* * * *"},
			[]wantProblem{{"LEADERCRON_JOB_X", "* * * *", "invalid schedule"}}},
		{"unknown descriptor", map[string]string{"LEADERCRON_JOB_X": "@reboot"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@reboot", `invalid schedule "@reboot"`}}},
		{"unknown option", map[string]string{"LEADERCRON_JOB_X": "@hourly retry=3"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@hourly retry=3", `unknown option "retry" (known: backoff, catchup, group, overlap, retries, timeout, tz)`}}},
		{"overlap= unknown", map[string]string{"LEADERCRON_JOB_X": "@hourly overlap=skip"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@hourly overlap=skip", `option overlap="skip": must be forbid or allow`}}},
		{"group= with upper case", map[string]string{"LEADERCRON_JOB_X": "@hourly group=Billing"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@hourly group=Billing", `option group="Billing": must be lower-case letters and digits`}}},
		{"group= empty", map[string]string{"LEADERCRON_JOB_X": "@hourly group="},
			[]wantProblem{{"LEADERCRON_JOB_X", "@hourly group=", `option group="": must be lower-case`}}},
		{"catchup= not a duration", map[string]string{"LEADERCRON_JOB_X": "@hourly catchup=yes"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@hourly catchup=yes", `option catchup="yes": not a duration`}}},
		{"catchup= negative", map[string]string{"LEADERCRON_JOB_X": "@hourly catchup=-1m"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@hourly catchup=-1m", `option catchup="-1m": must not be negative`}}},
		{"retries= negative", map[string]string{"LEADERCRON_JOB_X": "@hourly retries=-1"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@hourly retries=-1", `option retries="-1": must be a whole number from 0 to 10`}}},
		{"retries= too many", map[string]string{"LEADERCRON_JOB_X": "@hourly retries=11"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@hourly retries=11", `option retries="11": must be a whole number from 0 to 10`}}},
		{"retries= not a number", map[string]string{"LEADERCRON_JOB_X": "@hourly retries=three"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@hourly retries=three", `option retries="three": must be a whole number`}}},
		{"backoff= zero", map[string]string{"LEADERCRON_JOB_X": "@hourly retries=2 backoff=0s"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@hourly retries=2 backoff=0s", `option backoff="0s": must be a positive duration`}}},
		{"backoff= without retries", map[string]string{"LEADERCRON_JOB_X": "@hourly backoff=2s"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@hourly backoff=2s", "option backoff= has no effect without retries="}}},
		{"word after the options", map[string]string{"LEADERCRON_JOB_X": "@hourly tz=UTC daily"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@hourly tz=UTC daily", `unknown option "daily"`}}},
		{"option given twice", map[string]string{"LEADERCRON_JOB_X": "@hourly tz=UTC tz=Asia/Seoul"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@hourly tz=UTC tz=Asia/Seoul", `option "tz" given twice`}}},
		{"timeout= not a duration", map[string]string{"LEADERCRON_JOB_X": "@hourly timeout=5"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@hourly timeout=5", `option timeout="5": not a duration`}}},
		{"timeout= empty", map[string]string{"LEADERCRON_JOB_X": "@hourly timeout="},
			[]wantProblem{{"LEADERCRON_JOB_X", "@hourly timeout=", `option timeout="": not a duration`}}},
		{"timeout= zero", map[string]string{"LEADERCRON_JOB_X": "@hourly timeout=0s"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@hourly timeout=0s", `option timeout="0s": must be a positive duration`}}},
		{"timeout= negative", map[string]string{"LEADERCRON_JOB_X": "@hourly timeout=-1m"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@hourly timeout=-1m", `option timeout="-1m": must be a positive duration`}}},
		{"tz= unknown zone", map[string]string{"LEADERCRON_JOB_X": "@daily tz=Mars/Olympus"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@daily tz=Mars/Olympus", `option tz="Mars/Olympus": unknown time zone`}}},
		{"tz= empty", map[string]string{"LEADERCRON_JOB_X": "@daily tz="},
			[]wantProblem{{"LEADERCRON_JOB_X", "@daily tz=", `option tz="": unknown time zone`}}},
		{"tz=Local refused", map[string]string{"LEADERCRON_JOB_X": "@daily tz=Local"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@daily tz=Local", `option tz="Local": unknown time zone`}}},
		{"CRON_TZ= after the schedule", map[string]string{"LEADERCRON_JOB_X": "0 9 * * * CRON_TZ=Asia/Seoul"},
			[]wantProblem{{"LEADERCRON_JOB_X", "0 9 * * * CRON_TZ=Asia/Seoul", "CRON_TZ is not supported here: write tz=Asia/Seoul after the schedule"}}},
		{"CRON_TZ= before the schedule, as robfig/cron writes it", map[string]string{"LEADERCRON_JOB_X": "CRON_TZ=Asia/Seoul 0 9 * * *"},
			[]wantProblem{{"LEADERCRON_JOB_X", "CRON_TZ=Asia/Seoul 0 9 * * *", "CRON_TZ is not supported here: write tz=Asia/Seoul after the schedule"}}},
		{"TZ= before a descriptor", map[string]string{"LEADERCRON_JOB_X": "TZ=UTC @daily"},
			[]wantProblem{{"LEADERCRON_JOB_X", "TZ=UTC @daily", "TZ is not supported here: write tz=UTC after the schedule"}}},
		{"only options", map[string]string{"LEADERCRON_JOB_X": "tz=UTC timeout=5m"},
			[]wantProblem{{"LEADERCRON_JOB_X", "tz=UTC timeout=5m", noSchedule}}},
		{"empty value", map[string]string{"LEADERCRON_JOB_X": ""},
			[]wantProblem{{"LEADERCRON_JOB_X", "", noSchedule}}},
		{"blank value", map[string]string{"LEADERCRON_JOB_X": "   "},
			[]wantProblem{{"LEADERCRON_JOB_X", "   ", noSchedule}}},
		{"@every 1500ms", map[string]string{"LEADERCRON_JOB_X": "@every 1500ms"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@every 1500ms", "whole number of seconds, at least 1s"}}},
		{"@every 0s", map[string]string{"LEADERCRON_JOB_X": "@every 0s"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@every 0s", "whole number of seconds, at least 1s"}}},
		{"@every 500ms", map[string]string{"LEADERCRON_JOB_X": "@every 500ms"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@every 500ms", "at least 1s"}}},
		{"@every -30s", map[string]string{"LEADERCRON_JOB_X": "@every -30s"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@every -30s", "at least 1s"}}},
		{"@every without interval", map[string]string{"LEADERCRON_JOB_X": "@every"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@every", `"" is not a duration`}}},
		{"@every with a bad interval", map[string]string{"LEADERCRON_JOB_X": "@every often"},
			[]wantProblem{{"LEADERCRON_JOB_X", "@every often", `"often" is not a duration`}}},
		{"names that normalise to the same job", map[string]string{
			"LEADERCRON_JOB_SEND_REPORT": "@daily",
			"LEADERCRON_JOB_send_report": "@hourly",
		}, []wantProblem{{"LEADERCRON_JOB_send_report", "@hourly", `job name "send-report" is already defined by LEADERCRON_JOB_SEND_REPORT`}}},
		{"double underscore", map[string]string{"LEADERCRON_JOB_SEND__REPORT": "@daily"},
			[]wantProblem{{"LEADERCRON_JOB_SEND__REPORT", "@daily", `job name "send--report" is not valid`}}},
		{"leading underscore", map[string]string{"LEADERCRON_JOB__X": "@daily"},
			[]wantProblem{{"LEADERCRON_JOB__X", "@daily", `job name "-x" is not valid`}}},
		{"trailing underscore", map[string]string{"LEADERCRON_JOB_X_": "@daily"},
			[]wantProblem{{"LEADERCRON_JOB_X_", "@daily", `job name "x-" is not valid`}}},
		{"no name", map[string]string{"LEADERCRON_JOB_": "@daily"},
			[]wantProblem{{"LEADERCRON_JOB_", "@daily", `job name "" is not valid`}}},
		{"punctuation in the name", map[string]string{"LEADERCRON_JOB_SEND.REPORT": "@daily"},
			[]wantProblem{{"LEADERCRON_JOB_SEND.REPORT", "@daily", `job name "send.report" is not valid`}}},
		{"several problems in one job", map[string]string{"LEADERCRON_JOB_X": "61 * * * * retry=3 timeout=0s"},
			[]wantProblem{
				{"LEADERCRON_JOB_X", "61 * * * * retry=3 timeout=0s", `unknown option "retry"`},
				{"LEADERCRON_JOB_X", "61 * * * * retry=3 timeout=0s", `option timeout="0s": must be a positive duration`},
				{"LEADERCRON_JOB_X", "61 * * * * retry=3 timeout=0s", `invalid schedule "61 * * * *"`},
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			checkProblems(t, loadProblems(t, tc.environ, ecs), tc.want...)
		})
	}
}
