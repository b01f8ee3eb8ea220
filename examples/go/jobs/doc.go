// Package jobs lets a Go application receive job triggers from a co-located
// leadercron sidecar.
//
// The sidecar elects one leader among the replicas of a service and, at every
// scheduled instant ("slot"), calls its own application over localhost HTTP:
//
//	POST /jobs/{name}   run job name once
//	POST /drain         stop accepting runs; answer {"running": N}
//
// A Handler implements both endpoints. Register a Func per job name and
// serve the Handler on a private listener of its own, on the loopback
// interface, separate from the application's public port:
//
//	secrets, err := jobs.SecretsFromEnv() // LEADERCRON_TRIGGER_SECRET(_FILE); nil if unset
//	if err != nil {
//		return err
//	}
//	h, err := jobs.New(jobs.Options{Logger: logger, Secrets: secrets})
//	if err != nil {
//		return err
//	}
//	h.Register("send-report", func(ctx context.Context, run jobs.Run) error {
//		return sendReport(ctx, run.Slot)
//	})
//	ln, err := jobs.Listen("127.0.0.1:8081", h)
//	if err != nil {
//		return err
//	}
//	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
//	go srv.Serve(ln) // POST /jobs/{name} and POST /drain, nothing else
//
// and point the sidecar's LEADERCRON_APP_URL at http://127.0.0.1:8081. The
// sidecar shares the application's network namespace (a Kubernetes pod, an
// ECS task in awsvpc mode, the same host), so the trigger port need not,
// and should not, be reachable from anywhere else. On shutdown, call Drain,
// then Wait, then shut the server down (see Handler.Drain).
//
// The package imports the standard library only. Add it to a module with
//
//	go get github.com/leadercron/leadercron/examples/go/jobs
//
// (it belongs to the sidecar's module, whose go line, 1.26.8, becomes the
// minimum of yours). Example shows a whole exchange over a real listener;
// ExampleSignRequest shows how to test jobs without a sidecar.
//
// # Authentication
//
// Whoever can send POST /jobs/{name} runs jobs, whoever can send POST
// /drain stops them until the next restart, and a fencing token higher
// than the leader's would make the Handler refuse every real trigger. So
// every request to either endpoint is authenticated first, before
// anything else is looked at (the draining flag, the job name, the body,
// the fencing token); a request refused at this step changes no state.
//
// With Options.Secrets (the sidecar's LEADERCRON_TRIGGER_SECRET), each
// request must carry the header
//
//	Leadercron-Signature: t=<unix seconds>,kid=<key id>,v1=<64 hex>
//
// where kid is KeyID of the secret and v1 the hex HMAC-SHA256, keyed with
// the secret, of these 13 lines joined by "\n" (no final newline):
// "leadercron-v1", the method, the path as sent (without the query), t,
// the values of the headers Leadercron-Job, Leadercron-Slot,
// Leadercron-Fencing-Token, Leadercron-Deadline, Idempotency-Key,
// Leadercron-Attempt, Leadercron-Run-Now and Leadercron-Id ("" when
// absent), and the lowercase hex SHA-256 of the body. Every peer must sign,
// loopback ones included. The answers are:
//
//	413 body_too_large   the body is larger than MaxBodyBytes (64 KiB)
//	401 bad_signature    no header, a malformed one, an unknown kid, a
//	                     mismatch (wrong secret, or the request was altered),
//	                     a signed header given twice or holding a line break
//	401 stale_signature  a valid signature whose t is more than
//	                     SignatureTolerance (30 s) away from the clock
//
// Several secrets are accepted to rotate without downtime: give the
// applications [new, old], then switch the sidecar to new, then give the
// applications [new] alone. Secrets must be at least MinSecretLen (32)
// bytes; New refuses shorter ones. Secrets never appear in logs or errors.
//
// Without secrets, requests are not authenticated: only peers with a
// loopback address (127.0.0.0/8, ::1; r.RemoteAddr, never a forwarding
// header) are served, others get 403 not_loopback, and New logs a warning
// once. Listen refuses to listen on another address than a loopback one in
// that case. Bodies are limited to MaxBodyBytes (413) either way. A
// reverse proxy on the same host makes every peer look local: never expose
// a Handler without secrets through one, and never serve it over a Unix
// socket (there is no loopback address; every request gets 403).
//
// A signature does not stop a request captured on the network from being
// replayed, unchanged, within SignatureTolerance: to this application,
// where a replayed trigger has the idempotency key of the original (a
// duplicate once it succeeded), or to another replica sharing the secret.
// The private listener on loopback keeps those requests off the network.
//
// # Request
//
// The sidecar sends a JSON body
//
//	{"job": "...", "slot": "...", "fencing_token": 123, "deadline": "...",
//	 "idempotency_key": "...", "attempt": 1}
//
// and mirrors it in the headers Leadercron-Job, Leadercron-Slot,
// Leadercron-Fencing-Token, Leadercron-Deadline, Idempotency-Key and
// Leadercron-Attempt. The body must be a JSON object and is authoritative;
// its field names are matched exactly, a field given twice is refused, and
// a null field counts as absent. A value present both in
// the body and in a header must agree (times are compared as instants);
// otherwise the request is refused with 400. A field missing from the body
// is taken from its header. Slot, fencing token and deadline are required;
// the job name defaults to the path segment and must match it; the
// idempotency key defaults to "<job>@<slot>" (slot in RFC 3339 UTC); the
// attempt defaults to 1. Unknown body fields are ignored.
//
// # Responses
//
// Checks are made in this order, after the authentication above; the
// first that fails decides the answer. Every answer carries a small JSON
// body; refusals look like {"error": "...", "code": "..."} with the codes
// listed below.
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
// The Handler remembers the highest fencing token it has seen on an
// authenticated, well-formed request for a registered job while not
// draining (that is, on every request that reaches the fence, even one
// then refused for its deadline, a duplicate key or a job already
// running). A request carrying a lower token comes from a leader
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
