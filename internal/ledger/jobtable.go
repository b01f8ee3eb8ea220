package ledger

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/scheduler"
)

// The job table and the member records (P/fleet/):
//
//   - P/fleet/table is the table of the sidecar that leads, or led last:
//     the fleet commands check job names against it, so an operator needs
//     no LEADERCRON_JOB_* variables. The leader writes it when it takes the
//     lock and whenever the key stops holding its table; a table of a later
//     leadership (a higher fencing token) is never overwritten.
//   - P/fleet/members/<id> is each sidecar's own table and version, so that
//     two replicas that disagree (a deploy half done) can be found. It is a
//     plain key, not tied to a session (a standby holds none): it is
//     rewritten every MemberRefresh, deleted when its sidecar stops
//     gracefully, and a record older than MemberTTL is a sidecar that is
//     gone; the leader deletes such records.
//
// Every write is an idempotent put or a check-and-set: one whose outcome
// is unknown (a timeout) may be repeated, and is harmless if it was
// applied.

// MemberRefresh is how often a sidecar rewrites its member record.
const MemberRefresh = 5 * time.Minute

// MemberTTL is the age after which a member record counts as a sidecar
// that is gone: three refreshes missed.
const MemberTTL = 3 * MemberRefresh

// JobSpecs returns jobs in the canonical form of a job table: sorted by
// name, every option spelled out, durations as time.Duration.String writes
// them. Equal configurations give equal specs, however they were written
// (option order, extra spaces, defaults left out or given).
func JobSpecs(jobs []scheduler.Job) []kvlayout.JobSpec {
	specs := make([]kvlayout.JobSpec, 0, len(jobs))
	for _, j := range jobs {
		tz := "UTC"
		if j.Location != nil {
			tz = j.Location.String()
		}
		overlap := "forbid"
		if j.AllowOverlap {
			overlap = "allow"
		}
		specs = append(specs, kvlayout.JobSpec{
			Name:     j.Name,
			Schedule: strings.Join(strings.Fields(j.Spec), " "),
			TZ:       tz,
			Timeout:  j.Timeout.String(),
			Overlap:  overlap,
			Group:    j.Group,
			Catchup:  j.Catchup.String(),
			Retries:  j.Retries,
			Backoff:  j.Backoff.String(),
		})
	}
	slices.SortFunc(specs, func(a, b kvlayout.JobSpec) int { return strings.Compare(a.Name, b.Name) })
	return specs
}

// Digest is the SHA-256, in hex, of specs' JSON: equal tables have equal
// digests. specs must be canonical (JobSpecs).
func Digest(specs []kvlayout.JobSpec) string {
	if specs == nil {
		specs = []kvlayout.JobSpec{}
	}
	b, _ := json.Marshal(specs) // strings and ints: cannot fail
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// ShortDigest is the first 12 hex digits of a digest, for people.
func ShortDigest(d string) string { return d[:min(len(d), 12)] }

// DiffJobs describes how got differs from want, one line per job, sorted
// by job name: "only in <wantName>", "only in <gotName>", or each option
// that differs (`schedule "0 3 * * *" (<wantName>) vs "0 4 * * *"
// (<gotName>)`). Both must be canonical. No difference is nil.
func DiffJobs(want, got []kvlayout.JobSpec, wantName, gotName string) []string {
	w := map[string]kvlayout.JobSpec{}
	for _, j := range want {
		w[j.Name] = j
	}
	g := map[string]kvlayout.JobSpec{}
	for _, j := range got {
		g[j.Name] = j
	}
	var names []string
	for n := range w {
		names = append(names, n)
	}
	for n := range g {
		if _, ok := w[n]; !ok {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	var out []string
	for _, n := range names {
		a, inW := w[n]
		b, inG := g[n]
		switch {
		case !inG:
			out = append(out, fmt.Sprintf("%s: only in %s", n, wantName))
		case !inW:
			out = append(out, fmt.Sprintf("%s: only in %s", n, gotName))
		default:
			if d := diffSpec(a, b, wantName, gotName); d != "" {
				out = append(out, fmt.Sprintf("%s: %s", n, d))
			}
		}
	}
	return out
}

func diffSpec(a, b kvlayout.JobSpec, aName, bName string) string {
	var ds []string
	add := func(name, x, y string) {
		if x != y {
			ds = append(ds, fmt.Sprintf("%s %q (%s) vs %q (%s)", name, x, aName, y, bName))
		}
	}
	add("schedule", a.Schedule, b.Schedule)
	add("tz", a.TZ, b.TZ)
	add("timeout", a.Timeout, b.Timeout)
	add("overlap", a.Overlap, b.Overlap)
	add("group", a.Group, b.Group)
	add("catchup", a.Catchup, b.Catchup)
	add("retries", fmt.Sprint(a.Retries), fmt.Sprint(b.Retries))
	add("backoff", a.Backoff, b.Backoff)
	return strings.Join(ds, ", ")
}

// Tables is what P/fleet/ holds.
type Tables struct {
	// Table is nil while no leader has published one.
	Table *kvlayout.JobTable
	// Members are every member record, live or not, sorted by ID.
	Members []kvlayout.Member
	// Problems lists values that did not decode.
	Problems []string
}

// Live reports whether m was written within MemberTTL of now.
func Live(m kvlayout.Member, now time.Time) bool { return now.Sub(m.At) < MemberTTL }

// JobTable reads P/fleet/table; nil when no leader has published one.
func (s *Store) JobTable(ctx context.Context) (*kvlayout.JobTable, error) {
	key := s.keys.JobTable()
	pair, _, err := s.kv.Get(key, qopts(ctx))
	if err != nil {
		return nil, fmt.Errorf("read job table: get %s: %w", key, err)
	}
	if pair == nil {
		return nil, nil
	}
	var t kvlayout.JobTable
	if err := json.Unmarshal(pair.Value, &t); err != nil {
		return nil, fmt.Errorf("read job table: decode %s: %w", key, err)
	}
	return &t, nil
}

// Tables lists P/fleet/: the job table and the member records. With a
// waitIndex above zero it is a blocking query that returns when P/fleet/
// changes after waitIndex or after about wait (plus Consul's jitter of up
// to wait/16). The returned index is for the next call; it is 0 when
// Consul's index went backwards, so the next call reads at once. Values
// that do not decode are skipped and listed in Problems.
func (s *Store) Tables(ctx context.Context, waitIndex uint64, wait time.Duration) (Tables, uint64, error) {
	q := &api.QueryOptions{WaitIndex: waitIndex, WaitTime: wait}
	pairs, meta, err := s.kv.List(s.keys.Fleet(), q.WithContext(ctx))
	if err != nil {
		return Tables{}, waitIndex, fmt.Errorf("list %s: %w", s.keys.Fleet(), err)
	}
	last := max(meta.LastIndex, 1)
	if last < waitIndex {
		last = 0
	}
	var t Tables
	for _, p := range pairs {
		switch kind, id := s.keys.Parse(p.Key); kind {
		case kvlayout.KindJobTable:
			var jt kvlayout.JobTable
			if err := json.Unmarshal(p.Value, &jt); err != nil {
				t.Problems = append(t.Problems, fmt.Sprintf("%s: %v", p.Key, err))
				continue
			}
			t.Table = &jt
		case kvlayout.KindMember:
			var m kvlayout.Member
			if err := json.Unmarshal(p.Value, &m); err != nil {
				t.Problems = append(t.Problems, fmt.Sprintf("%s: %v", p.Key, err))
				continue
			}
			if m.ID == "" {
				m.ID = id
			}
			m.ModifyIndex = p.ModifyIndex
			t.Members = append(t.Members, m)
		}
	}
	slices.SortFunc(t.Members, func(a, b kvlayout.Member) int { return strings.Compare(a.ID, b.ID) })
	return t, last, nil
}

// PublishJobTable writes t to P/fleet/table unless the key already holds
// it (same digest, publisher, version and fencing token) or holds the
// table of a later leadership (a higher fencing token). It reports whether
// it wrote. The write is a check-and-set at the index read, retried on a
// conflict.
func (s *Store) PublishJobTable(ctx context.Context, t kvlayout.JobTable) (bool, error) {
	key := s.keys.JobTable()
	t.PublishedAt = t.PublishedAt.UTC()
	value, err := json.Marshal(t)
	if err != nil {
		return false, fmt.Errorf("publish job table: encode: %w", err)
	}
	pause := casBackoff()
	for range maxCASAttempts {
		pair, _, err := s.kv.Get(key, qopts(ctx))
		if err != nil {
			return false, fmt.Errorf("publish job table: get %s: %w", key, err)
		}
		var index uint64
		if pair != nil {
			index = pair.ModifyIndex
			var old kvlayout.JobTable
			// A value that does not decode is overwritten.
			if json.Unmarshal(pair.Value, &old) == nil {
				if old.FencingToken > t.FencingToken {
					return false, nil
				}
				if old.Digest == t.Digest && old.Publisher == t.Publisher && old.Version == t.Version && old.FencingToken == t.FencingToken {
					return false, nil
				}
			}
		}
		ok, _, err := s.kv.CAS(&api.KVPair{Key: key, Value: value, ModifyIndex: index}, wopts(ctx))
		if err != nil {
			return false, fmt.Errorf("publish job table: cas %s: %w", key, err)
		}
		if ok {
			return true, nil
		}
		if err := sleep(ctx, pause.NextBackOff()); err != nil {
			return false, fmt.Errorf("publish job table: %w", err)
		}
	}
	return false, fmt.Errorf("publish job table: %w", ErrConflict)
}

// PublishMember writes m to P/fleet/members/<m.ID>: a plain put.
func (s *Store) PublishMember(ctx context.Context, m kvlayout.Member) error {
	key := s.keys.Member(m.ID)
	m.At = m.At.UTC()
	value, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("publish member %s: encode: %w", m.ID, err)
	}
	if _, err := s.kv.Put(&api.KVPair{Key: key, Value: value}, wopts(ctx)); err != nil {
		return fmt.Errorf("publish member %s: put %s: %w", m.ID, key, err)
	}
	return nil
}

// RemoveMember deletes member record m. With m.ModifyIndex above zero it
// is a delete-cas, so a record rewritten since it was read stays (the
// leader's removal of a stale record); it reports whether it deleted.
func (s *Store) RemoveMember(ctx context.Context, m kvlayout.Member) (bool, error) {
	key := s.keys.Member(m.ID)
	if m.ModifyIndex == 0 {
		if _, err := s.kv.Delete(key, wopts(ctx)); err != nil {
			return false, fmt.Errorf("remove member %s: delete %s: %w", m.ID, key, err)
		}
		return true, nil
	}
	ok, _, err := s.kv.DeleteCAS(&api.KVPair{Key: key, ModifyIndex: m.ModifyIndex}, wopts(ctx))
	if err != nil {
		return false, fmt.Errorf("remove member %s: delete-cas %s: %w", m.ID, key, err)
	}
	return ok, nil
}
