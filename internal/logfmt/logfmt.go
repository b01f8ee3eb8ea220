// Package logfmt adapts an hclog.Logger so that durations are logged with
// their unit.
//
// hclog's JSON writer hands each value to encoding/json, which writes a
// time.Duration as its int64 count of nanoseconds: a drain timeout of 25 s
// appears as "drain_timeout":25000000000. Durations wraps a logger so that
// every time.Duration argument (of a log call, of With, and so of the
// implied arguments of every logger derived from it) is passed on as its
// String() form, "25s". hclog's text writer already prints durations that
// way, so text output is unchanged.
//
// hclog v1.6.3 has no hook for this: LoggerOptions offers no value
// formatter, and SubloggerHook sees only new loggers, not log calls.
//
// Guarantees: every time.Duration passed as a key/value argument, or
// through With, is written as its String() form, in JSON and in text; the
// caller's argument slice is not changed. Not guaranteed: durations nested
// inside another value (a struct, a slice) are written as encoding/json
// writes them.
package logfmt

import (
	"io"
	"log"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Durations returns a logger that writes to l, with every time.Duration
// argument replaced by its String() form. Loggers derived from it (With,
// Named, ResetNamed) do the same.
func Durations(l hclog.Logger) hclog.Logger {
	if d, ok := l.(durations); ok {
		return d
	}
	return durations{l}
}

// durations embeds nothing on purpose: every method of hclog.Logger is
// written out, so that a method added to the interface by a future hclog
// fails to compile here instead of bypassing the conversion.
type durations struct {
	l hclog.Logger
}

var _ hclog.Logger = durations{}

// convert returns args with each time.Duration replaced by its String()
// form. It copies args before changing anything: the caller's slice (a
// log.Info("x", args...) call passes its own) is never modified.
func convert(args []any) []any {
	var out []any
	for i, a := range args {
		d, ok := a.(time.Duration)
		if !ok {
			continue
		}
		if out == nil {
			out = make([]any, len(args))
			copy(out, args)
		}
		out[i] = d.String()
	}
	if out == nil {
		return args
	}
	return out
}

func (d durations) Log(level hclog.Level, msg string, args ...any) {
	d.l.Log(level, msg, convert(args)...)
}

func (d durations) Trace(msg string, args ...any) { d.l.Trace(msg, convert(args)...) }
func (d durations) Debug(msg string, args ...any) { d.l.Debug(msg, convert(args)...) }
func (d durations) Info(msg string, args ...any)  { d.l.Info(msg, convert(args)...) }
func (d durations) Warn(msg string, args ...any)  { d.l.Warn(msg, convert(args)...) }
func (d durations) Error(msg string, args ...any) { d.l.Error(msg, convert(args)...) }

func (d durations) IsTrace() bool { return d.l.IsTrace() }
func (d durations) IsDebug() bool { return d.l.IsDebug() }
func (d durations) IsInfo() bool  { return d.l.IsInfo() }
func (d durations) IsWarn() bool  { return d.l.IsWarn() }
func (d durations) IsError() bool { return d.l.IsError() }

// ImpliedArgs returns the wrapped logger's implied arguments, which With
// has already converted.
func (d durations) ImpliedArgs() []any { return d.l.ImpliedArgs() }

func (d durations) With(args ...any) hclog.Logger {
	return durations{d.l.With(convert(args)...)}
}

func (d durations) Name() string { return d.l.Name() }

func (d durations) Named(name string) hclog.Logger { return durations{d.l.Named(name)} }

func (d durations) ResetNamed(name string) hclog.Logger {
	return durations{d.l.ResetNamed(name)}
}

func (d durations) SetLevel(level hclog.Level) { d.l.SetLevel(level) }
func (d durations) GetLevel() hclog.Level      { return d.l.GetLevel() }

// StandardLogger and StandardWriter pass lines written through the standard
// library's log package to the wrapped logger; they carry a message only,
// never a duration argument.
func (d durations) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return d.l.StandardLogger(opts)
}

func (d durations) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	return d.l.StandardWriter(opts)
}
