package config

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/leadercron/leadercron/internal/scheduler"
)

// JobPrefix starts every job variable: LEADERCRON_JOB_<NAME>.
const JobPrefix = "LEADERCRON_JOB_"

// Job is one scheduled job as configured: the scheduler's Job (every
// option lands in one of its fields) and the variable it came from.
type Job struct {
	scheduler.Job
	Var string // the variable it came from
}

// Job option defaults.
const (
	// DefaultCatchup covers the longest gap a default configuration
	// leaves without a leader: a crash takeover of 2×TTL + lock-delay +
	// 1s = 46s, and a graceful handover of the 25s drain plus about a
	// second. A slot missed in such a gap fires late instead of being
	// dropped.
	DefaultCatchup = time.Minute
	// DefaultBackoff is the pause before the first retry; it doubles.
	DefaultBackoff = time.Second
	// MaxRetries bounds retries=.
	MaxRetries = 10
)

var (
	jobNameRE = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`)

	// cronParser accepts five fields, an optional leading seconds field,
	// and the descriptors (@hourly, @daily, ...). @every is handled by
	// parseEvery so that its slots line up across the fleet.
	cronParser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour |
		cron.Dom | cron.Month | cron.Dow | cron.Descriptor)
)

// jobOptions are the key=value options a job accepts after its schedule.
// Adding an option is adding an entry here.
var jobOptions = map[string]func(j *Job, value string) string{
	"tz": func(j *Job, v string) string {
		loc, err := time.LoadLocation(v)
		if err != nil || v == "" || strings.EqualFold(v, "local") {
			return "unknown time zone (use an IANA name such as Europe/Berlin or UTC)"
		}
		j.Location = loc
		return ""
	},
	"timeout": func(j *Job, v string) string {
		d, err := time.ParseDuration(v)
		if err != nil {
			return "not a duration (use Go syntax such as 30s or 5m)"
		}
		if d <= 0 {
			return "must be a positive duration"
		}
		j.Timeout = d
		return ""
	},
	"overlap": func(j *Job, v string) string {
		switch v {
		case "forbid":
			j.AllowOverlap = false
		case "allow":
			j.AllowOverlap = true
		default:
			return "must be forbid or allow"
		}
		return ""
	},
	"group": func(j *Job, v string) string {
		if !jobNameRE.MatchString(v) {
			return "must be lower-case letters and digits, optionally separated by single dashes"
		}
		j.Group = v
		return ""
	},
	"catchup": func(j *Job, v string) string {
		d, err := time.ParseDuration(v)
		if err != nil {
			return "not a duration (use Go syntax such as 0, 90s or 2h)"
		}
		if d < 0 {
			return "must not be negative (0 turns catch-up off)"
		}
		j.Catchup = d
		return ""
	},
	"retries": func(j *Job, v string) string {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > MaxRetries {
			return fmt.Sprintf("must be a whole number from 0 to %d", MaxRetries)
		}
		j.Retries = n
		return ""
	},
	"backoff": func(j *Job, v string) string {
		d, err := time.ParseDuration(v)
		if err != nil {
			return "not a duration (use Go syntax such as 500ms or 2s)"
		}
		if d <= 0 {
			return "must be a positive duration"
		}
		j.Backoff = d
		return ""
	},
}

// JobName turns the <NAME> of LEADERCRON_JOB_<NAME> into the job's name.
func JobName(suffix string) string {
	return strings.ReplaceAll(strings.ToLower(suffix), "_", "-")
}

func loadJobs(environ map[string]string, defaultTimeout time.Duration) ([]Job, Problems) {
	var (
		jobs   []Job
		ps     Problems
		byName = map[string]string{}
	)
	for _, key := range sortedKeys(environ, JobPrefix) {
		value := environ[key]
		name := JobName(strings.TrimPrefix(key, JobPrefix))
		if !jobNameRE.MatchString(name) {
			ps = append(ps, Problem{Var: key, Value: value,
				Msg: fmt.Sprintf("job name %q is not valid: use letters and digits separated by single underscores", name)})
			continue
		}
		if other, dup := byName[name]; dup {
			ps = append(ps, Problem{Var: key, Value: value,
				Msg: fmt.Sprintf("job name %q is already defined by %s", name, other)})
			continue
		}
		byName[name] = key
		j, msgs := parseJob(name, value, defaultTimeout)
		j.Var = key
		for _, m := range msgs {
			ps = append(ps, Problem{Var: key, Value: value, Msg: m})
		}
		if len(msgs) == 0 {
			jobs = append(jobs, j)
		}
	}
	return jobs, ps
}

// parseJob parses "<schedule> [key=value ...]". It returns every problem it
// finds rather than stopping at the first.
func parseJob(name, value string, defaultTimeout time.Duration) (Job, []string) {
	j := Job{Job: scheduler.Job{Name: name, Location: time.UTC, Timeout: defaultTimeout, Catchup: DefaultCatchup, Backoff: DefaultBackoff}}
	fields := strings.Fields(value)
	var msgs []string
	// robfig/cron's CRON_TZ= comes before the schedule: report it once and
	// parse the rest, rather than reading the schedule as options.
	for len(fields) > 0 && (strings.HasPrefix(fields[0], "CRON_TZ=") || strings.HasPrefix(fields[0], "TZ=")) {
		k, v, _ := strings.Cut(fields[0], "=")
		msgs = append(msgs, fmt.Sprintf("%s is not supported here: write tz=%s after the schedule", k, v))
		fields = fields[1:]
	}
	n := 0
	for n < len(fields) && !strings.Contains(fields[n], "=") {
		n++
	}
	j.Spec = strings.Join(fields[:n], " ")

	seen := map[string]bool{}
	for _, opt := range fields[n:] {
		k, v, _ := strings.Cut(opt, "=")
		set, known := jobOptions[k]
		switch {
		case k == "CRON_TZ" || k == "TZ":
			msgs = append(msgs, fmt.Sprintf("%s is not supported here: write tz=%s after the schedule", k, v))
		case !known:
			msgs = append(msgs, fmt.Sprintf("unknown option %q (known: %s)", k, knownOptions()))
		case seen[k]:
			msgs = append(msgs, fmt.Sprintf("option %q given twice", k))
		default:
			seen[k] = true
			if m := set(&j, v); m != "" {
				msgs = append(msgs, fmt.Sprintf("option %s=%q: %s", k, v, m))
			}
		}
	}

	if seen["backoff"] && j.Retries == 0 {
		msgs = append(msgs, "option backoff= has no effect without retries=")
	}

	switch {
	case j.Spec == "":
		msgs = append(msgs, "no schedule: expected a cron expression or a descriptor such as @hourly before any options")
	case strings.HasPrefix(j.Spec, "@every"):
		s, m := parseEvery(j.Spec)
		if m != "" {
			msgs = append(msgs, m)
		}
		j.Schedule = s
	default:
		s, err := cronParser.Parse(j.Spec)
		if err != nil {
			msgs = append(msgs, fmt.Sprintf("invalid schedule %q: %v", j.Spec, err))
			break
		}
		j.Schedule = s
		if spec, ok := s.(*cron.SpecSchedule); ok {
			spec.Location = j.Location
			j.Schedule = wallClock(spec)
		}
	}
	return j, msgs
}

func knownOptions() string {
	keys := make([]string, 0, len(jobOptions))
	for k := range jobOptions {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ", ")
}

// Every fires at whole multiples of Interval since the Unix epoch, so that
// every sidecar computes the same slots whenever it starts. robfig/cron's
// own @every counts from when the scheduler started, which would give each
// new leader different slots.
type Every struct{ Interval time.Duration }

// Next returns the first multiple of Interval strictly after t.
func (e Every) Next(t time.Time) time.Time {
	step := int64(e.Interval / time.Second)
	secs := t.Unix()
	next := (secs/step + 1) * step
	if secs < 0 && secs%step != 0 {
		next -= step // integer division rounds towards zero
	}
	return time.Unix(next, 0).In(t.Location())
}

func parseEvery(spec string) (Every, string) {
	raw := strings.TrimSpace(strings.TrimPrefix(spec, "@every"))
	d, err := time.ParseDuration(raw)
	switch {
	case err != nil:
		return Every{}, fmt.Sprintf("invalid schedule %q: %q is not a duration", spec, raw)
	case d < time.Second || d%time.Second != 0:
		return Every{}, fmt.Sprintf("invalid schedule %q: the interval must be a whole number of seconds, at least 1s", spec)
	}
	return Every{Interval: d}, ""
}
