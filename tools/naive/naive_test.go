package naive

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/consultest"
)

type trigger struct {
	id, job, slot, key string
	token              uint64
}

func TestLeadsTriggersAndHandsOver(t *testing.T) {
	agent := consultest.Start(t)
	got := make(chan trigger, 100)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, _ := strconv.ParseUint(r.Header.Get("Leadercron-Fencing-Token"), 10, 64)
		got <- trigger{id: r.Header.Get("Leadercron-Id"), job: r.URL.Path,
			slot: r.Header.Get("Leadercron-Slot"), key: r.Header.Get("Idempotency-Key"), token: token}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer app.Close()

	start := func(id string) (context.CancelFunc, <-chan error) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- Run(ctx, Options{
				Client: consultest.Client(t, agent.Addr), Key: "naive/test/leader", ID: id,
				SessionTTL: 10 * time.Second, LockDelay: time.Second,
				Jobs: map[string]string{"tick": "* * * * * *"}, AppURL: app.URL,
				Log: hclog.New(&hclog.LoggerOptions{Name: id, Output: t.Output()}),
			})
		}()
		return cancel, done
	}
	awaitFrom := func(id string) trigger {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case tr := <-got:
				if tr.id == id {
					return tr
				}
			case <-deadline:
				t.Fatalf("no trigger from %s within 10s", id)
			}
		}
	}

	stopA, doneA := start("a")
	first := awaitFrom("a")
	slot, err := time.Parse(time.RFC3339, first.slot)
	if err != nil || first.token == 0 || first.key != "tick@"+first.slot || first.job != "/jobs/tick" {
		t.Fatalf("bad trigger %+v (slot parse error %v)", first, err)
	}
	if d := time.Since(slot); d < 0 || d > 5*time.Second {
		t.Fatalf("slot %s is %s away from now", first.slot, d)
	}

	stopB, doneB := start("b")
	defer func() { stopB(); <-doneB }()
	stopA()
	if err := <-doneA; err != nil {
		t.Fatalf("Run a: %v", err)
	}
	second := awaitFrom("b")
	if second.token <= first.token {
		t.Fatalf("fencing token did not grow: a %d, b %d", first.token, second.token)
	}
}

func TestRejectsBadOptions(t *testing.T) {
	if err := Run(context.Background(), Options{}); err == nil {
		t.Fatal("Run with empty options returned nil")
	}
}
