package config

import (
	"time"

	"github.com/robfig/cron/v3"

	"github.com/leadercron/leadercron/internal/scheduler"
)

// wallClock returns s, or, for a schedule in a time zone other than UTC that
// fires at chosen hours, a schedule that keeps each wall-clock slot once
// across daylight-saving transitions and other jumps of the zone's offset:
//
//   - a slot whose wall-clock time a jump forward skips (02:30 on the
//     night clocks go from 02:00 to 03:00) fires at the jump, once;
//   - a slot whose wall-clock time a jump back repeats (01:30 on the night
//     clocks go from 02:00 back to 01:00) fires at its first occurrence
//     only.
//
// robfig/cron on its own skips the first and fires the second twice.
// Schedules whose hour field is * (every hour or more often) follow real
// time and are left alone, as cronie does: a job every 15 minutes keeps
// running every 15 minutes through the repeated hour.
//
// The returned schedule's Next reports the zero time only when the
// schedule never fires again, which robfig/cron decides by finding no slot
// within five years; a transition never makes it give up.
func wallClock(s *cron.SpecSchedule) scheduler.Schedule {
	const allHours = 1<<24 - 1
	if s.Location == nil || s.Location == time.UTC || s.Hour&allHours == allHours {
		return s
	}
	naive := *s
	naive.Location = time.UTC
	return dstSchedule{loc: s.Location, naive: &naive}
}

// dstSchedule evaluates a cron schedule on the wall clock of loc (as if it
// were UTC) and maps each wall-clock slot back to one real instant.
type dstSchedule struct {
	loc   *time.Location
	naive *cron.SpecSchedule // the same fields, in UTC: wall-clock arithmetic
}

// Next returns the first slot strictly after t, or the zero time if the
// schedule never fires again.
//
// It walks the wall-clock slots after t's wall-clock reading and resolves
// each to its instant. The only slots that resolve to t or earlier are
// those of a repeated range whose first occurrence t has passed, and
// searchFrom starts past them, so the first slot resolved is almost
// always the answer. The loop ends whatever the zone data, with no bound
// that could turn a slow search into a false "never": each step moves the
// wall clock forward by at least a second, and a wall-clock reading
// resolves to within about a day of itself (UTC offsets lie within ±14
// hours, and a jump spans at most a day), so the slots soon resolve after
// t.
func (d dstSchedule) Next(t time.Time) time.Time {
	w := d.searchFrom(t)
	for {
		w = d.naive.Next(w)
		if w.IsZero() {
			return w
		}
		if r := resolve(w, d.loc); r.After(t) {
			return r.In(t.Location())
		}
	}
}

// searchFrom returns the wall-clock reading, as a UTC time, after which
// the first slot that may fire after t lies: t's own reading, or, if t is
// in the second occurrence of a range a jump back repeats, the last second
// of that range, since every reading in it first occurred before t.
func (d dstSchedule) searchFrom(t time.Time) time.Time {
	lt := t.In(d.loc)
	w := wall(lt)
	start, _ := lt.ZoneBounds()
	if start.IsZero() {
		return w // the zone has no earlier transition
	}
	_, off := lt.Zone()
	_, prevOff := start.Add(-time.Second).Zone()
	if prevOff <= off {
		return w // the zone began with a jump forward, or none
	}
	// The zone began with a jump back of delta: its first delta repeat
	// the readings of the last delta of the zone before.
	end := start.Add(time.Duration(prevOff-off) * time.Second)
	if !t.Before(end) {
		return w
	}
	// naive.Next returns the first slot strictly after its argument,
	// truncated to the second: from a second before the end of the
	// repeated range, it returns the first slot at or after that end.
	if last := wall(end.In(d.loc)).Add(-time.Second); last.After(w) {
		return last
	}
	return w
}

// wall returns t's wall-clock reading as a UTC time.
func wall(t time.Time) time.Time {
	y, mo, d := t.Date()
	h, mi, s := t.Clock()
	return time.Date(y, mo, d, h, mi, s, t.Nanosecond(), time.UTC)
}

// resolve returns the earliest instant whose wall clock in loc reads w; if
// no instant does (w lies in a gap skipped by a jump forward), it returns
// the instant of the jump.
func resolve(w time.Time, loc *time.Location) time.Time {
	y, mo, d := w.Date()
	h, mi, s := w.Clock()
	r := time.Date(y, mo, d, h, mi, s, w.Nanosecond(), loc)
	start, end := r.ZoneBounds()
	if wall(r).Equal(w) {
		// In a repeated hour time.Date may pick either occurrence; if
		// the zone began with a jump back, the earlier one is in the
		// zone before.
		if !start.IsZero() {
			_, off := r.Zone()
			_, prevOff := start.Add(-time.Second).Zone()
			if prevOff > off {
				alt := r.Add(-time.Duration(prevOff-off) * time.Second)
				if alt.Before(start) && wall(alt.In(loc)).Equal(w) {
					return alt
				}
			}
		}
		return r
	}
	// In a gap, time.Date answers with an instant on one side of the jump.
	if wall(r).After(w) {
		return start
	}
	return end
}
