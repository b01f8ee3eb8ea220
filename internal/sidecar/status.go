package sidecar

import (
	"context"
	"encoding/json"
	"time"

	"github.com/leadercron/leadercron/internal/admin"
	"github.com/leadercron/leadercron/internal/config"
	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/ledger"
)

// status is GET /status: this sidecar's view, and the fleet's state from
// the ledger when there is one.
func (s *Sidecar) status() admin.Status {
	st := admin.Status{ID: s.cfg.ID, Service: s.cfg.Service, Jobs: []admin.JobStatus{}}
	s.mu.Lock()
	term := s.term
	st.Campaigning = s.cancelCampaign != nil
	st.HandedOver = s.handedOver
	s.mu.Unlock()
	if s.gate != nil {
		ok, _ := s.gate.state()
		st.AppHealthy = &ok
	}
	if term != nil {
		if rem := term.Remaining(); rem > 0 {
			st.Leader = true
			st.FencingToken = term.Token()
			if s.cfg.Lock == config.LockConsul {
				st.LeaseRemainingMS = rem.Milliseconds()
			}
		}
	}
	var fleet *ledger.Fleet
	if s.ledger != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		f, err := s.ledger.Snapshot(ctx)
		cancel()
		if err != nil {
			st.KVError = err.Error()
		} else {
			fleet = &f
		}
	}
	for _, j := range s.sched.Status() {
		js := admin.JobStatus{Name: j.Name, Schedule: j.Spec, TZ: j.Location, NextSlot: j.NextSlot.UTC(), Running: j.Running}
		if l := j.Last; l != nil {
			js.Last = &admin.LastSlot{Slot: l.Slot.UTC(), Outcome: l.Outcome, Reason: l.Reason,
				HTTPStatus: l.Status, DurationMS: l.Duration.Milliseconds()}
		}
		if fleet != nil {
			paused := false
			history := []kvlayout.Entry{}
			if kv := fleet.Jobs[j.Name]; kv != nil {
				paused = kv.Paused != nil
				history = kv.History[:min(len(kv.History), statusHistory)]
			}
			js.Paused = &paused
			js.History, _ = json.Marshal(history) // plain struct: cannot fail
		}
		st.Jobs = append(st.Jobs, js)
	}
	return st
}

// statusHistory is how many history entries per job /status shows.
const statusHistory = 10
