package config

import (
	"fmt"
	"slices"
	"sort"
	"testing"
	"time"
	_ "time/tzdata" // the zone tests must not depend on the host's zoneinfo

	"github.com/robfig/cron/v3"

	"github.com/leadercron/leadercron/internal/scheduler"
)

// dstJob builds the schedule of "<spec> tz=<zone>" as the product does.
func dstJob(t *testing.T, spec, zone string) scheduler.Schedule {
	t.Helper()
	j, msgs := parseJob("x", spec+" tz="+zone, time.Minute)
	if len(msgs) > 0 {
		t.Fatalf("parseJob(%q tz=%s): %v", spec, zone, msgs)
	}
	if _, ok := j.Schedule.(dstSchedule); !ok {
		t.Fatalf("%q tz=%s: schedule %T, want dstSchedule", spec, zone, j.Schedule)
	}
	return j.Schedule
}

// rfc parses an RFC 3339 time; its offset picks the occurrence of a
// repeated wall-clock reading.
func rfc(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestDSTScheduleNext pins Next at the wall-clock jumps of several zones.
func TestDSTScheduleNext(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, spec, zone string
		from, want       string // RFC 3339 with the zone's offset at that instant
	}{
		// New York falls back on 2024-11-03 at 02:00 EDT to 01:00 EST.
		{"repeated hour, second occurrence, every second (issue 10)", "* * 1 * * *", "America/New_York",
			"2024-11-03T01:10:00-05:00", "2024-11-04T01:00:00-05:00"},
		{"repeated hour, first occurrence, every second", "* * 1 * * *", "America/New_York",
			"2024-11-03T01:10:00-04:00", "2024-11-03T01:10:01-04:00"},
		{"repeated hour, last second of the first occurrence", "* * 1 * * *", "America/New_York",
			"2024-11-03T01:59:59-04:00", "2024-11-04T01:00:00-05:00"},
		{"repeated hour, at the jump back", "*/10 * 1 * * *", "America/New_York",
			"2024-11-03T01:00:00-05:00", "2024-11-04T01:00:00-05:00"},
		{"repeated hour, last half second", "* * 1 * * *", "America/New_York",
			"2024-11-03T01:59:59.5-05:00", "2024-11-04T01:00:00-05:00"},
		{"repeated hour, one slot, second occurrence", "0 30 1 * * *", "America/New_York",
			"2024-11-03T01:20:00-05:00", "2024-11-04T01:30:00-05:00"},
		{"repeated hour, the hour after it", "* * 1,2 * * *", "America/New_York",
			"2024-11-03T01:10:00-05:00", "2024-11-03T02:00:00-05:00"},
		// New York springs forward on 2024-03-10 at 02:00 EST to 03:00 EDT.
		{"skipped hour, every second: at the jump", "* * 2 * * *", "America/New_York",
			"2024-03-10T01:59:59-05:00", "2024-03-10T03:00:00-04:00"},
		{"skipped hour, every second: once", "* * 2 * * *", "America/New_York",
			"2024-03-10T03:00:00-04:00", "2024-03-11T02:00:00-04:00"},
		{"skipped hour, every 10s: at the jump", "*/10 * 2 * * *", "America/New_York",
			"2024-03-10T01:00:00-05:00", "2024-03-10T03:00:00-04:00"},
		{"skipped hour, every 10s: once", "*/10 * 2 * * *", "America/New_York",
			"2024-03-10T03:00:00-04:00", "2024-03-11T02:00:00-04:00"},
		{"skipped slot: at the jump", "0 30 2 * * *", "America/New_York",
			"2024-03-10T01:00:00-05:00", "2024-03-10T03:00:00-04:00"},
		{"skipped slot: once", "0 30 2 * * *", "America/New_York",
			"2024-03-10T03:00:00-04:00", "2024-03-11T02:30:00-04:00"},
		// Lord Howe shifts by 30 minutes: back on 2024-04-07 at 02:00 to
		// 01:30, forward on 2024-10-06 at 02:00 to 02:30.
		{"Lord Howe, repeated half hour, every second", "* * 1 * * *", "Australia/Lord_Howe",
			"2024-04-07T01:40:00+10:30", "2024-04-08T01:00:00+10:30"},
		{"Lord Howe, repeated half hour, one slot", "0 45 1 * * *", "Australia/Lord_Howe",
			"2024-04-07T01:35:00+10:30", "2024-04-08T01:45:00+10:30"},
		{"Lord Howe, skipped half hour", "0 15 2 * * *", "Australia/Lord_Howe",
			"2024-10-06T01:59:00+10:30", "2024-10-06T02:30:00+11:00"},
		// Santiago jumps at midnight: back on 2024-04-07 at 00:00 to 23:00
		// the day before, forward on 2024-09-08 at 00:00 to 01:00.
		{"Santiago, repeated hour before midnight", "* * 23 * * *", "America/Santiago",
			"2024-04-06T23:10:00-04:00", "2024-04-07T23:00:00-04:00"},
		{"Santiago, @daily in the skipped midnight", "@daily", "America/Santiago",
			"2024-09-07T12:00:00-04:00", "2024-09-08T01:00:00-03:00"},
		// Moscow left permanent summer time on 2014-10-26 at 02:00 for
		// 01:00: a jump back that is no daylight-saving transition.
		{"Moscow 2014, jump back outside DST", "* * 1 * * *", "Europe/Moscow",
			"2014-10-26T01:10:00+03:00", "2014-10-27T01:00:00+03:00"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := dstJob(t, tc.spec, tc.zone)
			from, want := rfc(t, tc.from), rfc(t, tc.want)
			if got := s.Next(from); !got.Equal(want) {
				t.Errorf("%q tz=%s: Next(%s) = %v, want %s", tc.spec, tc.zone, tc.from, got, tc.want)
			}
		})
	}
}

// transition is one jump of a zone's offset.
type transition struct {
	loc *time.Location
	at  time.Time // the first instant of the new offset
}

// transitions returns the jumps of zone during year.
func transitions(t *testing.T, zone string, year int) []transition {
	t.Helper()
	loc, err := time.LoadLocation(zone)
	if err != nil {
		t.Fatal(err)
	}
	var out []transition
	at := time.Date(year, 1, 1, 0, 0, 0, 0, loc)
	for {
		_, end := at.ZoneBounds()
		if end.IsZero() || end.Year() > year {
			return out
		}
		out = append(out, transition{loc, end})
		at = end
	}
}

// TestDSTScheduleProperties checks Next against an independent model of
// the documented semantics over the hours around every jump of several
// zones: each wall-clock slot fires at the first instant whose reading is
// the slot, and a slot no instant reads fires once, at the jump. Next(t)
// must be the first such firing strictly after t, for t all over the
// window, so it is never zero, never at or before t, fires no slot twice
// and skips none.
func TestDSTScheduleProperties(t *testing.T) {
	t.Parallel()
	zones := []struct {
		name string
		year int
	}{
		{"America/New_York", 2024},
		{"Europe/Berlin", 2024},
		{"Australia/Lord_Howe", 2024}, // 30-minute jumps
		{"America/Santiago", 2024},    // southern, jumps at midnight
		{"Europe/Moscow", 2011},       // forward, no DST on either side
		{"Europe/Moscow", 2014},       // back, no DST on either side
	}
	// Chosen hours that cover every zone's jumps, dense and sparse.
	specs := []string{
		"*/2 * 0-3,23 * * *",
		"* * 1 * * *",
		"*/10 * 1,2 * * *",
		"0 */15 0-3,23 * * *",
		"0 30 1,2 * * *",
		"0 45 1 * * *",
		"0 0 3 * * *",
		"30 2 * * *",
		"@daily",
	}
	for _, z := range zones {
		trs := transitions(t, z.name, z.year)
		if len(trs) == 0 {
			t.Fatalf("%s has no transition in %d", z.name, z.year)
		}
		for _, tr := range trs {
			for _, spec := range specs {
				name := fmt.Sprintf("%s/%s/%s", z.name, tr.at.Format(time.DateOnly), spec)
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					checkAround(t, dstJob(t, spec, z.name), spec, tr)
				})
			}
		}
	}
}

// window is how far either side of a jump the property test looks; it
// must exceed the longest jump tested (an hour) so that both occurrences
// of a repeated range lie inside it.
const window = 90 * time.Minute

// checkAround compares s, the schedule of spec, with the model over the
// window around tr.
func checkAround(t *testing.T, s scheduler.Schedule, spec string, tr transition) {
	t.Helper()
	from, to := tr.at.Add(-window), tr.at.Add(window)
	want := modelSlots(t, spec, tr, from, to)
	got := iterate(s, from, to)
	checkOnceADay(t, got, tr.loc)
	checkSame(t, got, want, tr.loc)
	after := s.Next(to) // the answer for any t with no slot in (t, to]
	if after.IsZero() || !after.After(to) {
		t.Fatalf("Next(%v) = %v", to, after)
	}
	// Step by an odd number of seconds plus a fraction, so that t lands
	// on slots, between them and off whole seconds.
	const step = 7*time.Second + 333*time.Millisecond
	for at := from; !at.After(to); at = at.Add(step) {
		i := sort.Search(len(want), func(i int) bool { return want[i].After(at) })
		exp := after
		if i < len(want) {
			exp = want[i]
		}
		switch n := s.Next(at); {
		case n.IsZero():
			t.Fatalf("Next(%v) is the zero time (never again), want %v", at.In(tr.loc), exp.In(tr.loc))
		case !n.After(at):
			t.Fatalf("Next(%v) = %v, not after it", at.In(tr.loc), n.In(tr.loc))
		case !n.Equal(exp):
			t.Fatalf("Next(%v) = %v, want %v", at.In(tr.loc), n.In(tr.loc), exp.In(tr.loc))
		}
	}
}

// checkSame fails at the first difference between the slots got and
// those wanted.
func checkSame(t *testing.T, got, want []time.Time, loc *time.Location) {
	t.Helper()
	for i := range min(len(got), len(want)) {
		if !got[i].Equal(want[i]) {
			t.Fatalf("slot #%d: %v, want %v", i, got[i].In(loc), want[i].In(loc))
		}
	}
	switch {
	case len(got) > len(want):
		t.Fatalf("extra slots from %v (%d in all, want %d)", got[len(want)].In(loc), len(got), len(want))
	case len(got) < len(want):
		t.Fatalf("missing slots from %v (%d in all, want %d)", want[len(got)].In(loc), len(got), len(want))
	}
}

// iterate returns the slots of s in [from, to], found by chaining Next.
func iterate(s scheduler.Schedule, from, to time.Time) []time.Time {
	var out []time.Time
	for at := s.Next(from.Add(-time.Nanosecond)); !at.IsZero() && !at.After(to); at = s.Next(at) {
		out = append(out, at.In(time.UTC))
	}
	return out
}

// checkOnceADay fails if two slots read the same wall-clock time in loc.
func checkOnceADay(t *testing.T, slots []time.Time, loc *time.Location) {
	t.Helper()
	seen := map[time.Time]time.Time{}
	for _, r := range slots {
		w := wall(r.In(loc))
		if prev, ok := seen[w]; ok {
			t.Fatalf("wall-clock slot %v fires twice: at %v and %v", w, prev, r)
		}
		seen[w] = r
	}
}

// modelSlots returns, in UTC, the instants in [from, to] at which the
// semantics documented on wallClock fire spec around tr: each slot at the
// first instant, under the offset before or after the jump, whose reading
// is the slot, or at the jump if neither reads it.
func modelSlots(t *testing.T, spec string, tr transition, from, to time.Time) []time.Time {
	t.Helper()
	_, before := tr.at.Add(-time.Second).Zone()
	_, after := tr.at.Zone()
	var out []time.Time
	for _, w := range wallSlots(t, spec, wall(from.In(tr.loc)), wall(to.In(tr.loc))) {
		var at time.Time
		for _, off := range []int{before, after} {
			x := w.Add(-time.Duration(off) * time.Second)
			if wall(x.In(tr.loc)).Equal(w) && (at.IsZero() || x.Before(at)) {
				at = x
			}
		}
		if at.IsZero() { // skipped by the jump: fires at it
			at = tr.at
		}
		if !at.Before(from) && !at.After(to) {
			out = append(out, at.In(time.UTC))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Before(out[j]) })
	// Slots skipped by the jump, and one right at it, fire once together.
	return slices.CompactFunc(out, time.Time.Equal)
}

// wallSlots returns the wall-clock slots of spec in [from, to] in order,
// wall-clock readings as UTC times, by robfig/cron's own arithmetic in UTC, where no
// reading is skipped or repeated.
func wallSlots(t *testing.T, spec string, from, to time.Time) []time.Time {
	t.Helper()
	s, err := cronParser.Parse(spec)
	if err != nil {
		t.Fatal(err)
	}
	naive, ok := s.(*cron.SpecSchedule)
	if !ok {
		t.Fatalf("%q: %T", spec, s)
	}
	naive.Location = time.UTC
	var out []time.Time
	for w := naive.Next(from.Add(-time.Second)); !w.IsZero() && !w.After(to); w = naive.Next(w) {
		out = append(out, w)
	}
	return out
}
