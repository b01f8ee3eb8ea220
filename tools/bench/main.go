// Command bench measures leadercron against the naive approach (api.Lock
// firing robfig/cron, package naive) on one machine in one run, and prints
// one Markdown table: slot delay, graceful handover, crash failover,
// footprint, Consul load and scale.
//
//	go run ./tools/bench [-quick] [-runs N]
//
// It is a tool under tools/, not part of the leadercron binary.
//
// It builds both binaries with release flags, starts a real Consul dev
// agent on loopback ($CONSUL_BIN, else scripts/consul.sh), and runs each
// sidecar with its own recording app and its own counting HTTP proxy in
// front of Consul. Lock holders are seen through a blocking-query watcher
// on the lock key. Figures are medians over the runs; ratios are
// leadercron ÷ naive, computed within each run, then the median taken.
//
// Guarantees: a non-zero exit when the harness breaks (a binary does not
// build, Consul does not start, no trigger arrives, no handover happens, a
// standby fires). Not guaranteed: that figures are comparable across
// machines, or stable on a loaded one; slow figures never fail the run,
// they are marked against their targets in the table.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/leadercron/leadercron/internal/consultest"
)

// settings are one mode's sizes and durations.
type settings struct {
	runs          int
	ttl, delay    time.Duration
	delayJobs     int
	delayDur      time.Duration
	idleDur       time.Duration
	scaleJobs     int
	scaleStandbys int
	scalePeriod   int // seconds between two slots of one scale job
	scaleDur      time.Duration
}

func main() { os.Exit(run()) }

func run() int {
	quick := flag.Bool("quick", false, "a few slots and short windows (CI); well under a minute")
	runs := flag.Int("runs", 0, "repetitions; figures are medians (default 3, or 1 with -quick)")
	verbose := flag.Bool("v", false, "print the sidecars' output")
	flag.Parse()

	s := settings{runs: 3, ttl: 10 * time.Second, delay: 5 * time.Second,
		delayJobs: 10, delayDur: 35 * time.Second, idleDur: 60 * time.Second,
		scaleJobs: 1000, scaleStandbys: 20, scalePeriod: 10, scaleDur: 30 * time.Second}
	if *quick {
		s = settings{runs: 1, ttl: 2 * time.Second, delay: time.Second,
			delayJobs: 5, delayDur: 2 * time.Second, idleDur: 2 * time.Second,
			scaleJobs: 50, scaleStandbys: 2, scalePeriod: 1, scaleDur: time.Second}
	}
	if *runs > 0 {
		s.runs = *runs
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	started := time.Now()
	out := os.Stdout
	if err := bench(ctx, s, *quick, *verbose, out); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "bench: done in %s\n", time.Since(started).Round(time.Second))
	return 0
}

func bench(ctx context.Context, s settings, quick, verbose bool, out io.Writer) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "leadercron-bench-")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(dir)
	logf("building leadercron and the naive leader (CGO_ENABLED=0 -trimpath -ldflags '-s -w')")
	lc, nv, err := buildBinaries(ctx, root, dir)
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
		for _, impl := range []string{implLC, implNaive} {
			step("slot delay, "+impl, func() error { return e.slotDelay(ctx, impl, s.delayJobs, s.delayDur, res[impl]) })
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
		for _, impl := range []string{implLC, implNaive} {
			step("scale, "+impl, func() error {
				return e.scale(ctx, impl, s.scaleJobs, s.scaleStandbys, s.scalePeriod, s.scaleDur, res[impl])
			})
		}
		step("Consul calibration", func() error {
			return e.calibrate(ctx, map[string]int{"cal_burst_delay": s.delayJobs, "cal_burst_scale": s.scaleJobs / s.scalePeriod}, res[implLC])
		})
		results = append(results, res)
	}
	load1 := loadavg()
	mode := "full"
	if quick {
		mode = "quick"
	}
	fmt.Fprintf(out, "\nleadercron vs naive (api.Lock + robfig/cron), %s mode, %d run(s); medians over runs; ratio = leadercron ÷ naive within each run (median)\n", mode, s.runs)
	fmt.Fprintf(out, "session TTL %s, lock-delay %s; slot delay: %d jobs every second for %s; scale: %d jobs every %d s, 1 leader + %d standbys, %s; idle window %s\n",
		s.ttl, s.delay, s.delayJobs, s.delayDur, s.scaleJobs, s.scalePeriod, s.scaleStandbys, s.scaleDur, s.idleDur)
	fmt.Fprintf(out, "load average before %s, after %s\n\n", load0, load1)
	printTable(out, s, results)
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted (the table holds what was measured): %w", context.Cause(ctx))
	}
	return errors.Join(errs...)
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

func printTable(out io.Writer, s settings, results []map[string]figures) {
	bound := (2*s.ttl + s.delay).Seconds()
	rows := []row{
		{label: "slot delay p50 (ms)", key: "delay_p50", format: "%.1f", both: true},
		{label: "slot delay p99 (ms)", key: "delay_p99", format: "%.1f", both: true, target: "< 10", ok: func(v float64) bool { return v < 10 }},
		{label: "slot delay max (ms)", key: "delay_max", format: "%.1f", both: true},
		{label: "slot delay of the first job due each second, p50 (ms)", key: "delay_first_p50", format: "%.1f", both: true},
		{label: "slot delay of the first job due each second, p99 (ms)", key: "delay_first_p99", format: "%.1f", both: true},
		{label: "slots measured", key: "delay_slots", format: "%.0f", both: true},
		{label: "slots missing / duplicated", key: "delay_missing", format: "%.0f", both: true, target: "0", ok: func(v float64) bool { return v == 0 }},
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
		{label: fmt.Sprintf("Consul requests/min, leader firing %d slots/s", s.delayJobs), key: "busy_load_leader", format: "%.0f", both: true},
		{label: "Consul requests per slot fired, leader (renewals included)", key: "requests_per_slot", format: "%.2f", both: true},
		{label: fmt.Sprintf("Consul requests/min, standby while %d slots/s fire", s.delayJobs), key: "busy_load_standby", format: "%.1f", both: true},
		{label: "scale: slot delay p50 (ms)", key: "scale_p50", format: "%.1f", both: true},
		{label: "scale: slot delay p99 (ms)", key: "scale_p99", format: "%.1f", both: true, target: "< 10", ok: func(v float64) bool { return v < 10 }},
		{label: "scale: slot delay max (ms)", key: "scale_max", format: "%.1f", both: true},
		{label: "scale: slots measured", key: "scale_slots", format: "%.0f", both: true},
		{label: "scale: slots missing", key: "scale_missing", format: "%.0f", both: true, target: "0", ok: func(v float64) bool { return v == 0 }},
		{label: "scale: leader RSS (MB)", key: "scale_rss_leader", format: "%.1f", both: true},
		{label: "scale: leader CPU (% of a core)", key: "scale_cpu_leader", format: "%.1f", both: true},
		{label: "scale: standby RSS, median (MB)", key: "scale_rss_standby", format: "%.1f", both: true},
		{label: "scale: Consul requests/min, leader", key: "scale_load_leader", format: "%.0f", both: true},
		{label: "scale: Consul requests/min, per standby (median)", key: "scale_load_standby", format: "%.1f", both: true},
		{label: fmt.Sprintf("scale: Consul requests/min, all %d sidecars", s.scaleStandbys+1), key: "scale_load_total", format: "%.0f", both: true},
		{label: "Consul: one KV write Txn, straight to the agent (ms, median of 200)", key: "cal_direct", format: "%.2f"},
		{label: "Consul: one KV write Txn through a counting proxy (ms, median of 200)", key: "cal_proxy", format: "%.2f"},
		{label: fmt.Sprintf("Consul: %d concurrent KV write Txns, until the last completes (ms)", s.delayJobs), key: "cal_burst_delay", format: "%.1f"},
		{label: fmt.Sprintf("Consul: %d concurrent KV write Txns, until the last completes (ms)", s.scaleJobs/s.scalePeriod), key: "cal_burst_scale", format: "%.1f"},
	}
	fmt.Fprintln(out, "| figure | leadercron | naive | ratio | target | |")
	fmt.Fprintln(out, "|---|---:|---:|---:|---|---|")
	for _, r := range rows {
		lc := medianOf(results, implLC, r.key)
		nv, ratio := math.NaN(), math.NaN()
		if r.both {
			nv = medianOf(results, implNaive, r.key)
			var rs []float64
			for _, res := range results {
				a, okA := res[implLC][r.key]
				b, okB := res[implNaive][r.key]
				if okA && okB && b != 0 {
					rs = append(rs, a/b)
				}
			}
			ratio = median(rs)
		}
		verdict := ""
		if r.ok != nil && !math.IsNaN(lc) {
			verdict = "met"
			if !r.ok(lc) {
				verdict = "**missed**"
			}
		}
		if r.key == "delay_missing" {
			fmt.Fprintf(out, "| %s | %s / %s | %s / %s | | %s | %s |\n", r.label, num("%.0f", lc), num("%.0f", medianOf(results, implLC, "delay_dupes")),
				num("%.0f", nv), num("%.0f", medianOf(results, implNaive, "delay_dupes")), r.target, verdict)
			continue
		}
		fmt.Fprintf(out, "| %s | %s | %s | %s | %s | %s |\n", r.label, num(r.format, lc), num(r.format, nv), num("%.2f×", ratio), r.target, verdict)
	}
}

func medianOf(results []map[string]figures, impl, key string) float64 {
	var v []float64
	for _, res := range results {
		if x, ok := res[impl][key]; ok {
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
