package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/admin"
	"github.com/leadercron/leadercron/internal/appclient"
	"github.com/leadercron/leadercron/internal/config"
	"github.com/leadercron/leadercron/internal/ecsmeta"
	"github.com/leadercron/leadercron/internal/leader"
	"github.com/leadercron/leadercron/internal/ledger"
	"github.com/leadercron/leadercron/internal/metrics"
)

// Exit codes.
const (
	ExitOK           = 0
	ExitFailure      = 1
	ExitConfig       = 2
	ExitDrainTimeout = 3
)

const usage = `usage: leadercron [command]

commands:
  (none)       run the sidecar
  validate     check the configuration and print each job's next 5 slots
  healthcheck  GET /healthz on LEADERCRON_LISTEN; exit 0 if healthy, else 1
  pause <job> [-by NAME] [-reason TEXT]
               pause a job fleet-wide (Consul KV) until resumed
  resume <job> undo pause
  run <job> [-by NAME]
               ask the leader to run a job once, now
  status [-json] [-history N]
               the leader, each job's next slot, pause, pending run and history
  version      print the version

Configuration comes from the environment only; see the README.
`

// Version is stamped at build time with -ldflags "-X ...app.Version=...".
var Version = "dev"

// Main runs the command in args and returns the process's exit code.
func Main(ctx context.Context, args []string, environ []string, stdout, stderr io.Writer) int {
	env := envMap(environ)
	cmd := ""
	if len(args) > 0 {
		cmd = args[0]
	}
	switch cmd {
	case "":
	case "validate":
		return validate(ctx, env, stdout, stderr)
	case "healthcheck":
		return healthcheck(ctx, env, stderr)
	case "pause", "resume", "run", "status":
		return fleet(ctx, cmd, args[1:], env, stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, "leadercron", Version)
		return ExitOK
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return ExitOK
	default:
		fmt.Fprintf(stderr, "leadercron: unknown command %q\n%s", cmd, usage)
		return ExitConfig
	}

	cfg, consul, code := load(ctx, env, stderr)
	if code != ExitOK {
		return code
	}
	log := newLogger(cfg, stderr)
	if code := checkConsul(ctx, consul, env, stderr, log); code != ExitOK {
		return code
	}
	err := Run(ctx, cfg, consul, log)
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, leader.ErrSessionRejected):
		log.Error("consul refused the session settings", "variable", "LEADERCRON_SESSION_TTL", "ttl", cfg.SessionTTL, "error", err)
		return ExitConfig
	case errors.Is(err, appclient.ErrDrainTimeout):
		log.Error("drain timed out, lock left to expire", "drain_timeout", cfg.DrainTimeout, "error", err)
		return ExitDrainTimeout
	default:
		log.Error("leadercron stopped", "error", err)
		return ExitFailure
	}
}

// load reads the configuration, with defaults from the ECS task metadata
// when present, and builds the Consul client. On a problem it prints every
// problem on stderr and returns ExitConfig.
func load(ctx context.Context, env map[string]string, stderr io.Writer) (config.Config, *api.Client, int) {
	cfg, err := config.Load(env, defaults(ctx, env, stderr))
	var consul *api.Client
	if err == nil && cfg.Lock == config.LockConsul {
		// api.DefaultConfig reads CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN,
		// CONSUL_CACERT and the rest from the process environment.
		consul, err = api.NewClient(api.DefaultConfig())
		if err != nil {
			err = fmt.Errorf("CONSUL_HTTP_* / CONSUL_* variables: %w", err)
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "leadercron: configuration error:")
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintln(stderr, "  "+line)
		}
		return config.Config{}, nil, ExitConfig
	}
	return cfg, consul, ExitOK
}

func defaults(ctx context.Context, env map[string]string, stderr io.Writer) config.Defaults {
	var d config.Defaults
	if uri := env[ecsmeta.EnvVar]; uri != "" && (env["LEADERCRON_SERVICE"] == "" || env["LEADERCRON_ID"] == "") {
		mctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		task, err := ecsmeta.Fetch(mctx, &http.Client{}, uri)
		cancel()
		if err != nil {
			fmt.Fprintf(stderr, "leadercron: warning: %v\n", err)
		}
		d.Service, d.ID = task.Family, task.TaskARN
	}
	if d.ID == "" {
		host, _ := os.Hostname()
		d.ID = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	return d
}

func newLogger(cfg config.Config, out io.Writer) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       "leadercron",
		Level:      cfg.LogLevel,
		JSONFormat: cfg.LogJSON,
		Output:     out,
	}).With("id", cfg.ID)
}

// historyFlushTimeout bounds the wait, at exit, for slot fates still queued
// for Consul: each is a read and a check-and-set (milliseconds each on a
// healthy agent), and the queue at exit holds the last few slots. What is
// not written by then is logged as lost.
const historyFlushTimeout = time.Second

// ShutdownBudget is the longest a graceful stop takes from the stop
// signal to the exit: the drain timeout (which covers claims and triggers
// still in flight and the drain itself), then the release and the session
// destroy, the history flush and the admin server's shutdown. A platform's
// stop timeout must exceed it.
func ShutdownBudget(cfg config.Config) time.Duration {
	return cfg.DrainTimeout + 2*leader.FinalRequestTimeout + historyFlushTimeout + admin.ShutdownTimeout
}

// Run runs the sidecar until ctx ends and the shutdown sequence is done.
// consul is nil in standalone mode.
func Run(ctx context.Context, cfg config.Config, consul *api.Client, log hclog.Logger) error {
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on LEADERCRON_LISTEN %s: %w", cfg.Listen, err)
	}
	jobNames := make([]string, len(cfg.Jobs))
	for i, j := range cfg.Jobs {
		jobNames[i] = j.Name
	}
	m, err := metrics.New(nil, metrics.Options{Version: Version, Jobs: jobNames, DrainTimeout: cfg.DrainTimeout, Runtime: true})
	if err != nil {
		_ = ln.Close()
		return err
	}
	var store *ledger.Store
	if consul != nil {
		store = ledger.New(consul, cfg.KVPrefix)
	}
	var signer *appclient.Signer
	if cfg.TriggerSecret.IsSet() {
		// Load checked the length, the one thing NewSigner refuses.
		if signer, err = appclient.NewSigner(cfg.TriggerSecret.Bytes(), time.Now); err != nil {
			_ = ln.Close()
			return fmt.Errorf("LEADERCRON_TRIGGER_SECRET: %w", err)
		}
	}
	s := newSidecar(cfg, log, m, store, signer)

	var elector electorRunner
	if consul != nil {
		elector = leader.New(consul, leader.Options{
			Keys:        cfg.Keys(),
			ID:          cfg.ID,
			Service:     cfg.Service,
			SessionName: "leadercron " + cfg.Service + " " + cfg.ID,
			TTL:         cfg.SessionTTL,
			LockDelay:   cfg.LockDelay,
			Metrics:     m,
		}, log.Named("leader"))
	} else {
		log.Warn("standalone mode: always leader, no fleet-wide guarantees", "lock", config.LockNone)
		elector = leader.NewStandalone(time.Now())
	}

	if len(cfg.Jobs) == 0 {
		log.Warn("no jobs configured: set LEADERCRON_JOB_<NAME> variables")
	}
	// The secrets are never logged: the trigger secret's key id is (every
	// signed request carries it), the admin token only as set or not.
	signing := "off"
	if signer != nil {
		signing = "v1 kid " + signer.KeyID()
	}
	log.Info("leadercron started", "version", Version, "service", cfg.Service, "lock", cfg.Lock,
		"lock_key", cfg.Keys().Lock(), "jobs", len(cfg.Jobs), "listen", ln.Addr().String(), "app_url", cfg.AppURL.String(),
		"trigger_signature", signing, "admin_token", cfg.AdminToken.IsSet())
	if !admin.LoopbackOnly(ln.Addr()) && !cfg.AdminToken.IsSet() {
		log.Warn("admin port reachable beyond loopback and no admin token: POST /handover answers 401 to non-loopback callers",
			"listen", ln.Addr().String(), "variable", "LEADERCRON_ADMIN_TOKEN")
	}

	// The admin server stays up through the drain, so it has its own
	// context; if it fails, the sidecar shuts down gracefully.
	serveCtx, stopServe := context.WithCancel(context.Background())
	defer stopServe()
	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	served := make(chan struct{})
	var serveErr error
	go func() {
		h := admin.Handler(admin.Endpoints{Status: s.status, Metrics: m.Handler(), Handover: s.handover,
			Token: cfg.AdminToken.Bytes(), Log: log.Named("admin")})
		serveErr = admin.Serve(serveCtx, ln, h, log.Named("admin"))
		close(served)
	}()
	go func() {
		select {
		case <-served:
			cancelRun()
		case <-runCtx.Done():
		}
	}()

	if s.gate != nil {
		gateCtx, stopGate := context.WithCancel(context.Background())
		defer stopGate()
		go s.gate.run(gateCtx)
	}
	runErr := s.campaign(runCtx, elector, s.gate)
	if s.history != nil {
		s.history.close(historyFlushTimeout)
	}
	stopServe()
	<-served
	if runErr != nil {
		return runErr
	}
	if serveErr != nil {
		return fmt.Errorf("admin server: %w", serveErr)
	}
	log.Info("leadercron stopped")
	return nil
}
