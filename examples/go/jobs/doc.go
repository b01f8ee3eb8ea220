// Package jobs lets a Go application receive job triggers from a co-located
// leadercron sidecar.
//
// The sidecar elects one leader among the replicas of a service and, at every
// scheduled instant ("slot"), calls its own application over localhost HTTP:
//
//	POST /jobs/{name}   run job name once
//	POST /drain         stop accepting runs; answer {"running": N}
//
// A Handler implements both endpoints. Register a Func per job name and mount
// the Handler on the application's HTTP server:
//
//	h := jobs.NewHandler(jobs.Options{Logger: logger})
//	h.Register("send-report", func(ctx context.Context, run jobs.Run) error {
//		return sendReport(ctx, run.Slot)
//	})
//	mux := http.NewServeMux()
//	mux.Handle("/", h) // serves POST /jobs/{name} and POST /drain
//
// # Request
//
// The sidecar sends a JSON body
//
//	{"job": "...", "slot": "...", "fencing_token": 123, "deadline": "...",
//	 "idempotency_key": "...", "attempt": 1}
//
// and mirrors it in the headers Leadercron-Job, Leadercron-Slot,
// Leadercron-Fencing-Token, Leadercron-Deadline and Idempotency-Key. The
// body must be a JSON object and is authoritative. A value present both in
// the body and in a header must agree (times are compared as instants);
// otherwise the request is refused with 400. A field missing from the body
// is taken from its header. Slot, fencing token and deadline are required;
// the job name defaults to the path segment and must match it; the
// idempotency key defaults to "<job>@<slot>" (slot in RFC 3339 UTC); the
// attempt defaults to 1. Unknown body fields are ignored.
//
// # Responses
//
// Checks are made in this order; the first that fails decides the answer.
// Every answer carries a small JSON body; refusals look like
// {"error": "...", "code": "..."} with the codes listed below.
//
//	503 draining             Drain was called (or POST /drain received)
//	404 unknown_job          no Func registered under that name
//	400 bad_request          malformed body, missing field, header mismatch
//	409 stale_fencing_token  fencing token lower than the highest seen
//	504 deadline_passed      the deadline was already over; the job did not run
//	409 duplicate            the idempotency key is running or already succeeded
//	409 already_running      another run of this job is still in progress
//	200                      (sync) the Func returned nil
//	500 job_failed           (sync) the Func returned an error or panicked
//	202                      (async) the run was accepted and started
//
// 504 is used for an expired deadline so that the sidecar can tell "not
// run at all" apart from "ran and failed" (500). Requests with another
// method than POST get 405 from the router.
//
// # Guarantees
//
//   - In-flight accounting is exact: a run counts from the moment it is
//     accepted until its Func returns, whether it runs in the request
//     (sync) or in the background (Options.Async). Running, POST /drain and
//     Wait all use this count.
//   - One job name never runs twice at the same time within one Handler.
//   - A run's context has the request's deadline as its deadline. In sync
//     mode it is also cancelled when the request's context is (the sidecar
//     hung up). In async mode it is detached from the request and ends only
//     at the deadline.
//   - After Drain no new run starts; runs already accepted continue.
//   - A panicking Func is recovered and reported like an error; the
//     accounting is released either way.
//
// # Fencing
//
// The Handler remembers the highest fencing token it has seen on a
// well-formed request for a registered job while not draining (that is, on
// every request that reaches the fence, even one then refused for its
// deadline, a duplicate key or a job already running). A request carrying a lower token comes from a leader
// that has since been replaced (for example one that lost its lock during a
// network partition but does not know it yet); it is refused with 409 and
// code "stale_fencing_token" and its job does not run. Equal tokens are
// accepted: one leader uses one token for all the runs of its term.
//
// # What is not guaranteed
//
//   - Deduplication and fencing state live in process memory. They are lost
//     on restart and are not shared between replicas; they are not durable.
//     The memory of completed idempotency keys is bounded
//     (Options.RememberKeys, FIFO eviction): an old enough key may run again.
//   - Only successful runs are remembered. A key whose run failed, was
//     refused or panicked may be retried (the sidecar's next attempt).
//   - The fence only stops a stale leader's requests that reach this process
//     after a newer leader's request did. It does not cancel runs already
//     started, and it does not protect external systems: a job that writes
//     to shared storage should pass Run.FencingToken along and let the
//     storage reject stale writes.
//   - In async mode the sidecar learns only that the run was accepted, not
//     how it ended; failures are only logged.
//   - A Func that ignores its context keeps running past the deadline and
//     keeps counting as in flight.
package jobs
