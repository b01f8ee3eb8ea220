package config

import (
	"strings"
	"testing"
	"time"
)

// maxFuzzJobValue bounds the fuzzed variable's length: real values are a
// schedule and a few options, and the parser's work and allocations grow
// with the input, so a bound keeps each run small.
const maxFuzzJobValue = 512

// FuzzParseJob fuzzes the parser of one LEADERCRON_JOB_<NAME> value
// (parseJob: "<schedule> [key=value ...]") and the schedule it builds.
//
// Properties, for every input:
//   - no panic, and a rejected value comes with non-empty messages;
//   - an accepted value is well formed: a schedule and a zone are set, the
//     schedule as written is non-empty, holds no option, and parses alone;
//     timeout and backoff are positive, catchup is not negative, retries
//     is within 0..MaxRetries, backoff= was given only with retries, a
//     group is a valid name;
//   - its schedule behaves: Next(t) is the zero time (never again) or a
//     whole second strictly after t, for t in several zones and around
//     the fuzzed instant, and stepping Next keeps moving forward; an
//     @every schedule's slot is a multiple of its interval no more than
//     one interval after t;
//   - parsing is deterministic: the same value gives the same slots.
//
// The seed corpus runs as an ordinary test under go test; `make fuzz`
// explores further.
func FuzzParseJob(f *testing.F) {
	for _, seed := range []string{
		"* * * * * *",
		"*/10 * * * * *",
		"0 3 * * MON-FRI",
		"0 9 * * MON-FRI tz=Europe/Berlin timeout=5m",
		"*/30 * * * * * overlap=forbid catchup=0",
		"@every 1m",
		"@every 30s",
		"@every 1h30m tz=Asia/Seoul",
		"@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight",
		"*/5 * * * * group=vendor-api timeout=4m",
		"0 * * * * catchup=30m retries=3 backoff=5s timeout=10m",
		"30 2 * * * tz=Europe/Berlin",       // skipped by the spring-forward jump
		"30 1 * * * tz=America/New_York",    // repeated by the fall-back jump
		"0 0 29 2 * tz=Australia/Lord_Howe", // leap day, a half-hour DST zone
		"0 0 30 2 *",                        // never fires
		"overlap=allow @hourly",
		"CRON_TZ=Europe/Berlin 0 3 * * *",
		"TZ=UTC @daily",
		"0 3 * * * CRON_TZ=UTC",
		"@every 500ms",
		"@every 0s",
		"@every -1s",
		"@every 2562047h",
		"0 3 * * * tz=Local",
		"0 3 * * * tz=../../etc/passwd",
		"0 3 * * * timeout=0",
		"0 3 * * * retries=11",
		"0 3 * * * retries=-1",
		"0 3 * * * backoff=1s",
		"0 3 * * * group=Bad_Group",
		"0 3 * * * timeout=1m timeout=2m",
		"0 3 * * * unknown=1",
		"0 3 * * * =",
		"60 * * * *",
		"* * * * * * *",
		"0-59/0 * * * *",
		"",
		"   ",
		"\t@hourly\n",
	} {
		f.Add(seed, int64(1767225600)) // 2026-01-01T00:00:00Z
	}
	f.Add("30 2 * * * tz=Europe/Berlin", int64(1774744200))    // 2026-03-29 01:30 UTC, the jump
	f.Add("30 1 * * * tz=America/New_York", int64(1793511000)) // 2026-11-01, the repeat
	f.Add("@every 7s", int64(-1))

	f.Fuzz(func(t *testing.T, value string, at int64) {
		if len(value) > maxFuzzJobValue {
			t.Skip()
		}
		j, msgs := parseJob("fuzz", value, 10*time.Minute)
		if len(msgs) > 0 {
			for _, m := range msgs {
				if m == "" {
					t.Fatalf("parseJob(%q): an empty problem message among %q", value, msgs)
				}
			}
			return
		}
		checkJob(t, value, j)

		// Instants around the fuzzed one, within 1970..2200 (robfig/cron
		// looks five years ahead; the sidecar never asks about year 1),
		// plus fixed ones across DST jumps.
		const lo, hi = 0, 7258118400 // 1970-01-01, 2200-01-01
		base := lo + (at%(hi-lo)+(hi-lo))%(hi-lo)
		instants := []time.Time{
			time.Unix(base, 0),
			time.Unix(base, int64(uint64(at)%1e9)),
			time.Unix(base, 0).Add(-time.Nanosecond),
			time.Date(2026, 3, 29, 1, 30, 0, 0, time.UTC),  // Europe's spring-forward
			time.Date(2026, 11, 1, 5, 30, 0, 0, time.UTC),  // America/New_York's repeated hour
			time.Date(2026, 10, 4, 15, 45, 0, 0, time.UTC), // Lord Howe's half-hour jump
		}
		again, _ := parseJob("fuzz", value, 10*time.Minute)
		for _, at := range instants {
			for _, loc := range []*time.Location{time.UTC, j.Location} {
				checkNext(t, value, j, at.In(loc))
				if a, b := j.Schedule.Next(at.In(loc)), again.Schedule.Next(at.In(loc)); !a.Equal(b) {
					t.Fatalf("parseJob(%q) twice: Next(%s) = %s and %s", value, at, a, b)
				}
			}
		}
	})
}

// checkJob checks the fields of an accepted job.
func checkJob(t *testing.T, value string, j Job) {
	t.Helper()
	switch {
	case j.Schedule == nil:
		t.Fatalf("parseJob(%q) accepted it without a schedule", value)
	case j.Location == nil:
		t.Fatalf("parseJob(%q) accepted it without a time zone", value)
	case j.Spec == "" || j.Spec != strings.Join(strings.Fields(j.Spec), " "):
		t.Fatalf("parseJob(%q): schedule as written %q is empty or not normalised", value, j.Spec)
	case strings.Contains(j.Spec, "="):
		t.Fatalf("parseJob(%q): schedule %q holds an option", value, j.Spec)
	case j.Timeout <= 0:
		t.Fatalf("parseJob(%q): timeout %s, want positive", value, j.Timeout)
	case j.Catchup < 0:
		t.Fatalf("parseJob(%q): catchup %s, want 0 or more", value, j.Catchup)
	case j.Retries < 0 || j.Retries > MaxRetries:
		t.Fatalf("parseJob(%q): retries %d, want 0..%d", value, j.Retries, MaxRetries)
	case j.Backoff <= 0:
		t.Fatalf("parseJob(%q): backoff %s, want positive", value, j.Backoff)
	case j.Backoff != DefaultBackoff && j.Retries == 0:
		t.Fatalf("parseJob(%q): backoff %s without retries", value, j.Backoff)
	case j.Group != "" && !jobNameRE.MatchString(j.Group):
		t.Fatalf("parseJob(%q): group %q is not a valid name", value, j.Group)
	}
	if _, msgs := parseJob("fuzz", j.Spec, 10*time.Minute); len(msgs) > 0 {
		t.Fatalf("parseJob(%q) accepted it, but its schedule %q alone is refused: %q", value, j.Spec, msgs)
	}
	if _, every := j.Schedule.(Every); every != strings.HasPrefix(j.Spec, "@every") {
		t.Fatalf("parseJob(%q): schedule %T for %q", value, j.Schedule, j.Spec)
	}
}

// checkNext checks a few steps of the schedule from t.
func checkNext(t *testing.T, value string, j Job, from time.Time) {
	t.Helper()
	prev := from
	for range 3 {
		n := j.Schedule.Next(prev)
		if n.IsZero() {
			return // never again: validate prints "(no further slots)"
		}
		if !n.After(prev) {
			t.Fatalf("parseJob(%q): Next(%s) = %s, not after its argument", value, prev, n)
		}
		if n.Nanosecond() != 0 {
			t.Fatalf("parseJob(%q): Next(%s) = %s, not a whole second (a slot is named by its second)", value, prev, n)
		}
		if e, ok := j.Schedule.(Every); ok {
			if n.Sub(prev) > e.Interval {
				t.Fatalf("parseJob(%q): Next(%s) = %s, more than the interval %s later", value, prev, n, e.Interval)
			}
			if n.Unix()%int64(e.Interval/time.Second) != 0 {
				t.Fatalf("parseJob(%q): Next(%s) = %s, not a multiple of %s since the epoch", value, prev, n, e.Interval)
			}
		}
		prev = n
	}
}
