package ledger

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/kvlayout"
)

// MaxHistory is how many slot fates P/history/<job> keeps.
const MaxHistory = 50

// RequestsWait is how long one Requests call blocks at most when nothing
// changes.
const RequestsWait = 30 * time.Second

// maxCASAttempts bounds Append's and Resume's retry loops when the context
// has no deadline.
const maxCASAttempts = 64

// ErrConflict is returned when a check-and-set lost to concurrent writers
// maxCASAttempts times in a row.
var ErrConflict = errors.New("too many concurrent writers")

// same reports whether e and o record the same fate.
func same(e, o kvlayout.Entry) bool {
	return e.Slot.Equal(o.Slot) && e.Outcome == o.Outcome && e.At.Equal(o.At) && e.ID == o.ID && e.RunNow == o.RunNow
}

// Store reads and writes the ledger of one fleet.
type Store struct {
	client *api.Client
	kv     *api.KV
	keys   kvlayout.Layout
	now    func() time.Time

	histories historyCache // see AppendAll
}

// New returns a Store for the fleet whose KV prefix is prefix (the
// configuration's KVPrefix, without a trailing slash).
func New(client *api.Client, prefix string) *Store {
	return &Store{client: client, kv: client.KV(), keys: kvlayout.New(prefix), now: time.Now}
}

func qopts(ctx context.Context) *api.QueryOptions { return (&api.QueryOptions{}).WithContext(ctx) }
func wopts(ctx context.Context) *api.WriteOptions { return (&api.WriteOptions{}).WithContext(ctx) }

// Append records e in job's history: newest slot first, at most MaxHistory
// entries. It retries on a CAS conflict until it wins, ctx ends, or
// maxCASAttempts conflicts in a row. See AppendAll, which it calls.
func (s *Store) Append(ctx context.Context, job string, e kvlayout.Entry) error {
	return s.AppendAll(ctx, map[string][]kvlayout.Entry{job: {e}})
}

// insert puts e into list (sorted by slot, newest first; among equal slots
// the newest record first) and cuts it to MaxHistory.
func insert(list []kvlayout.Entry, e kvlayout.Entry) []kvlayout.Entry {
	i, _ := slices.BinarySearchFunc(list, e, func(a, b kvlayout.Entry) int {
		if c := b.Slot.Compare(a.Slot); c != 0 {
			return c
		}
		return 1 // e goes before every entry of its slot
	})
	list = slices.Insert(list, i, e)
	if len(list) > MaxHistory {
		list = list[:MaxHistory]
	}
	return list
}

// casBackoff paces Append's retries after a lost check-and-set: from 1 ms,
// doubling up to 64 ms, with ±50 % jitter so that writers that collided do
// not collide again. The writers are one leader's history queue and an
// operator's command, so a conflict clears in a round or two.
func casBackoff() *backoff.ExponentialBackOff {
	return &backoff.ExponentialBackOff{InitialInterval: time.Millisecond, RandomizationFactor: 0.5,
		Multiplier: 2, MaxInterval: 64 * time.Millisecond}
}

// sleep waits d, or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// History returns job's recorded slot fates, newest slot first.
func (s *Store) History(ctx context.Context, job string) ([]kvlayout.Entry, error) {
	list, _, err := s.history(ctx, s.keys.History(job))
	if err != nil {
		return nil, fmt.Errorf("read history of %s: %w", job, err)
	}
	return list, nil
}

func (s *Store) history(ctx context.Context, key string) ([]kvlayout.Entry, uint64, error) {
	pair, _, err := s.kv.Get(key, qopts(ctx))
	if err != nil {
		return nil, 0, fmt.Errorf("get %s: %w", key, err)
	}
	if pair == nil {
		return nil, 0, nil
	}
	var list []kvlayout.Entry
	if err := json.Unmarshal(pair.Value, &list); err != nil {
		return nil, 0, fmt.Errorf("decode %s: %w", key, err)
	}
	return list, pair.ModifyIndex, nil
}

// Pause marks job paused by by, with an optional reason. If the job is
// already paused, the existing pause is kept and returned with
// created=false.
func (s *Store) Pause(ctx context.Context, job, by, reason string) (p kvlayout.Paused, created bool, err error) {
	key := s.keys.Paused(job)
	p = kvlayout.Paused{By: by, At: s.now().UTC().Truncate(time.Second), Reason: reason}
	value, err := json.Marshal(p)
	if err != nil {
		return kvlayout.Paused{}, false, fmt.Errorf("pause %s: encode: %w", job, err)
	}
	for range maxCASAttempts {
		ok, _, err := s.kv.CAS(&api.KVPair{Key: key, Value: value, ModifyIndex: 0}, wopts(ctx))
		if err != nil {
			return kvlayout.Paused{}, false, fmt.Errorf("pause %s: cas %s: %w", job, key, err)
		}
		if ok {
			return p, true, nil
		}
		old, _, err := s.paused(ctx, key)
		if err != nil {
			return kvlayout.Paused{}, false, fmt.Errorf("pause %s: %w", job, err)
		}
		if old != nil {
			return *old, false, nil
		}
		// Resumed between the CAS and the read: try again.
	}
	return kvlayout.Paused{}, false, fmt.Errorf("pause %s: %w", job, ErrConflict)
}

// Resume removes job's pause and returns it; wasPaused is false when the
// job was not paused.
func (s *Store) Resume(ctx context.Context, job string) (p kvlayout.Paused, wasPaused bool, err error) {
	key := s.keys.Paused(job)
	for range maxCASAttempts {
		old, index, err := s.paused(ctx, key)
		if err != nil {
			return kvlayout.Paused{}, false, fmt.Errorf("resume %s: %w", job, err)
		}
		if old == nil {
			return kvlayout.Paused{}, false, nil
		}
		ok, _, err := s.kv.DeleteCAS(&api.KVPair{Key: key, ModifyIndex: index}, wopts(ctx))
		if err != nil {
			return kvlayout.Paused{}, false, fmt.Errorf("resume %s: delete-cas %s: %w", job, key, err)
		}
		if ok {
			return *old, true, nil
		}
	}
	return kvlayout.Paused{}, false, fmt.Errorf("resume %s: %w", job, ErrConflict)
}

// IsPaused returns job's pause, or nil when it is not paused.
func (s *Store) IsPaused(ctx context.Context, job string) (*kvlayout.Paused, error) {
	p, _, err := s.paused(ctx, s.keys.Paused(job))
	if err != nil {
		return nil, fmt.Errorf("read pause of %s: %w", job, err)
	}
	return p, nil
}

func (s *Store) paused(ctx context.Context, key string) (*kvlayout.Paused, uint64, error) {
	pair, _, err := s.kv.Get(key, qopts(ctx))
	if err != nil {
		return nil, 0, fmt.Errorf("get %s: %w", key, err)
	}
	if pair == nil {
		return nil, 0, nil
	}
	p, err := kvlayout.DecodePaused(pair.Value)
	if err != nil {
		return nil, 0, fmt.Errorf("decode %s: %w", key, err)
	}
	return &p, pair.ModifyIndex, nil
}

// RequestRun asks the leader to run job once, now. If a request is already
// pending for job, it is returned with created=false and nothing is
// written.
func (s *Store) RequestRun(ctx context.Context, job, by string) (r kvlayout.Request, created bool, err error) {
	key := s.keys.Request(job)
	r = kvlayout.Request{ID: rand.Text(), By: by, At: s.now().UTC().Truncate(time.Millisecond), Job: job}
	value, err := json.Marshal(r)
	if err != nil {
		return kvlayout.Request{}, false, fmt.Errorf("request run of %s: encode: %w", job, err)
	}
	for range maxCASAttempts {
		ok, _, err := s.kv.CAS(&api.KVPair{Key: key, Value: value, ModifyIndex: 0}, wopts(ctx))
		if err != nil {
			return kvlayout.Request{}, false, fmt.Errorf("request run of %s: cas %s: %w", job, key, err)
		}
		if ok {
			// Read back for the ModifyIndex a consumer needs.
			pending, err := s.request(ctx, job)
			if err != nil {
				return r, true, fmt.Errorf("request run of %s: %w", job, err)
			}
			if pending != nil && pending.ID == r.ID {
				r = *pending
			}
			return r, true, nil
		}
		pending, err := s.request(ctx, job)
		if err != nil {
			return kvlayout.Request{}, false, fmt.Errorf("request run of %s: %w", job, err)
		}
		if pending != nil {
			return *pending, false, nil
		}
		// Consumed between the CAS and the read: try again.
	}
	return kvlayout.Request{}, false, fmt.Errorf("request run of %s: %w", job, ErrConflict)
}

func (s *Store) request(ctx context.Context, job string) (*kvlayout.Request, error) {
	key := s.keys.Request(job)
	pair, _, err := s.kv.Get(key, qopts(ctx))
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	if pair == nil {
		return nil, nil
	}
	r, err := s.decodeRequest(pair)
	if err != nil {
		return nil, err
	}
	return &r, nil
}

func (s *Store) decodeRequest(pair *api.KVPair) (kvlayout.Request, error) {
	var r kvlayout.Request
	if err := json.Unmarshal(pair.Value, &r); err != nil {
		return kvlayout.Request{}, fmt.Errorf("decode %s: %w", pair.Key, err)
	}
	_, r.Job = s.keys.Parse(pair.Key)
	r.ModifyIndex = pair.ModifyIndex
	return r, nil
}

// MarkRequests writes the empty marker P/requests/ unless it is there
// (check-and-set at index 0), so that a blocking Requests wakes only when
// the requests change (see kvlayout.Layout.Requests). It is idempotent: a
// call whose outcome is unknown may simply be repeated.
func (s *Store) MarkRequests(ctx context.Context) error {
	if _, _, err := s.kv.CAS(&api.KVPair{Key: s.keys.Requests(), ModifyIndex: 0}, wopts(ctx)); err != nil {
		return fmt.Errorf("mark %s: %w", s.keys.Requests(), err)
	}
	return nil
}

// Requests lists the pending run-now requests, sorted by job. With a
// waitIndex above zero it is a blocking query: it returns when P/requests/
// changes after waitIndex, or after about RequestsWait (Consul adds up to
// RequestsWait/16 of jitter, so ctx should allow more). Pass the returned
// lastIndex to the next call; it is reset to 0 when Consul's index went
// backwards (a restored snapshot), so the next call reads at once. A
// request whose value does not decode is skipped and reported in the error
// together with the valid ones.
func (s *Store) Requests(ctx context.Context, waitIndex uint64) ([]kvlayout.Request, uint64, error) {
	q := &api.QueryOptions{WaitIndex: waitIndex, WaitTime: RequestsWait}
	pairs, meta, err := s.kv.List(s.keys.Requests(), q.WithContext(ctx))
	if err != nil {
		return nil, waitIndex, fmt.Errorf("list %s: %w", s.keys.Requests(), err)
	}
	last := max(meta.LastIndex, 1)
	if last < waitIndex {
		last = 0
	}
	var (
		reqs []kvlayout.Request
		errs []error
	)
	for _, p := range pairs {
		if kind, _ := s.keys.Parse(p.Key); kind != kvlayout.KindRequest {
			continue // the folder's marker
		}
		r, err := s.decodeRequest(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		reqs = append(reqs, r)
	}
	slices.SortFunc(reqs, func(a, b kvlayout.Request) int { return strings.Compare(a.Job, b.Job) })
	if len(errs) > 0 {
		return reqs, last, fmt.Errorf("list %s: %w", s.keys.Requests(), errors.Join(errs...))
	}
	return reqs, last, nil
}
