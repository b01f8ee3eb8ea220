package e2e

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/testkit"
)

// The shared harness (internal/testkit) under the short names the tests
// use.
type (
	event   = testkit.Event
	history = testkit.History
	sidecar = testkit.Sidecar
)

var (
	newHistory = testkit.NewHistory
	filter     = testkit.Filter
	dump       = testkit.Dump
)

// binary is the race-enabled leadercron binary TestMain builds; with
// -short it is not built, and every test that runs it skips.
var binary string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "leadercron-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary, err = testkit.BuildSidecar(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// checkNoDuplicateSlots fails the test if any (job, slot) was triggered
// twice, anywhere in the fleet. Retries (attempt 2 and up) resend a slot
// by design and are not counted.
func checkNoDuplicateSlots(t *testing.T, evs []event) {
	t.Helper()
	seen := map[string]event{}
	for _, e := range filter(evs, "trigger") {
		if e.Attempt > 1 {
			continue
		}
		k := e.SlotKey()
		if first, dup := seen[k]; dup {
			t.Errorf("slot %s triggered twice: by %s (token %d) and by %s (token %d)", k, first.Sidecar, first.Token, e.Sidecar, e.Token)
		}
		seen[k] = e
	}
}

// logSlotDelays logs how late triggers reached the apps after their slot
// (a figure for the README; benchmarks measure it properly).
func logSlotDelays(t *testing.T, evs []event) {
	t.Helper()
	var ds []time.Duration
	for _, e := range filter(evs, "trigger") {
		ds = append(ds, e.At.Sub(e.Slot))
	}
	if len(ds) == 0 {
		return
	}
	slices.Sort(ds)
	t.Logf("slot to app receiving the trigger over %d triggers: p50 %s, max %s", len(ds), ds[len(ds)/2], ds[len(ds)-1])
}

// startApp starts a recording app whose /drain reports a run for the
// first busyPolls polls (forever if -1) and, given a client, records who
// held the lock key when the app saw it.
func startApp(t *testing.T, name string, h *history, consul *api.Client, lockKey string, busyPolls int) *testkit.App {
	t.Helper()
	opts := []testkit.AppOption{testkit.BusyPolls(busyPolls)}
	if consul != nil {
		opts = append(opts, testkit.HolderAtDrain(testkit.Holder(consul, lockKey)))
	}
	return testkit.StartApp(t, name, h, opts...)
}

// startSidecar runs the built binary as sidecar id, logging text, for the
// service e2e unless env says otherwise.
func startSidecar(t *testing.T, id string, env map[string]string) *sidecar {
	t.Helper()
	return testkit.StartSidecar(t, binary, id, env, testkit.SidecarOptions{Service: "e2e", LogFormat: "text"})
}
