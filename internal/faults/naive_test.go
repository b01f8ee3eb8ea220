package faults

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/consultest"
	"github.com/leadercron/leadercron/internal/testkit"
	"github.com/leadercron/leadercron/tools/naive"
)

// TestNaiveBaselinePartition runs the black-hole partition against the
// naive leader (api.Lock's lost-lock channel, robfig/cron, no claims, no
// lease) with the same TTL, lock-delay, jobs, apps and checker, so the
// summary shows the difference in one run. Its violations are recorded,
// not failed: they are what leadercron exists to prevent.
func TestNaiveBaselinePartition(t *testing.T) {
	t.Parallel()
	r := rng(t.Name())
	agent := consultest.Start(t)
	h := testkit.NewHistory()
	watchLock(t, []string{agent.Addr}, lockKey, h)
	var logs testkit.Buffer
	var proxies []*consultest.Proxy
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 3)
	for i := range 3 {
		id := string(rune('a' + i))
		app := testkit.StartApp(t, "app-"+id, h)
		p := consultest.NewProxy(t, agent.Addr)
		proxies = append(proxies, p)
		o := naive.Options{
			Client:     consultest.Client(t, p.Addr),
			Key:        lockKey,
			ID:         id,
			SessionTTL: ttl,
			LockDelay:  lockDelay,
			Jobs:       jobs,
			AppURL:     app.URL,
			HTTPClient: &http.Client{},
			Log:        hclog.New(&hclog.LoggerOptions{Name: "naive-" + id, Level: hclog.Debug, Output: &logs}),
		}
		go func() {
			defer func() { done <- struct{}{} }()
			if err := naive.Run(ctx, o); err != nil {
				t.Errorf("naive %s: %v", id, err)
			}
		}()
	}
	t.Cleanup(func() {
		for _, p := range proxies {
			p.Heal()
		}
		cancel()
		for range 3 {
			<-done
		}
	})
	defer func() {
		if t.Failed() {
			t.Logf("naive logs:\n%s", logs.String())
		}
	}()

	f := &fleet{t: t, h: h, started: time.Now()}
	l, from := f.warm()
	sleep(between(r, 0, time.Second))
	id := string(rune('a' + l))
	d := 12*time.Second + between(r, 0, 3*time.Second)
	at := h.Fault(fmt.Sprintf("black-hole %s from Consul for %s", id, d.Round(time.Millisecond)))
	proxies[l].Blackhole()
	sleep(d)
	h.Fault("heal " + id)
	proxies[l].Heal()
	to := f.settle(time.Now(), 10, 30*time.Second)
	c := f.spec(from, to, at, window{from: at, to: at.Add(crashBound), why: "leader cut off"})
	c.naive = true
	v := finish(t, h, c, "")
	t.Logf("naive baseline: %d violations (recorded, not failed); two leaders for %s", len(v.Violations), v.TwoLeaders.Round(10*time.Millisecond))
}
