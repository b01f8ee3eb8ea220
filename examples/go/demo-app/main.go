// Command demo-app is a small application that leadercron can trigger.
//
// It serves, on 127.0.0.1:8080 unless told otherwise:
//
//	POST /jobs/{name}  run a job (hello, send-report, slow)
//	POST /drain        stop accepting runs; answers {"running": N}
//	GET  /healthz      200 while the process is up
//
// The listen address is the -listen flag if given, else $APP_LISTEN, else
// 127.0.0.1:8080. With -async the jobs run in the background and triggers
// are answered 202.
//
// On SIGTERM or SIGINT it stops accepting runs (503), keeps serving HTTP,
// including /drain and /healthz, until the running jobs have finished or 30s
// have passed, then shuts the server down and exits. A second signal exits
// at once.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/leadercron/leadercron/examples/go/jobs"
)

const (
	defaultListen = "127.0.0.1:8080"
	drainTimeout  = 30 * time.Second
	closeTimeout  = 5 * time.Second
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo-app:", err)
		os.Exit(1)
	}
}

func run() error {
	def := defaultListen
	if v := os.Getenv("APP_LISTEN"); v != "" {
		def = v
	}
	listen := flag.String("listen", def, "address to listen on (default from $APP_LISTEN, else "+defaultListen+")")
	async := flag.Bool("async", false, "run jobs in the background and answer 202")
	flag.Parse()

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))

	h := jobs.NewHandler(jobs.Options{Logger: logger, Async: *async})
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

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "{\"status\":\"ok\",\"draining\":%t,\"running\":%d}\n", h.Draining(), h.Running())
	})
	mux.Handle("/", h) // POST /jobs/{name}, POST /drain

	srv := &http.Server{
		Addr:              *listen,
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	serveErr := make(chan error, 1)
	go func() {
		logger.Info("demo app listening", "addr", *listen, "async", *async)
		serveErr <- srv.ListenAndServe()
	}()

	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	stop() // a second signal kills the process

	// Refuse new runs but keep serving: the sidecar may still call /drain
	// and the in-flight sync triggers must get their answers.
	h.Drain()
	logger.Info("signal received: draining", "running", h.Running(), "timeout", drainTimeout)
	waitCtx, cancelWait := context.WithTimeout(context.Background(), drainTimeout)
	defer cancelWait()
	if err := h.Wait(waitCtx); err != nil {
		logger.Warn("jobs still running after drain timeout", "running", h.Running())
	} else {
		logger.Info("all jobs finished")
	}

	closeCtx, cancelClose := context.WithTimeout(context.Background(), closeTimeout)
	defer cancelClose()
	if err := srv.Shutdown(closeCtx); err != nil {
		// Cancels the contexts of sync runs still in flight.
		srv.Close()
		logger.Warn("forced server close", "err", err)
	}
	if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	logger.Info("demo app stopped", "running", h.Running())
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
