// Package kvlayout owns leadercron's Consul KV layout: every key under a
// fleet's prefix P and the JSON record stored at each. Packages that read
// or write these keys (the elector, the slot claims, the ledger, the status
// command) build them here and decode them with these types, so the layout
// has one definition.
//
//	P/leader                 the lock: LockValue; the holding session is the leader
//	P/jobs/<job>/last        the last claimed slot of the job: Claim
//	P/jobs/<job>/paused      present = paused: Paused
//	P/requests/              an empty marker that keeps the folder's blocking list quiet
//	P/requests/<job>         a pending run-now request: Request
//	P/history/<job>          the job's last slot fates, newest slot first: []Entry
//	P/fleet/table            the job table the latest leader published: JobTable
//	P/fleet/members/<id>     one sidecar's own job table and version: Member
//
// Guarantees: a Layout only joins strings; the key names and the JSON field
// names here are what sidecars of other versions read, so they change only
// with a migration note. Not guaranteed: that job names are valid keys
// (package config checks them).
package kvlayout

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/leadercron/leadercron/internal/fate"
)

// Layout builds the keys of one fleet.
type Layout struct {
	prefix string // without a trailing slash
}

// New returns the layout under prefix (the configuration's KVPrefix; a
// trailing slash is ignored).
func New(prefix string) Layout { return Layout{prefix: strings.TrimSuffix(prefix, "/")} }

// Prefix is P, without a trailing slash.
func (l Layout) Prefix() string { return l.prefix }

// Root is P/, the folder that holds all of the fleet's state.
func (l Layout) Root() string { return l.prefix + "/" }

// Lock is P/leader.
func (l Layout) Lock() string { return l.prefix + "/leader" }

// JobFolder is P/jobs/<job>/: the claim record and the pause flag, read
// together by one list.
func (l Layout) JobFolder(job string) string { return l.prefix + "/jobs/" + job + "/" }

// Claim is P/jobs/<job>/last.
func (l Layout) Claim(job string) string { return l.JobFolder(job) + "last" }

// Paused is P/jobs/<job>/paused.
func (l Layout) Paused(job string) string { return l.JobFolder(job) + "paused" }

// Requests is P/requests/, the folder of pending run-now requests. The
// key P/requests/ itself (empty) is a marker the leader writes so that the
// folder is never empty: Consul answers a blocking list of an empty prefix
// with the whole KV table's index and wakes it on any write under the
// nearest existing parent (every claim and history write under P/), while
// a list of a prefix that holds a key wakes only for changes under it.
func (l Layout) Requests() string { return l.prefix + "/requests/" }

// Request is P/requests/<job>.
func (l Layout) Request(job string) string { return l.Requests() + job }

// History is P/history/<job>.
func (l Layout) History(job string) string { return l.prefix + "/history/" + job }

// Fleet is P/fleet/, the folder of the job table and the member records,
// read together by one list.
func (l Layout) Fleet() string { return l.prefix + "/fleet/" }

// JobTable is P/fleet/table.
func (l Layout) JobTable() string { return l.Fleet() + "table" }

// Members is P/fleet/members/, the folder of the member records.
func (l Layout) Members() string { return l.Fleet() + "members/" }

// Member is P/fleet/members/<id>.
func (l Layout) Member(id string) string { return l.Members() + id }

// Kind is what a key under P is.
type Kind int

// The kinds of key.
const (
	KindOther Kind = iota // not part of the layout
	KindLock
	KindClaim
	KindPaused
	KindRequest
	KindHistory
	KindJobTable
	KindMember
)

// Parse says what key is and, for a per-job key, which job it belongs to.
func (l Layout) Parse(key string) (Kind, string) {
	rest, ok := strings.CutPrefix(key, l.Root())
	if !ok {
		return KindOther, ""
	}
	switch {
	case rest == "leader":
		return KindLock, ""
	case strings.HasPrefix(rest, "jobs/"):
		job, leaf, ok := strings.Cut(strings.TrimPrefix(rest, "jobs/"), "/")
		switch {
		case !ok:
		case leaf == "last":
			return KindClaim, job
		case leaf == "paused":
			return KindPaused, job
		}
	case strings.HasPrefix(rest, "requests/") && rest != "requests/":
		return KindRequest, strings.TrimPrefix(rest, "requests/")
	case strings.HasPrefix(rest, "history/"):
		return KindHistory, strings.TrimPrefix(rest, "history/")
	case rest == "fleet/table":
		return KindJobTable, ""
	case strings.HasPrefix(rest, "fleet/members/"):
		// The second value is the member's ID, not a job.
		return KindMember, strings.TrimPrefix(rest, "fleet/members/")
	}
	return KindOther, ""
}

// LockValue is the value of P/leader while a sidecar holds it, and after
// it released it.
type LockValue struct {
	ID      string    `json:"id"`
	Service string    `json:"service"`
	Since   time.Time `json:"since"` // when this leadership began
	// ReleasedAt is set by a graceful release (the drain finished, every
	// claimed slot was fired and recorded). A free key without it was
	// freed by Consul: the holder crashed, was cut off or lost its
	// session, and its last claims may have no recorded fate.
	ReleasedAt time.Time `json:"released_at,omitzero"`
}

// Claim is the value of P/jobs/<job>/last: the latest slot any leader
// claimed for the job.
type Claim struct {
	Slot         time.Time `json:"slot"`
	FencingToken uint64    `json:"fencing_token"`
	ID           string    `json:"id"` // the sidecar that claimed it
	ClaimedAt    time.Time `json:"claimed_at"`
}

// Paused is the value of P/jobs/<job>/paused.
type Paused struct {
	By     string    `json:"by"`
	At     time.Time `json:"at"`
	Reason string    `json:"reason"`
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

// Request is a pending run-now request, the value of P/requests/<job>.
type Request struct {
	ID string    `json:"id"`
	By string    `json:"by"`
	At time.Time `json:"at"`

	Job         string `json:"-"` // from the key
	ModifyIndex uint64 `json:"-"` // for delete-cas
}

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

// JobSpec is one job in a job table: its schedule and every option, in a
// canonical form (durations as Go writes them, overlap as a word), so that
// two sidecars with the same configuration write the same bytes. A field
// added here is a new job option, and changes every digest once.
type JobSpec struct {
	Name     string `json:"name"`
	Schedule string `json:"schedule"` // as configured, fields separated by one space
	TZ       string `json:"tz"`       // IANA name
	Timeout  string `json:"timeout"`
	Overlap  string `json:"overlap"` // forbid or allow
	Group    string `json:"group"`   // "" = none
	Catchup  string `json:"catchup"`
	Retries  int    `json:"retries"`
	Backoff  string `json:"backoff"`
}

// JobTable is the value of P/fleet/table: the jobs of the sidecar that
// published it, sorted by name. The leader writes it when it takes the
// lock, and again when the key no longer holds its table; a table with a
// higher FencingToken is never overwritten by one with a lower.
type JobTable struct {
	Digest       string    `json:"digest"` // sha256 of the canonical Jobs, hex
	Jobs         []JobSpec `json:"jobs"`
	Publisher    string    `json:"publisher"` // the sidecar's ID
	Version      string    `json:"version"`   // the sidecar's version
	FencingToken uint64    `json:"fencing_token"`
	PublishedAt  time.Time `json:"published_at"`
}

// Member is the value of P/fleet/members/<id>: one sidecar's own job table
// and version. At is refreshed every few minutes; a record whose At is old
// is a sidecar that is gone (see package ledger's MemberTTL).
type Member struct {
	ID      string    `json:"id"`
	Version string    `json:"version"`
	Digest  string    `json:"digest"`
	Jobs    []JobSpec `json:"jobs"`
	At      time.Time `json:"at"` // when it was written

	ModifyIndex uint64 `json:"-"` // for delete-cas
}
