package ledger

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/fate"
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

// Entry is one slot's fate in P/history/<job>.
type Entry struct {
	Slot         time.Time    `json:"slot"`
	Outcome      fate.Outcome `json:"outcome"`
	Reason       fate.Reason  `json:"reason"`
	HTTPStatus   int          `json:"http_status"`       // 0 when the app was not reached
	DurationMS   int64        `json:"duration_ms"`       // the trigger's duration
	Attempts     int          `json:"attempts"`          // triggers sent for this slot
	FencingToken uint64       `json:"fencing_token"`     // the leadership that recorded it
	ID           string       `json:"id"`                // the sidecar that recorded it
	RunNow       bool         `json:"run_now"`           // a run-now request, not a scheduled slot
	Request      string       `json:"request,omitempty"` // the run-now request's id
	// Until, for a range of missed slots recorded as one entry, is the
	// end of the range; Slot is its first slot.
	Until time.Time `json:"until,omitzero"`
	At    time.Time `json:"at"` // when it was recorded
}

func (e Entry) same(o Entry) bool {
	return e.Slot.Equal(o.Slot) && e.Outcome == o.Outcome && e.At.Equal(o.At) && e.ID == o.ID && e.RunNow == o.RunNow
}

// Paused is the value of P/jobs/<job>/paused.
type Paused struct {
	By     string    `json:"by"`
	At     time.Time `json:"at"`
	Reason string    `json:"reason"`
}

// Request is a pending run-now request, the value of P/requests/<job>.
type Request struct {
	ID string    `json:"id"`
	By string    `json:"by"`
	At time.Time `json:"at"`

	Job         string `json:"-"` // from the key
	ModifyIndex uint64 `json:"-"` // for delete-cas
}

// Store reads and writes the ledger of one fleet.
type Store struct {
	client *api.Client
	kv     *api.KV
	prefix string
	now    func() time.Time
}

// New returns a Store for the fleet whose KV prefix is prefix (the
// configuration's KVPrefix, without a trailing slash).
func New(client *api.Client, prefix string) *Store {
	return &Store{client: client, kv: client.KV(), prefix: strings.TrimSuffix(prefix, "/"), now: time.Now}
}

// LockKey is P/leader.
func (s *Store) LockKey() string { return s.prefix + "/leader" }

// PausedKey is P/jobs/<job>/paused.
func (s *Store) PausedKey(job string) string { return s.prefix + "/jobs/" + job + "/paused" }

// RequestKey is P/requests/<job>.
func (s *Store) RequestKey(job string) string { return s.prefix + "/requests/" + job }

// HistoryKey is P/history/<job>.
func (s *Store) HistoryKey(job string) string { return s.prefix + "/history/" + job }

func (s *Store) requestsPrefix() string { return s.prefix + "/requests/" }

func qopts(ctx context.Context) *api.QueryOptions { return (&api.QueryOptions{}).WithContext(ctx) }
func wopts(ctx context.Context) *api.WriteOptions { return (&api.WriteOptions{}).WithContext(ctx) }

// Append records e in job's history: newest slot first, at most MaxHistory
// entries. It retries on a CAS conflict until it wins, ctx ends, or
// maxCASAttempts conflicts in a row.
func (s *Store) Append(ctx context.Context, job string, e Entry) error {
	key := s.HistoryKey(job)
	e.Slot, e.At = e.Slot.UTC(), e.At.UTC()
	for attempt := range maxCASAttempts {
		list, index, err := s.history(ctx, key)
		if err != nil {
			return fmt.Errorf("append history of %s: %w", job, err)
		}
		if slices.ContainsFunc(list, e.same) {
			return nil
		}
		list = insert(list, e)
		value, err := json.Marshal(list)
		if err != nil {
			return fmt.Errorf("append history of %s: encode: %w", job, err)
		}
		ok, _, err := s.kv.CAS(&api.KVPair{Key: key, Value: value, ModifyIndex: index}, wopts(ctx))
		if err != nil {
			return fmt.Errorf("append history of %s: cas %s: %w", job, key, err)
		}
		if ok {
			return nil
		}
		if err := backoff(ctx, attempt); err != nil {
			return fmt.Errorf("append history of %s: %w", job, err)
		}
	}
	return fmt.Errorf("append history of %s: %w", job, ErrConflict)
}

// insert puts e into list (sorted by slot, newest first; among equal slots
// the newest record first) and cuts it to MaxHistory.
func insert(list []Entry, e Entry) []Entry {
	i, _ := slices.BinarySearchFunc(list, e, func(a, b Entry) int {
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

// backoff sleeps a jittered 2^attempt ms, at most about 100 ms, or until
// ctx ends.
func backoff(ctx context.Context, attempt int) error {
	d := time.Duration(1<<min(attempt, 6)) * time.Millisecond
	d += mrand.N(d + time.Millisecond)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// History returns job's recorded slot fates, newest slot first.
func (s *Store) History(ctx context.Context, job string) ([]Entry, error) {
	list, _, err := s.history(ctx, s.HistoryKey(job))
	if err != nil {
		return nil, fmt.Errorf("read history of %s: %w", job, err)
	}
	return list, nil
}

func (s *Store) history(ctx context.Context, key string) ([]Entry, uint64, error) {
	pair, _, err := s.kv.Get(key, qopts(ctx))
	if err != nil {
		return nil, 0, fmt.Errorf("get %s: %w", key, err)
	}
	if pair == nil {
		return nil, 0, nil
	}
	var list []Entry
	if err := json.Unmarshal(pair.Value, &list); err != nil {
		return nil, 0, fmt.Errorf("decode %s: %w", key, err)
	}
	return list, pair.ModifyIndex, nil
}

// Pause marks job paused by by, with an optional reason. If the job is
// already paused, the existing pause is kept and returned with
// created=false.
func (s *Store) Pause(ctx context.Context, job, by, reason string) (p Paused, created bool, err error) {
	key := s.PausedKey(job)
	p = Paused{By: by, At: s.now().UTC().Truncate(time.Second), Reason: reason}
	value, err := json.Marshal(p)
	if err != nil {
		return Paused{}, false, fmt.Errorf("pause %s: encode: %w", job, err)
	}
	for range maxCASAttempts {
		ok, _, err := s.kv.CAS(&api.KVPair{Key: key, Value: value, ModifyIndex: 0}, wopts(ctx))
		if err != nil {
			return Paused{}, false, fmt.Errorf("pause %s: cas %s: %w", job, key, err)
		}
		if ok {
			return p, true, nil
		}
		old, _, err := s.paused(ctx, key)
		if err != nil {
			return Paused{}, false, fmt.Errorf("pause %s: %w", job, err)
		}
		if old != nil {
			return *old, false, nil
		}
		// Resumed between the CAS and the read: try again.
	}
	return Paused{}, false, fmt.Errorf("pause %s: %w", job, ErrConflict)
}

// Resume removes job's pause and returns it; wasPaused is false when the
// job was not paused.
func (s *Store) Resume(ctx context.Context, job string) (p Paused, wasPaused bool, err error) {
	key := s.PausedKey(job)
	for range maxCASAttempts {
		old, index, err := s.paused(ctx, key)
		if err != nil {
			return Paused{}, false, fmt.Errorf("resume %s: %w", job, err)
		}
		if old == nil {
			return Paused{}, false, nil
		}
		ok, _, err := s.kv.DeleteCAS(&api.KVPair{Key: key, ModifyIndex: index}, wopts(ctx))
		if err != nil {
			return Paused{}, false, fmt.Errorf("resume %s: delete-cas %s: %w", job, key, err)
		}
		if ok {
			return *old, true, nil
		}
	}
	return Paused{}, false, fmt.Errorf("resume %s: %w", job, ErrConflict)
}

// IsPaused returns job's pause, or nil when it is not paused.
func (s *Store) IsPaused(ctx context.Context, job string) (*Paused, error) {
	p, _, err := s.paused(ctx, s.PausedKey(job))
	if err != nil {
		return nil, fmt.Errorf("read pause of %s: %w", job, err)
	}
	return p, nil
}

func (s *Store) paused(ctx context.Context, key string) (*Paused, uint64, error) {
	pair, _, err := s.kv.Get(key, qopts(ctx))
	if err != nil {
		return nil, 0, fmt.Errorf("get %s: %w", key, err)
	}
	if pair == nil {
		return nil, 0, nil
	}
	p, err := DecodePaused(pair.Value)
	if err != nil {
		return nil, 0, fmt.Errorf("decode %s: %w", key, err)
	}
	return &p, pair.ModifyIndex, nil
}

// DecodePaused decodes the value of P/jobs/<job>/paused. Any value means
// paused; an empty one decodes to a Paused with no details.
func DecodePaused(value []byte) (Paused, error) {
	var p Paused
	if len(value) == 0 {
		return p, nil
	}
	err := json.Unmarshal(value, &p)
	return p, err
}

// RequestRun asks the leader to run job once, now. If a request is already
// pending for job, it is returned with created=false and nothing is
// written.
func (s *Store) RequestRun(ctx context.Context, job, by string) (r Request, created bool, err error) {
	key := s.RequestKey(job)
	r = Request{ID: rand.Text(), By: by, At: s.now().UTC().Truncate(time.Millisecond), Job: job}
	value, err := json.Marshal(r)
	if err != nil {
		return Request{}, false, fmt.Errorf("request run of %s: encode: %w", job, err)
	}
	for range maxCASAttempts {
		ok, _, err := s.kv.CAS(&api.KVPair{Key: key, Value: value, ModifyIndex: 0}, wopts(ctx))
		if err != nil {
			return Request{}, false, fmt.Errorf("request run of %s: cas %s: %w", job, key, err)
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
			return Request{}, false, fmt.Errorf("request run of %s: %w", job, err)
		}
		if pending != nil {
			return *pending, false, nil
		}
		// Consumed between the CAS and the read: try again.
	}
	return Request{}, false, fmt.Errorf("request run of %s: %w", job, ErrConflict)
}

func (s *Store) request(ctx context.Context, job string) (*Request, error) {
	key := s.RequestKey(job)
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

func (s *Store) decodeRequest(pair *api.KVPair) (Request, error) {
	var r Request
	if err := json.Unmarshal(pair.Value, &r); err != nil {
		return Request{}, fmt.Errorf("decode %s: %w", pair.Key, err)
	}
	r.Job = strings.TrimPrefix(pair.Key, s.requestsPrefix())
	r.ModifyIndex = pair.ModifyIndex
	return r, nil
}

// Requests lists the pending run-now requests, sorted by job. With a
// waitIndex above zero it is a blocking query: it returns when P/requests/
// changes after waitIndex, or after about RequestsWait (Consul adds up to
// RequestsWait/16 of jitter, so ctx should allow more). Pass the returned
// lastIndex to the next call; it is reset to 0 when Consul's index went
// backwards (a restored snapshot), so the next call reads at once. A
// request whose value does not decode is skipped and reported in the error
// together with the valid ones.
func (s *Store) Requests(ctx context.Context, waitIndex uint64) ([]Request, uint64, error) {
	q := &api.QueryOptions{WaitIndex: waitIndex, WaitTime: RequestsWait}
	pairs, meta, err := s.kv.List(s.requestsPrefix(), q.WithContext(ctx))
	if err != nil {
		return nil, waitIndex, fmt.Errorf("list %s: %w", s.requestsPrefix(), err)
	}
	last := max(meta.LastIndex, 1)
	if last < waitIndex {
		last = 0
	}
	var (
		reqs []Request
		errs []error
	)
	for _, p := range pairs {
		r, err := s.decodeRequest(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		reqs = append(reqs, r)
	}
	slices.SortFunc(reqs, func(a, b Request) int { return strings.Compare(a.Job, b.Job) })
	if len(errs) > 0 {
		return reqs, last, fmt.Errorf("list %s: %w", s.requestsPrefix(), errors.Join(errs...))
	}
	return reqs, last, nil
}
