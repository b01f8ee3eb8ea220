package testkit

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// WatchLock records in h every change of the lock key's holder, as a
// "lock" event: Session is the holding session ("" when the key is free
// or absent) and Sidecar the holder's id, read from the key's value. It
// follows the key with blocking queries, asking the clients in turn and
// moving to the next one on an error, so that it survives a server's
// death. It runs until ctx ends; the channel it returns is closed then.
func WatchLock(ctx context.Context, h *History, key string, clients ...*api.Client) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		var index uint64
		last, i := "-", 0 // "-": nothing seen yet
		for ctx.Err() == nil {
			q := &api.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Second}
			rctx, rcancel := context.WithTimeout(ctx, 7*time.Second)
			pair, meta, err := clients[i].KV().Get(key, q.WithContext(rctx))
			rcancel()
			if err != nil {
				i = (i + 1) % len(clients)
				index = 0
				select {
				case <-ctx.Done():
				case <-time.After(50 * time.Millisecond):
				}
				continue
			}
			if meta.LastIndex < index {
				index = 0
			} else {
				index = meta.LastIndex
			}
			session, holder := "", ""
			if pair != nil && pair.Session != "" {
				session, holder = pair.Session, HolderID(pair.Value)
			}
			if session != last {
				h.Add(Event{Kind: "lock", Session: session, Sidecar: holder})
				last = session
			}
		}
	}()
	return done
}

// StartLockWatch is WatchLock for a test: it stops when the test ends.
func StartLockWatch(t testing.TB, h *History, key string, clients ...*api.Client) {
	t.Helper()
	if len(clients) == 0 {
		t.Fatal("StartLockWatch: no Consul client")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := WatchLock(ctx, h, key, clients...)
	t.Cleanup(func() { cancel(); <-done })
}

// HolderID reads the sidecar id from a lock key's value: leadercron's JSON
// {"id": ...}, or the naive leader's plain id.
func HolderID(v []byte) string {
	var x struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(v, &x) == nil && x.ID != "" {
		return x.ID
	}
	return string(v)
}

// Holder returns the session holding key, read consistently, or "" when
// it is free or cannot be read: for HolderAtDrain.
func Holder(c *api.Client, key string) func() string {
	return func() string {
		pair, _, err := c.KV().Get(key, &api.QueryOptions{RequireConsistent: true})
		if err != nil || pair == nil {
			return ""
		}
		return pair.Session
	}
}
