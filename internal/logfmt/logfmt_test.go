package logfmt

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

func newJSON(buf *bytes.Buffer) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       "leadercron",
		Level:      hclog.Trace,
		JSONFormat: true,
		Output:     buf,
	})
}

// lines decodes one JSON object per line.
func lines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not a JSON line: %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

func TestJSONDurationHasUnit(t *testing.T) {
	// The unwrapped logger shows the defect being fixed.
	var raw bytes.Buffer
	newJSON(&raw).Info("config", "drain_timeout", 25*time.Second)
	if got := lines(t, &raw)[0]["drain_timeout"]; got != float64(25e9) {
		t.Fatalf("plain hclog wrote drain_timeout %v (%T); the premise of this package is that it writes nanoseconds", got, got)
	}

	var buf bytes.Buffer
	Durations(newJSON(&buf)).Info("config", "drain_timeout", 25*time.Second, "jobs", 2, "count", int64(7))
	if strings.Contains(buf.String(), "25000000000") {
		t.Errorf("output still holds nanoseconds: %s", buf.String())
	}
	m := lines(t, &buf)[0]
	if m["drain_timeout"] != "25s" {
		t.Errorf("drain_timeout = %#v, want \"25s\"", m["drain_timeout"])
	}
	// Only durations change: other numbers stay numbers.
	if m["jobs"] != float64(2) || m["count"] != float64(7) {
		t.Errorf("jobs = %#v, count = %#v, want the numbers 2 and 7", m["jobs"], m["count"])
	}
}

func TestEveryLevelAndLog(t *testing.T) {
	var buf bytes.Buffer
	l := Durations(newJSON(&buf))
	d := 1500 * time.Millisecond
	l.Trace("m", "d", d)
	l.Debug("m", "d", d)
	l.Info("m", "d", d)
	l.Warn("m", "d", d)
	l.Error("m", "d", d)
	l.Log(hclog.Warn, "m", "d", d)
	got := lines(t, &buf)
	wantLevels := []string{"trace", "debug", "info", "warn", "error", "warn"}
	if len(got) != len(wantLevels) {
		t.Fatalf("%d lines, want %d:\n%s", len(got), len(wantLevels), buf.String())
	}
	for i, m := range got {
		if m["@level"] != wantLevels[i] || m["d"] != "1.5s" {
			t.Errorf("line %d: level %v, d %#v; want %s and \"1.5s\"", i, m["@level"], m["d"], wantLevels[i])
		}
	}
}

func TestDerivedLoggers(t *testing.T) {
	var buf bytes.Buffer
	base := Durations(newJSON(&buf)).With("ttl", 15*time.Second, "id", "a")
	// hclog sorts implied arguments by key.
	if got := base.ImpliedArgs(); len(got) != 4 || got[2] != "ttl" || got[3] != "15s" {
		t.Errorf("ImpliedArgs() = %#v, want ttl as \"15s\"", got)
	}
	base.Named("leader").With("lock_delay", 15*time.Second).Info("m", "renew", 3750*time.Millisecond)
	base.ResetNamed("other").Info("m")
	got := lines(t, &buf)
	if len(got) != 2 {
		t.Fatalf("%d lines, want 2:\n%s", len(got), buf.String())
	}
	first, second := got[0], got[1]
	if first["@module"] != "leadercron.leader" || first["ttl"] != "15s" || first["lock_delay"] != "15s" || first["renew"] != "3.75s" || first["id"] != "a" {
		t.Errorf("Named+With logger wrote %v", first)
	}
	if second["@module"] != "other" || second["ttl"] != "15s" {
		t.Errorf("ResetNamed logger wrote %v", second)
	}
	if base.Name() != "leadercron" {
		t.Errorf("Name() = %q", base.Name())
	}
}

func TestTextOutputUnchanged(t *testing.T) {
	args := []any{
		"drain_timeout", 25 * time.Second,
		"small", 1500 * time.Microsecond, // "1.5ms"
		"tiny", 800 * time.Nanosecond,
		"micro", 3 * time.Microsecond, // "3µs": not ASCII, so hclog quotes it
		"zero", time.Duration(0),
		"negative", -2 * time.Minute,
		"long", 90 * time.Minute,
		"n", 3, "s", "two words",
	}
	render := func(wrap bool) string {
		var buf bytes.Buffer
		var l hclog.Logger = hclog.New(&hclog.LoggerOptions{Name: "leadercron", Level: hclog.Trace, Output: &buf, DisableTime: true})
		if wrap {
			l = Durations(l)
		}
		l = l.With("ttl", 15*time.Second)
		l.Info("config", args...)
		l.Named("sub").Warn("slow", "took", 2*time.Second)
		return buf.String()
	}
	plain, wrapped := render(false), render(true)
	if plain != wrapped {
		t.Errorf("text output differs.\nplain:\n%s\nwrapped:\n%s", plain, wrapped)
	}
	for _, want := range []string{"drain_timeout=25s", "small=1.5ms", "ttl=15s", "negative=-2m0s", `micro="3µs"`} {
		if !strings.Contains(wrapped, want) {
			t.Errorf("text output lacks %s:\n%s", want, wrapped)
		}
	}
}

func TestCallerArgsNotModified(t *testing.T) {
	var buf bytes.Buffer
	args := []any{"d", 5 * time.Second}
	l := Durations(newJSON(&buf))
	l.Info("m", args...)
	l.With(args...)
	if args[1] != 5*time.Second {
		t.Errorf("the caller's args were modified: %#v", args)
	}
}

func TestWrapOnce(t *testing.T) {
	l := Durations(hclog.NewNullLogger())
	if again := Durations(l); again != l {
		t.Errorf("wrapping twice added a layer")
	}
}

func TestLevelsAndStandardLogger(t *testing.T) {
	var buf bytes.Buffer
	l := Durations(hclog.New(&hclog.LoggerOptions{Level: hclog.Info, JSONFormat: true, Output: &buf}))
	if l.IsDebug() || !l.IsInfo() || l.GetLevel() != hclog.Info {
		t.Errorf("levels: IsDebug %v IsInfo %v GetLevel %v, want false, true, info", l.IsDebug(), l.IsInfo(), l.GetLevel())
	}
	l.SetLevel(hclog.Error)
	if l.IsWarn() || !l.IsError() || l.IsTrace() {
		t.Errorf("after SetLevel(Error): IsWarn %v IsError %v", l.IsWarn(), l.IsError())
	}
	l.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Error}).Print("from the log package")
	if _, err := l.StandardWriter(&hclog.StandardLoggerOptions{ForceLevel: hclog.Error}).Write([]byte("written\n")); err != nil {
		t.Fatal(err)
	}
	got := lines(t, &buf)
	if len(got) != 2 || got[0]["@message"] != "from the log package" || got[1]["@message"] != "written" {
		t.Errorf("standard logger output: %s", buf.String())
	}
}
