// Command demo-app is a small application that leadercron can trigger.
//
// It listens on two addresses. The public one (-listen, else $APP_LISTEN,
// else 127.0.0.1:8080) stands for the application's own port and serves
//
//	GET  /healthz      200 while the process is up
//
// and nothing of the leadercron contract. The private trigger listener
// (-trigger-listen, else $LEADERCRON_APP_LISTEN, else 127.0.0.1:8081) is the
// one the sidecar calls, its LEADERCRON_APP_URL:
//
//	POST /jobs/{name}  run a job (hello, send-report, slow)
//	POST /drain        stop accepting runs; answers {"running": N}
//	GET  /healthz      as above
//
// Triggers are authenticated by the sidecar's signature when a secret is
// configured, with the variables the sidecar reads:
//
//	LEADERCRON_TRIGGER_SECRET                the secret (at least 32 bytes)
//	LEADERCRON_TRIGGER_SECRET_FILE           or a file holding it
//	LEADERCRON_TRIGGER_SECRET_PREVIOUS       during a rotation, the previous
//	LEADERCRON_TRIGGER_SECRET_PREVIOUS_FILE  secret, accepted too
//
// Without a secret, only loopback peers may trigger, and the trigger
// listener must be a loopback address. Bad flags or variables (both forms
// of a secret set, a secret shorter than 32 bytes, a non-loopback trigger
// address without secret) make it exit 2 with a message; secrets are
// never printed. With -async the jobs run in the background and triggers
// are answered 202.
//
// On SIGTERM or SIGINT it stops accepting runs (503), keeps serving HTTP,
// including /drain and /healthz, until the running jobs have finished or 30s
// have passed, then shuts the servers down and exits. A second signal exits
// at once.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/leadercron/leadercron/examples/go/jobs"
)

const (
	defaultListen        = "127.0.0.1:8080"
	defaultTriggerListen = "127.0.0.1:8081"
	drainTimeout         = 30 * time.Second
	closeTimeout         = 5 * time.Second
)

func main() {
	cfg, err := parseConfig(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo-app:", err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	a, err := newApp(cfg, logger)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo-app:", err)
		if errors.Is(err, jobs.ErrNotLoopback) {
			os.Exit(2)
		}
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := a.serve(ctx, stop); err != nil {
		fmt.Fprintln(os.Stderr, "demo-app:", err)
		os.Exit(1)
	}
}

// config is what the flags and the environment ask for.
type config struct {
	listen        string   // public address
	triggerListen string   // private address for the sidecar
	async         bool     // run jobs in the background
	secrets       [][]byte // nil: unauthenticated, loopback only
}

// parseConfig reads the flags in args and the environment. Usage and flag
// errors are written to out.
func parseConfig(args []string, out io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("demo-app", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&cfg.listen, "listen", envOr("APP_LISTEN", defaultListen),
		"public address, serving GET /healthz only (default from $APP_LISTEN, else "+defaultListen+")")
	fs.StringVar(&cfg.triggerListen, "trigger-listen", envOr("LEADERCRON_APP_LISTEN", defaultTriggerListen),
		"private address for the sidecar's POST /jobs/{name} and POST /drain (default from $LEADERCRON_APP_LISTEN, else "+defaultTriggerListen+")")
	fs.BoolVar(&cfg.async, "async", false, "run jobs in the background and answer 202")
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: demo-app [flags]\n\nFlags:\n")
		fs.PrintDefaults()
		fmt.Fprint(out, `
Environment:
  LEADERCRON_TRIGGER_SECRET, LEADERCRON_TRIGGER_SECRET_FILE
        the secret the sidecar signs triggers with (at least 32 bytes), or a
        file holding it; without one, only loopback peers may trigger
  LEADERCRON_TRIGGER_SECRET_PREVIOUS, LEADERCRON_TRIGGER_SECRET_PREVIOUS_FILE
        the previous secret, also accepted during a rotation
`)
	}
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if _, port, _ := net.SplitHostPort(cfg.listen); cfg.listen == cfg.triggerListen && port != "0" {
		return config{}, fmt.Errorf("-listen and -trigger-listen are both %s: the trigger listener must be a separate, private address", cfg.listen)
	}
	secrets, err := jobs.SecretsFromEnv()
	if err != nil {
		return config{}, err
	}
	cfg.secrets = secrets
	return cfg, nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// app is the demo application: its jobs and its two servers.
type app struct {
	log       *slog.Logger
	h         *jobs.Handler
	async     bool
	signed    bool
	public    *http.Server
	publicLn  net.Listener
	trigger   *http.Server
	triggerLn net.Listener
}

// newApp registers the jobs and opens both listeners.
func newApp(cfg config, logger *slog.Logger) (*app, error) {
	h, err := jobs.New(jobs.Options{Logger: logger, Async: cfg.async, Secrets: cfg.secrets})
	if err != nil {
		return nil, err
	}
	h.Register("hello", func(ctx context.Context, run jobs.Run) error {
		logger.Info("hello from the demo app", runAttrs(run)...)
		return nil
	})
	h.Register("send-report", func(ctx context.Context, run jobs.Run) error {
		logger.Info("building report", runAttrs(run)...)
		if err := sleep(ctx, 2*time.Second); err != nil {
			return fmt.Errorf("report interrupted: %w", err)
		}
		logger.Info("report sent", runAttrs(run)...)
		return nil
	})
	h.Register("slow", func(ctx context.Context, run jobs.Run) error {
		logger.Info("slow job started", runAttrs(run)...)
		if err := sleep(ctx, 20*time.Second); err != nil {
			return fmt.Errorf("slow job interrupted: %w", err)
		}
		logger.Info("slow job done", runAttrs(run)...)
		return nil
	})

	healthz := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "{\"status\":\"ok\",\"draining\":%t,\"running\":%d}\n", h.Draining(), h.Running())
	}
	publicMux := http.NewServeMux()
	publicMux.HandleFunc("GET /healthz", healthz)
	triggerMux := http.NewServeMux()
	triggerMux.HandleFunc("GET /healthz", healthz)
	triggerMux.Handle("/", h) // POST /jobs/{name}, POST /drain

	a := &app{log: logger, h: h, async: cfg.async, signed: len(cfg.secrets) > 0}
	// The trigger listener first: Listen refuses a non-loopback address
	// without a secret, a configuration error.
	if a.triggerLn, err = jobs.Listen(cfg.triggerListen, h); err != nil {
		return nil, err
	}
	if a.publicLn, err = net.Listen("tcp", cfg.listen); err != nil {
		a.triggerLn.Close()
		return nil, err
	}
	errorLog := slog.NewLogLogger(logger.Handler(), slog.LevelWarn)
	a.public = &http.Server{Handler: publicMux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: errorLog}
	a.trigger = &http.Server{Handler: triggerMux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: errorLog}
	return a, nil
}

// serve serves until ctx is done, then drains: no new runs, /drain and
// /healthz still answered, until the jobs have finished or drainTimeout;
// then it shuts the servers down. onSignal is called once ctx is done
// (main uses it so that a second signal kills the process).
func (a *app) serve(ctx context.Context, onSignal func()) error {
	serveErr := make(chan error, 2)
	go func() { serveErr <- a.public.Serve(a.publicLn) }()
	go func() { serveErr <- a.trigger.Serve(a.triggerLn) }()
	a.log.Info("demo app listening",
		"public", a.publicLn.Addr().String(),
		"trigger", a.triggerLn.Addr().String(),
		"signed_triggers", a.signed,
		"async", a.async)

	select {
	case err := <-serveErr:
		a.public.Close()
		a.trigger.Close()
		return err
	case <-ctx.Done():
	}
	onSignal()

	// Refuse new runs but keep serving: the sidecar may still call /drain
	// and the in-flight sync triggers must get their answers.
	a.h.Drain()
	a.log.Info("signal received: draining", "running", a.h.Running(), "timeout", drainTimeout)
	waitCtx, cancelWait := context.WithTimeout(context.Background(), drainTimeout)
	defer cancelWait()
	if err := a.h.Wait(waitCtx); err != nil {
		a.log.Warn("jobs still running after drain timeout", "running", a.h.Running())
	} else {
		a.log.Info("all jobs finished")
	}

	closeCtx, cancelClose := context.WithTimeout(context.Background(), closeTimeout)
	defer cancelClose()
	for _, srv := range []*http.Server{a.trigger, a.public} {
		if err := srv.Shutdown(closeCtx); err != nil {
			// Cancels the contexts of sync runs still in flight.
			srv.Close()
			a.log.Warn("forced server close", "err", err)
		}
	}
	for range 2 {
		if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	}
	a.log.Info("demo app stopped", "running", a.h.Running())
	return nil
}

func runAttrs(run jobs.Run) []any {
	return []any{
		"job", run.Job,
		"slot", run.Slot.Format(time.RFC3339),
		"fencing_token", run.FencingToken,
		"attempt", run.Attempt,
	}
}

// sleep waits for d or until ctx is done, whichever comes first.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
