// Command bench measures leadercron against the naive approach (api.Lock
// firing robfig/cron, package naive) on one machine in one run, and prints
// Markdown tables: the scale curve (slot delay, Consul requests and Raft
// writes per slot, leader CPU and RSS, early-claim lead time at three
// scale points), the other scenarios (graceful handover, crash failover,
// idle footprint and Consul load), and the targets, each met or missed.
//
//	go run ./tools/bench [-quick] [-runs N] [-leadercron-bin PATH]
//
// It is a tool under tools/, not part of the leadercron binary.
//
// It builds both binaries with release flags (or takes a prebuilt
// leadercron from -leadercron-bin, to measure an older build with this
// same harness), starts a real Consul dev agent on loopback ($CONSUL_BIN,
// else scripts/consul.sh), and runs each sidecar with its own recording
// app and its own counting HTTP proxy in front of Consul. Lock holders are
// seen through a blocking-query watcher on the lock key; Raft writes
// through the agent's Raft commit index. Figures are medians over the
// runs; ratios are leadercron ÷ naive, computed within each run, then the
// median taken.
//
// Guarantees: a non-zero exit when the harness breaks (a binary does not
// build or is not there, Consul does not start, no trigger arrives, no
// handover happens, a standby fires). Not guaranteed: that figures are
// comparable across machines, or stable on a loaded one; slow figures
// never fail the run, they are marked met or missed against their targets.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/leadercron/leadercron/internal/consultest"
)

// settings are one mode's sizes and durations.
type settings struct {
	runs       int
	ttl, delay time.Duration
	idleDur    time.Duration
	points     []point // the scale curve, smallest first; targets read the first and the last
}

// The modes' settings. Full: about 17 minutes with 3 runs on 2 cores.
// Quick (CI): under a minute; the points shrink but keep their shape.
var (
	fullSettings = settings{runs: 3, ttl: 10 * time.Second, delay: 5 * time.Second, idleDur: 60 * time.Second,
		points: []point{
			{jobs: 10, standbys: 1, period: 1, dur: 35 * time.Second},
			{jobs: 100, standbys: 1, period: 1, dur: 30 * time.Second},
			{jobs: 1000, standbys: 20, period: 10, dur: 30 * time.Second},
		}}
	quickSettings = settings{runs: 1, ttl: 2 * time.Second, delay: time.Second, idleDur: 2 * time.Second,
		points: []point{
			{jobs: 5, standbys: 1, period: 1, dur: 2 * time.Second},
			{jobs: 20, standbys: 1, period: 1, dur: 2 * time.Second},
			{jobs: 50, standbys: 2, period: 1, dur: time.Second},
		}}
)

func main() { os.Exit(run()) }

func run() int {
	quick := flag.Bool("quick", false, "a few slots and short windows (CI); well under a minute")
	runs := flag.Int("runs", 0, "repetitions; figures are medians (default 3, or 1 with -quick)")
	verbose := flag.Bool("v", false, "print the sidecars' output")
	lcBin := flag.String("leadercron-bin", "", "benchmark this prebuilt leadercron binary instead of building one from the tree (the naive leader is still built from the tree)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench: unexpected argument %q (flags: -quick, -runs N, -leadercron-bin PATH, -v)\n", flag.Arg(0))
		return 2
	}
	if *runs < 0 {
		fmt.Fprintf(os.Stderr, "bench: -runs %d: must be 1 or more\n", *runs)
		return 2
	}

	s := fullSettings
	if *quick {
		s = quickSettings
	}
	if *runs > 0 {
		s.runs = *runs
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	started := time.Now()
	out := os.Stdout
	if err := bench(ctx, s, *quick, *verbose, *lcBin, out); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "bench: done in %s\n", time.Since(started).Round(time.Second))
	return 0
}

func bench(ctx context.Context, s settings, quick, verbose bool, lcBin string, out io.Writer) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "leadercron-bench-")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(dir)
	lc, nv, origin, err := binaries(ctx, root, dir, lcBin)
	if err != nil {
		return err
	}
	sizes := map[string]float64{}
	for impl, p := range map[string]string{implLC: lc, implNaive: nv} {
		st, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("stat binary: %w", err)
		}
		sizes[impl] = float64(st.Size()) / (1 << 20)
	}
	bin, err := consulBinary(root)
	if err != nil {
		return err
	}
	// Every sidecar of the bench reaches the agent from 127.0.0.1, which a
	// real fleet does not: lift the per-client-IP connection cap (200 by
	// default) so that 21 sidecars' connections are not refused with 429.
	a, err := consultest.StartAgent(consultest.Options{Bin: bin, Args: []string{"-hcl", `limits { http_max_conns_per_client = 10000 }`}})
	if err != nil {
		return err
	}
	defer a.Stop()
	c, err := consultest.NewClient(a.Addr)
	if err != nil {
		return fmt.Errorf("consul client: %w", err)
	}
	e := &env{agent: a, consul: c, lcBin: lc, nvBin: nv, ttl: s.ttl, delay: s.delay, verbose: verbose,
		tr: &http.Transport{MaxIdleConns: 500, MaxIdleConnsPerHost: 500, IdleConnTimeout: 90 * time.Second}}
	defer e.tr.CloseIdleConnections()

	load0 := loadavg()
	var results []map[string]figures
	var errs []error
	for r := range s.runs {
		res := map[string]figures{implLC: {"binary_mb": sizes[implLC]}, implNaive: {"binary_mb": sizes[implNaive]}}
		errs = append(errs, e.runOnce(ctx, s, r, res)...)
		results = append(results, res)
	}
	load1 := loadavg()
	mode := "full"
	if quick {
		mode = "quick"
	}
	fmt.Fprintf(out, "\nleadercron vs naive (api.Lock + robfig/cron), %s mode, %d run(s); medians over runs; ratio = leadercron ÷ naive within each run (median)\n", mode, s.runs)
	fmt.Fprintf(out, "leadercron: %s\n", origin)
	fmt.Fprintf(out, "session TTL %s, lock-delay %s; idle window %s; load average before %s, after %s\n\n", s.ttl, s.delay, s.idleDur, load0, load1)
	printCurve(out, s, results)
	printTable(out, s, results)
	printTargets(out, s, results)
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted (the tables hold what was measured): %w", context.Cause(ctx))
	}
	return errors.Join(errs...)
}

// runOnce runs every scenario once, into res, and returns what broke.
func (e *env) runOnce(ctx context.Context, s settings, r int, res map[string]figures) []error {
	var errs []error
	step := func(name string, fn func() error) {
		if ctx.Err() != nil {
			return
		}
		logf("run %d/%d: %s", r+1, s.runs, name)
		if err := fn(); err != nil {
			errs = append(errs, fmt.Errorf("run %d: %s: %w", r+1, name, err))
			logf("  FAILED: %v", err)
		}
	}
	for i, pt := range s.points {
		for _, impl := range []string{implLC, implNaive} {
			step(fmt.Sprintf("scale point %s, %s", pt, impl), func() error { return e.curvePoint(ctx, impl, i, pt, res[impl]) })
		}
	}
	for _, impl := range []string{implLC, implNaive} {
		step("graceful handover, "+impl, func() error { return e.handover(ctx, impl, res[impl]) })
	}
	step("idle footprint and Consul load, both at once", func() error {
		return both(func(impl string) error { return e.idle(ctx, impl, s.idleDur, res[impl]) })
	})
	step("crash failover, both at once", func() error {
		return both(func(impl string) error { return e.failover(ctx, impl, res[impl]) })
	})
	step("Consul calibration", func() error { return e.calibrate(ctx, bursts(s), res[implLC]) })
	return errs
}

// bursts are the calibration's bursts: one per distinct number of slots
// due each second on the curve, keyed by figure.
func bursts(s settings) map[string]int {
	b := map[string]int{}
	for _, pt := range s.points {
		b[fmt.Sprintf("cal_burst_%d", pt.perSecond())] = pt.perSecond()
	}
	return b
}

// both runs fn for the two implementations at once.
func both(fn func(impl string) error) error {
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, impl := range []string{implLC, implNaive} {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = fn(impl) }()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// row is one line of the table.
type row struct {
	label  string
	key    string
	format string
	both   bool   // measured for naive too
	target string // "" = none
	ok     func(v float64) bool
}

// printTable prints the scenarios other than the curve, with the targets
// they had before the curve.
func printTable(out io.Writer, s settings, results []map[string]figures) {
	bound := (2*s.ttl + s.delay).Seconds()
	rows := []row{
		{label: "graceful: SIGTERM → lock released (ms)", key: "handover_term_release", format: "%.1f", both: true},
		{label: "graceful: release → standby holds lock (ms)", key: "handover_release_held", format: "%.1f", both: true, target: "< 1000", ok: func(v float64) bool { return v < 1000 }},
		{label: "graceful: SIGTERM → standby holds lock (ms)", key: "handover_term_held", format: "%.1f", both: true},
		{label: "graceful: slots of a 1 s job nobody fired", key: "handover_missed", format: "%.0f", both: true, target: "0", ok: func(v float64) bool { return v == 0 }},
		{label: fmt.Sprintf("crash: SIGKILL → standby holds lock (s; bound 2×TTL+lock-delay = %.0f s)", bound), key: "failover_held", format: "%.2f", both: true,
			target: fmt.Sprintf("≤ %.0f", bound+1), ok: func(v float64) bool { return v <= bound+1 }},
		{label: "crash: SIGKILL → first trigger of new leader (s)", key: "failover_trigger", format: "%.2f", both: true},
		{label: "crash: slots of a 1 s job nobody fired", key: "failover_missed", format: "%.0f", both: true},
		{label: "idle leader RSS (MB)", key: "idle_rss_leader", format: "%.1f", both: true, target: "< 20", ok: func(v float64) bool { return v < 20 }},
		{label: "idle standby RSS (MB)", key: "idle_rss_standby", format: "%.1f", both: true, target: "< 20", ok: func(v float64) bool { return v < 20 }},
		{label: "idle leader CPU (% of a core)", key: "idle_cpu_leader", format: "%.3f", both: true, target: "< 0.5", ok: func(v float64) bool { return v < 0.5 }},
		{label: "idle standby CPU (% of a core)", key: "idle_cpu_standby", format: "%.3f", both: true, target: "< 0.5", ok: func(v float64) bool { return v < 0.5 }},
		{label: "binary size (MB)", key: "binary_mb", format: "%.1f", both: true},
		{label: "Consul requests/min, idle leader", key: "idle_load_leader", format: "%.1f", both: true},
		{label: "Consul requests/min, idle standby", key: "idle_load_standby", format: "%.1f", both: true},
		{label: "standby requests per blocking-query wait", key: "standby_per_wait", format: "%.2f", both: true, target: "≤ 1", ok: func(v float64) bool { return v <= 1 }},
		{label: "Consul: one KV write Txn, straight to the agent (ms, median of 200)", key: "cal_direct", format: "%.2f"},
		{label: "Consul: one KV write Txn through a counting proxy (ms, median of 200)", key: "cal_proxy", format: "%.2f"},
	}
	for _, n := range slices.Sorted(maps.Values(bursts(s))) {
		rows = append(rows, row{label: fmt.Sprintf("Consul: %d concurrent KV write Txns, until the last completes (ms)", n), key: fmt.Sprintf("cal_burst_%d", n), format: "%.1f"})
	}
	fmt.Fprintln(out, "| figure | leadercron | naive | ratio | target | |")
	fmt.Fprintln(out, "|---|---:|---:|---:|---|---|")
	for _, r := range rows {
		lc := medianOf(results, implLC, r.key)
		nv, ratio := math.NaN(), math.NaN()
		if r.both {
			nv, ratio = medianOf(results, implNaive, r.key), ratioOf(results, r.key)
		}
		verdict := ""
		if r.ok != nil && !math.IsNaN(lc) {
			verdict = "met"
			if !r.ok(lc) {
				verdict = "**missed**"
			}
		}
		fmt.Fprintf(out, "| %s | %s | %s | %s | %s | %s |\n", r.label, num(r.format, lc), num(r.format, nv), num("%.2f×", ratio), r.target, verdict)
	}
	fmt.Fprintln(out)
}

// ratioOf is the median over the runs of leadercron ÷ naive, over the
// runs where both were measured and naive is not 0.
func ratioOf(results []map[string]figures, key string) float64 {
	var rs []float64
	for _, res := range results {
		a, okA := res[implLC][key]
		b, okB := res[implNaive][key]
		if okA && okB && b != 0 && !math.IsNaN(a) && !math.IsNaN(b) {
			rs = append(rs, a/b)
		}
	}
	return median(rs)
}

func medianOf(results []map[string]figures, impl, key string) float64 {
	var v []float64
	for _, res := range results {
		if x, ok := res[impl][key]; ok && !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	return median(v)
}

func num(format string, v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "—"
	}
	return fmt.Sprintf(format, v)
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run the bench from inside the leadercron module")
	}
	return filepath.Dir(mod), nil
}

func consulBinary(root string) (string, error) {
	if p := os.Getenv("CONSUL_BIN"); p != "" {
		return p, nil
	}
	cmd := exec.Command(filepath.Join(root, "scripts", "consul.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("scripts/consul.sh: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+format+"\n", args...)
}
