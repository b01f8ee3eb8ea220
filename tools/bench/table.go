package main

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// curveRow is one figure of the scale curve, read at every point.
type curveRow struct {
	label, key, format string
}

var curveRows = []curveRow{
	{"slot delay p50 (ms)", "p50", "%.1f"},
	{"slot delay p99 (ms)", "p99", "%.1f"},
	{"slot delay max (ms)", "max", "%.1f"},
	{"slot delay of the first job due each second, p50 (ms)", "first_p50", "%.1f"},
	{"slot delay of the first job due each second, p99 (ms)", "first_p99", "%.1f"},
	{"slots measured", "slots", "%.0f"},
	{"slots missing / duplicated", "missing", ""}, // printed with "dupes"
	{"Consul requests per slot fired, leader (renewals included)", "req_per_slot", "%.2f"},
	{"Raft writes per slot fired (whole agent)", "raft_per_slot", "%.2f"},
	{"early-claim lead time (ms)", "lead_ms", "%.1f"},
	{"leader CPU (% of a core)", "cpu", "%.1f"},
	{"leader RSS at the end (MB)", "rss", "%.1f"},
	{"standby RSS at the end, median (MB)", "rss_standby", "%.1f"},
	{"Consul requests/min, leader", "load_leader", "%.0f"},
	{"Consul requests/min, per standby (median)", "load_standby", "%.1f"},
	{"Consul requests/min, all sidecars", "load_total", "%.0f"},
}

// printCurve prints the scale curve: one row per figure, and for each
// scale point leadercron, naive and their ratio side by side.
func printCurve(out io.Writer, s settings, results []map[string]figures) {
	fmt.Fprintln(out, "Scale curve; at each point the leadercron fleet runs alone on the agent, then the naive one:")
	fmt.Fprintln(out)
	for _, pt := range s.points {
		fmt.Fprintf(out, "- %s\n", pt)
	}
	fmt.Fprintln(out)
	head, align := []string{"figure"}, []string{"---"}
	for _, pt := range s.points {
		head = append(head, pt.short()+": leadercron", "naive", "ratio")
		align = append(align, "---:", "---:", "---:")
	}
	fmt.Fprintf(out, "| %s |\n|%s|\n", strings.Join(head, " | "), strings.Join(align, "|"))
	for _, r := range curveRows {
		cells := []string{r.label}
		for i := range s.points {
			k := ck(i, r.key)
			lc, nv := medianOf(results, implLC, k), medianOf(results, implNaive, k)
			if r.key == "missing" {
				d := ck(i, "dupes")
				cells = append(cells, num("%.0f", lc)+" / "+num("%.0f", medianOf(results, implLC, d)),
					num("%.0f", nv)+" / "+num("%.0f", medianOf(results, implNaive, d)), "")
				continue
			}
			cells = append(cells, num(r.format, lc), num(r.format, nv), num("%.2f×", ratioOf(results, k)))
		}
		fmt.Fprintf(out, "| %s |\n", strings.Join(cells, " | "))
	}
	fmt.Fprintln(out)
}

// target is one line of the targets block.
type target struct {
	what, want, measured string
	met                  bool
	measuredOK           bool // false when a figure it needs is missing
}

// printTargets prints every target with the value measured and whether it
// is met. A missed target never fails the run.
func printTargets(out io.Writer, s settings, results []map[string]figures) {
	fmt.Fprintln(out, "Targets (medians over the runs; missing or duplicated slots: the worst run). Printed, never asserted:")
	fmt.Fprintln(out)
	fmt.Fprintln(out, "| figure | target | measured | |")
	fmt.Fprintln(out, "|---|---|---|---|")
	for _, t := range targets(s, results) {
		verdict := "not measured"
		if t.measuredOK {
			verdict = "met"
			if !t.met {
				verdict = "**missed**"
			}
		}
		fmt.Fprintf(out, "| %s | %s | %s | %s |\n", t.what, t.want, t.measured, verdict)
	}
}

func targets(s settings, results []map[string]figures) []target {
	lc := func(i int, key string) float64 { return medianOf(results, implLC, ck(i, key)) }
	nv := func(i int, key string) float64 { return medianOf(results, implNaive, ck(i, key)) }
	ratio := func(i int, key string) float64 { return ratioOf(results, ck(i, key)) }
	first, last := s.points[0], s.points[len(s.points)-1]
	l := len(s.points) - 1
	ts := []target{
		{what: fmt.Sprintf("slot delay p99, %s due each second, leadercron ÷ naive", first.short()), want: "≤ 1.0×",
			measured: fmt.Sprintf("%s (%s ms ÷ %s ms)", num("%.2f×", ratio(0, "p99")), num("%.1f", lc(0, "p99")), num("%.1f", nv(0, "p99"))),
			met:      ratio(0, "p99") <= 1.0, measuredOK: known(ratio(0, "p99"))},
		{what: fmt.Sprintf("slot delay p99, %s + %d standbys", last.short(), last.standbys), want: "< 10 ms, and ≤ 1.2× naive",
			measured: fmt.Sprintf("%s ms, %s naive (%s ms)", num("%.1f", lc(l, "p99")), num("%.2f×", ratio(l, "p99")), num("%.1f", nv(l, "p99"))),
			met:      lc(l, "p99") < 10 && ratio(l, "p99") <= 1.2, measuredOK: known(lc(l, "p99"), ratio(l, "p99"))},
		{what: fmt.Sprintf("Consul Raft writes per slot fired, %s", last.short()), want: "≤ 0.1",
			measured: num("%.2f", lc(l, "raft_per_slot")), met: lc(l, "raft_per_slot") <= 0.1, measuredOK: known(lc(l, "raft_per_slot"))},
		{what: fmt.Sprintf("Consul requests per slot fired, %s each second (renewals included)", first.short()), want: "≤ 0.5",
			measured: num("%.2f", lc(0, "req_per_slot")), met: lc(0, "req_per_slot") <= 0.5, measuredOK: known(lc(0, "req_per_slot"))},
	}
	for i := 1; i < len(s.points); i++ {
		pt := s.points[i]
		ts = append(ts, target{what: fmt.Sprintf("leader CPU at %d slots a second (%s)", pt.perSecond(), pt.short()), want: "≤ 3 % of a core",
			measured: num("%.1f %%", lc(i, "cpu")), met: lc(i, "cpu") <= 3, measuredOK: known(lc(i, "cpu"))})
	}
	ts = append(ts, target{what: fmt.Sprintf("leader RSS with %s", last.short()), want: "≤ 25 MB",
		measured: num("%.1f MB", lc(l, "rss")), met: lc(l, "rss") <= 25, measuredOK: known(lc(l, "rss"))})
	return append(ts, slotsTarget(s, results))
}

// slotsTarget is the target of no missing or duplicated slot, over every
// scale point and the graceful handover of the worst run. The crash
// failover is left out: the slots due while no sidecar may hold the lock
// are lost by design (at most once).
func slotsTarget(s settings, results []map[string]figures) target {
	t := target{what: "missing or duplicated slots, every scenario but the crash failover (whose slots are lost by design)", want: "0"}
	worst := -1.0
	for _, res := range results {
		f := res[implLC]
		var parts []string
		total := 0.0
		for i := range s.points {
			n := math.Abs(f.get(ck(i, "missing"))) + f.get(ck(i, "dupes"))
			total += n
			parts = append(parts, num("%.0f", n))
		}
		h := math.Abs(f.get("handover_missed"))
		total += h
		if !known(total) || total <= worst {
			continue
		}
		worst = total
		t.measured = fmt.Sprintf("%s (scale points %s; graceful handover %s)", num("%.0f", total), strings.Join(parts, " / "), num("%.0f", h))
		t.measuredOK, t.met = true, total == 0
	}
	if !t.measuredOK {
		t.measured = "—"
	}
	return t
}

// get is the figure, or NaN when it was not measured.
func (f figures) get(key string) float64 {
	if v, ok := f[key]; ok {
		return v
	}
	return math.NaN()
}

// known says whether every value was measured.
func known(vs ...float64) bool {
	for _, v := range vs {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return false
		}
	}
	return true
}
