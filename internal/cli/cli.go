package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/appclient"
	"github.com/leadercron/leadercron/internal/config"
	"github.com/leadercron/leadercron/internal/ecsmeta"
	"github.com/leadercron/leadercron/internal/leader"
	"github.com/leadercron/leadercron/internal/logfmt"
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
  pause <job> [-service NAME] [-by NAME] [-reason TEXT]
               pause a job fleet-wide (Consul KV) until resumed
  resume <job> [-service NAME]
               undo pause
  run <job> [-service NAME] [-by NAME]
               ask the leader to run a job once, now
  status [-service NAME] [-json] [-history N]
               the leader, each job's next slot, pause, pending run and history
               (the fleet commands need only CONSUL_HTTP_ADDR and the service)
  version      print the version

Configuration comes from the environment only; see the README.
`

// Version is stamped at build time with -ldflags "-X ...cli.Version=...".
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
	err := runSidecar(ctx, cfg, consul, log)
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
	// logfmt writes durations with their unit ("25s"), not as hclog's
	// bare nanoseconds in JSON.
	return logfmt.Durations(hclog.New(&hclog.LoggerOptions{
		Name:       "leadercron",
		Level:      cfg.LogLevel,
		JSONFormat: cfg.LogJSON,
		Output:     out,
	})).With("id", cfg.ID)
}
