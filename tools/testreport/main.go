// Command testreport reads the output of go test -json on stdin and prints
// what go test prints without -json or -v: each package's result line, the
// output of tests that failed, and what test binaries print outside any
// test. At the end it adds what plain go test hides: how many tests were
// skipped, and why, by reason and package. scripts/test.sh pipes go test
// through it, so that a run on a machine without Consul does not read as a
// row of "ok" over packages whose every test skipped.
//
//	go test -json ./... | go run ./tools/testreport [-summary FILE]
//
// With -summary the skip summary goes to FILE instead, for a script to
// print at its very end.
//
// It is a tool under tools/, not part of the leadercron binary. It always
// exits 0 unless its input is not go test -json: the verdict is go test's
// exit status (scripts/test.sh runs with set -o pipefail).
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
)

// event is one line of go test -json (cmd/test2json).
type event struct {
	Action     string
	Package    string
	ImportPath string
	Test       string
	Output     string
}

// skip is one skipped test.
type skip struct {
	pkg, test, reason string
}

func main() {
	summaryFile := flag.String("summary", "", "write the skip summary to this file rather than stdout")
	flag.Parse()
	if err := report(os.Stdin, *summaryFile); err != nil {
		fmt.Fprintln(os.Stderr, "testreport:", err)
		os.Exit(2)
	}
}

func report(in io.Reader, summaryFile string) error {
	if summaryFile == "" {
		return run(in, os.Stdout, os.Stdout)
	}
	f, err := os.Create(summaryFile)
	if err != nil {
		return err
	}
	if err := run(in, os.Stdout, f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func run(in io.Reader, out, sum io.Writer) error {
	r := &reporter{out: out, sum: sum, held: map[string][]string{}, last: map[string]string{}}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
			// Not an event (go vet output, say): pass it on.
			fmt.Fprintf(out, "%s\n", line)
			continue
		}
		r.add(e)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	r.summary()
	return nil
}

type reporter struct {
	out   io.Writer
	sum   io.Writer           // where the skip summary goes
	held  map[string][]string // per package and top-level test: output kept until its verdict
	last  map[string]string   // per package and test: the last line it logged, the skip reason
	skips []skip
}

// fileLine is the "name_test.go:12: " a t.Log line starts with.
var fileLine = regexp.MustCompile(`^\s*[\w.-]+\.go:\d+: `)

func (r *reporter) add(e event) {
	switch e.Action {
	case "build-output":
		fmt.Fprint(r.out, e.Output)
		return
	case "start", "run", "pause", "cont", "bench", "build-fail":
		return
	}
	if e.Test == "" {
		if e.Action == "output" && e.Output != "PASS\n" {
			fmt.Fprint(r.out, e.Output)
		}
		return
	}
	top, _, _ := strings.Cut(e.Test, "/")
	key := e.Package + " " + top
	switch e.Action {
	case "output":
		if t := strings.TrimSpace(e.Output); strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- PASS") || strings.HasPrefix(t, "--- SKIP") {
			return
		}
		r.held[key] = append(r.held[key], e.Output)
		if t := strings.TrimSpace(e.Output); t != "" && !strings.HasPrefix(t, "--- ") {
			r.last[e.Package+" "+e.Test] = fileLine.ReplaceAllString(t, "")
		}
	case "skip":
		r.skips = append(r.skips, skip{pkg: e.Package, test: e.Test, reason: r.last[e.Package+" "+e.Test]})
		if e.Test == top {
			delete(r.held, key)
		}
	case "pass":
		if e.Test == top {
			delete(r.held, key)
		}
	case "fail":
		if e.Test == top {
			for _, l := range r.held[key] {
				fmt.Fprint(r.out, l)
			}
			delete(r.held, key)
		}
	}
}

// summary prints the output of tests that never reported a result (the
// test binary died: a panic, a timeout), then the skipped tests, grouped
// by reason, then by package.
func (r *reporter) summary() {
	keys := make([]string, 0, len(r.held))
	for k := range r.held {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(r.out, "--- NO RESULT: %s\n", k)
		for _, l := range r.held[k] {
			fmt.Fprint(r.out, l)
		}
	}
	if len(r.skips) == 0 {
		fmt.Fprintln(r.sum, "no test skipped")
		return
	}
	byReason := map[string][]skip{}
	for _, s := range r.skips {
		reason := s.reason
		if reason == "" {
			reason = "(no reason given)"
		}
		byReason[reason] = append(byReason[reason], s)
	}
	reasons := make([]string, 0, len(byReason))
	for k := range byReason {
		reasons = append(reasons, k)
	}
	slices.SortFunc(reasons, func(a, b string) int { return len(byReason[b]) - len(byReason[a]) })
	tests := "tests"
	if len(r.skips) == 1 {
		tests = "test"
	}
	fmt.Fprintf(r.sum, "%d %s skipped, by reason:\n", len(r.skips), tests)
	for _, reason := range reasons {
		ss := byReason[reason]
		perPkg := map[string]int{}
		var pkgs []string
		for _, s := range ss {
			if perPkg[s.pkg] == 0 {
				pkgs = append(pkgs, s.pkg)
			}
			perPkg[s.pkg]++
		}
		slices.Sort(pkgs)
		var where []string
		for _, p := range pkgs {
			where = append(where, fmt.Sprintf("%s (%d)", strings.TrimPrefix(p, "github.com/leadercron/leadercron/"), perPkg[p]))
		}
		fmt.Fprintf(r.sum, "  %4d  %s: %s\n", len(ss), reason, strings.Join(where, ", "))
	}
}
