package ledger

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/kvlayout"
)

// Fleet is everything `leadercron status` shows that lives in Consul.
type Fleet struct {
	// Leader is nil when no session holds the lock key.
	Leader *Leader `json:"leader"`
	// Jobs has every job that has any state in KV, by name.
	Jobs map[string]*JobState `json:"jobs"`
	// Problems lists values that did not decode; the rest is still shown.
	Problems []string `json:"problems,omitempty"`
	// Index is Consul's index of the KV read.
	Index uint64 `json:"index"`
}

// Leader is the holder of the lock key.
type Leader struct {
	ID      string `json:"id"`      // from the lock value
	Service string `json:"service"` // from the lock value
	// Since is when this leadership began, if the lock value says so.
	Since *time.Time `json:"since,omitempty"`
	// FencingToken is the ModifyIndex of the lock key: the write that
	// acquired it, as long as the value has not been rewritten since.
	FencingToken uint64 `json:"fencing_token"`
	Session      string `json:"session"`
	// SessionName, Node and TTL come from the session's info; they are
	// empty when it could not be read (for example just destroyed).
	SessionName string `json:"session_name,omitempty"`
	Node        string `json:"node,omitempty"`
	TTL         string `json:"ttl,omitempty"`
}

// JobState is one job's state in KV.
type JobState struct {
	Last    *kvlayout.Claim   `json:"last,omitempty"`
	Paused  *kvlayout.Paused  `json:"paused,omitempty"`
	Request *kvlayout.Request `json:"request,omitempty"`
	History []kvlayout.Entry  `json:"history"`
}

// Snapshot reads the fleet's state: one recursive read of the prefix
// (leader key, P/jobs/, P/requests/, P/history/) and, when the lock is
// held, one read of the holder's session.
func (s *Store) Snapshot(ctx context.Context) (Fleet, error) {
	pairs, meta, err := s.kv.List(s.keys.Root(), qopts(ctx))
	if err != nil {
		return Fleet{}, fmt.Errorf("snapshot: list %s: %w", s.keys.Root(), err)
	}
	f := Fleet{Jobs: map[string]*JobState{}, Index: meta.LastIndex}
	job := func(name string) *JobState {
		j := f.Jobs[name]
		if j == nil {
			j = &JobState{}
			f.Jobs[name] = j
		}
		return j
	}
	bad := func(p *api.KVPair, err error) {
		f.Problems = append(f.Problems, fmt.Sprintf("%s: %v", p.Key, err))
	}
	for _, p := range pairs {
		kind, name := s.keys.Parse(p.Key)
		switch kind {
		case kvlayout.KindLock:
			if p.Session == "" {
				continue
			}
			var v kvlayout.LockValue
			if err := json.Unmarshal(p.Value, &v); err != nil {
				bad(p, err)
			}
			f.Leader = &Leader{ID: v.ID, Service: v.Service, FencingToken: p.ModifyIndex, Session: p.Session}
			if !v.Since.IsZero() {
				f.Leader.Since = &v.Since
			}
		case kvlayout.KindClaim:
			var c kvlayout.Claim
			if err := json.Unmarshal(p.Value, &c); err != nil {
				bad(p, err)
				continue
			}
			job(name).Last = &c
		case kvlayout.KindPaused:
			pz, err := kvlayout.DecodePaused(p.Value)
			if err != nil {
				bad(p, err) // still paused: the key's presence is what counts
			}
			job(name).Paused = &pz
		case kvlayout.KindRequest:
			r, err := s.decodeRequest(p)
			if err != nil {
				bad(p, err)
				continue
			}
			job(r.Job).Request = &r
		case kvlayout.KindHistory:
			var list []kvlayout.Entry
			if err := json.Unmarshal(p.Value, &list); err != nil {
				bad(p, err)
				continue
			}
			job(name).History = list
		}
	}
	sort.Strings(f.Problems)

	if f.Leader != nil {
		se, _, err := s.client.Session().Info(f.Leader.Session, qopts(ctx))
		if err != nil {
			return f, fmt.Errorf("snapshot: session info %s: %w", f.Leader.Session, err)
		}
		if se != nil {
			f.Leader.SessionName, f.Leader.Node, f.Leader.TTL = se.Name, se.Node, se.TTL
		}
	}
	return f, nil
}
