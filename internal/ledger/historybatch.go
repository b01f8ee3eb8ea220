package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/kvlayout"
)

// History writes are batched: AppendAll writes the entries of many jobs
// in as few Txns as Consul takes (one check-and-set per job's list), from
// a cache of each list and its ModifyIndex, so a leader that keeps its
// history in step sends no read before a write. A list another writer
// changed fails its check-and-set; that job alone is read again and
// retried, never the batch.
const (
	// historyOpsPerTxn stays under Consul's 128 operations per Txn.
	historyOpsPerTxn = 128
	// historyBytesPerTxn stays well under Consul's txn_max_req_len
	// (512 KiB by default) with the JSON encoding's overhead; a job's
	// list is at most MaxHistory entries of about 250 bytes each.
	historyBytesPerTxn = 256 << 10
)

// historyCache is the last list of each job this Store read or wrote,
// with its ModifyIndex (0: the key did not exist).
type historyCache struct {
	mu    sync.Mutex
	lists map[string]cachedHistory
}

type cachedHistory struct {
	list  []kvlayout.Entry
	index uint64
}

func (c *historyCache) get(job string) (cachedHistory, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h, ok := c.lists[job]
	return h, ok
}

func (c *historyCache) put(job string, h cachedHistory) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lists == nil {
		c.lists = map[string]cachedHistory{}
	}
	c.lists[job] = h
}

func (c *historyCache) drop(jobs ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, j := range jobs {
		delete(c.lists, j)
	}
}

// AppendAll records every job's entries in its history, as Append does for
// one: newest slot first, at most MaxHistory entries, an entry already
// stored not added twice (so a call whose outcome was unknown may be
// repeated). Jobs are written together, a Txn for as many lists as fit;
// a job whose list changed meanwhile is re-read and retried alone, until
// ctx ends or maxCASAttempts conflicts in a row.
func (s *Store) AppendAll(ctx context.Context, entries map[string][]kvlayout.Entry) error {
	jobs := slices.Sorted(maps.Keys(entries))
	pause := casBackoff()
	var errs []error
	var unknown error // the last Txn whose outcome was unknown
	for range maxCASAttempts {
		var again []string
		for chunk := range s.historyChunks(ctx, jobs, entries, &errs) {
			retry, err := s.writeHistories(ctx, chunk, &errs)
			again = append(again, retry...)
			if err != nil {
				unknown = err
			}
		}
		if len(again) == 0 {
			return errors.Join(errs...)
		}
		jobs = again
		if err := sleep(ctx, pause.NextBackOff()); err != nil {
			return errors.Join(append(errs, unknown, fmt.Errorf("append history of %v: %w", jobs, err))...)
		}
	}
	if unknown != nil {
		return errors.Join(append(errs, unknown)...)
	}
	return errors.Join(append(errs, fmt.Errorf("append history of %v: %w", jobs, ErrConflict))...)
}

// historyWrite is one job's new list, to be written at index.
type historyWrite struct {
	job   string
	list  []kvlayout.Entry
	value []byte
	index uint64
}

// historyChunks yields the new lists of jobs (that need a write), grouped
// to fit a Txn. A job whose list cannot be read is left out and its error
// added to errs.
func (s *Store) historyChunks(ctx context.Context, jobs []string, entries map[string][]kvlayout.Entry, errs *[]error) func(func([]historyWrite) bool) {
	return func(yield func([]historyWrite) bool) {
		var chunk []historyWrite
		size := 0
		for _, job := range jobs {
			w, ok, err := s.newHistory(ctx, job, entries[job])
			if err != nil {
				*errs = append(*errs, err)
				continue
			}
			if !ok {
				continue // every entry is stored already
			}
			if len(chunk) > 0 && (len(chunk) == historyOpsPerTxn || size+len(w.value) > historyBytesPerTxn) {
				if !yield(chunk) {
					return
				}
				chunk, size = nil, 0
			}
			chunk = append(chunk, w)
			size += len(w.value)
		}
		if len(chunk) > 0 {
			yield(chunk)
		}
	}
}

// newHistory is job's list with entries inserted, from the cache or a
// read; ok is false when nothing is new.
func (s *Store) newHistory(ctx context.Context, job string, entries []kvlayout.Entry) (historyWrite, bool, error) {
	h, cached := s.histories.get(job)
	if !cached {
		list, index, err := s.history(ctx, s.keys.History(job))
		if err != nil {
			return historyWrite{}, false, fmt.Errorf("append history of %s: %w", job, err)
		}
		h = cachedHistory{list: list, index: index}
	}
	list := slices.Clone(h.list)
	added := false
	for _, e := range entries {
		e.Slot, e.At = e.Slot.UTC(), e.At.UTC()
		if !slices.ContainsFunc(list, func(o kvlayout.Entry) bool { return same(e, o) }) {
			list = insert(list, e)
			added = true
		}
	}
	if !added {
		s.histories.put(job, h)
		return historyWrite{}, false, nil
	}
	value, err := json.Marshal(list)
	if err != nil {
		return historyWrite{}, false, fmt.Errorf("append history of %s: encode: %w", job, err)
	}
	return historyWrite{job: job, list: list, value: value, index: h.index}, true, nil
}

// writeHistories writes a chunk's lists in one Txn of check-and-sets and
// returns the jobs to write again: those whose list changed meanwhile (to
// re-read), and those a refusal did not name. A transport error leaves the
// outcome unknown: every job of the chunk is re-read and retried (an entry
// the lost Txn did write is found and not added twice), and the error is
// returned for the caller to report if the retries run out.
func (s *Store) writeHistories(ctx context.Context, chunk []historyWrite, errs *[]error) ([]string, error) {
	ops := make(api.TxnOps, len(chunk))
	for i, w := range chunk {
		ops[i] = &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: s.keys.History(w.job), Value: w.value, Index: w.index}}
	}
	ok, resp, _, err := s.client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		again := make([]string, len(chunk))
		for i, w := range chunk {
			s.histories.drop(w.job)
			again[i] = w.job
		}
		return again, fmt.Errorf("append history of %d jobs: txn: %w", len(chunk), err)
	}
	if ok {
		s.cacheWritten(chunk, resp)
		return nil, nil
	}
	// Refused as a whole: the ops it names failed. A list that changed
	// meanwhile is re-read and retried; the lists it does not name are
	// retried as they are (their cache still holds); a denial is an error.
	named := map[int]string{}
	for _, te := range resp.Errors {
		named[te.OpIndex] = te.What
	}
	var again []string
	for i, w := range chunk {
		what, failed := named[i]
		switch {
		case failed && denied(what):
			*errs = append(*errs, fmt.Errorf("append history of %s: consul refused it: %s", w.job, what))
		case failed:
			s.histories.drop(w.job)
			again = append(again, w.job)
		case len(named) == 0:
			*errs = append(*errs, fmt.Errorf("append history of %s: consul refused the txn without a reason", w.job))
		default:
			again = append(again, w.job)
		}
	}
	return again, nil
}

// denied reports whether a Txn error says the token may not do the op.
func denied(what string) bool {
	return strings.Contains(what, "ermission denied") || strings.Contains(what, "lacks permission")
}

// cacheWritten keeps each written list with its new ModifyIndex.
func (s *Store) cacheWritten(chunk []historyWrite, resp *api.TxnResponse) {
	index := map[string]uint64{}
	for _, r := range resp.Results {
		if r.KV != nil {
			index[r.KV.Key] = r.KV.ModifyIndex
		}
	}
	for _, w := range chunk {
		if i, ok := index[s.keys.History(w.job)]; ok && i > 0 {
			s.histories.put(w.job, cachedHistory{list: w.list, index: i})
		} else {
			s.histories.drop(w.job)
		}
	}
}
