package cli

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/admin"
	"github.com/leadercron/leadercron/internal/appclient"
	"github.com/leadercron/leadercron/internal/config"
	"github.com/leadercron/leadercron/internal/leader"
	"github.com/leadercron/leadercron/internal/ledger"
	"github.com/leadercron/leadercron/internal/metrics"
	"github.com/leadercron/leadercron/internal/scheduler"
	"github.com/leadercron/leadercron/internal/sidecar"
)

// ShutdownBudget is the longest a graceful stop takes from the stop
// signal to the exit: the drain timeout (which covers claims and triggers
// still in flight and the drain itself), then the release and the session
// destroy, the history flush and the admin server's shutdown. A platform's
// stop timeout must exceed it.
func ShutdownBudget(cfg config.Config) time.Duration {
	return cfg.DrainTimeout + 2*leader.FinalRequestTimeout + sidecar.HistoryFlushTimeout + admin.ShutdownTimeout
}

// runSidecar builds the sidecar's parts and runs it until ctx ends and the
// shutdown sequence is done. consul is nil in standalone mode.
func runSidecar(ctx context.Context, cfg config.Config, consul *api.Client, log hclog.Logger) error {
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on LEADERCRON_LISTEN %s: %w", cfg.Listen, err)
	}
	var signer *appclient.Signer
	if cfg.TriggerSecret.IsSet() {
		// Load checked the length, the one thing NewSigner refuses.
		if signer, err = appclient.NewSigner(cfg.TriggerSecret.Bytes(), time.Now); err != nil {
			_ = ln.Close()
			return fmt.Errorf("LEADERCRON_TRIGGER_SECRET: %w", err)
		}
	}
	deps, err := buildDeps(cfg, consul, signer, log)
	if err != nil {
		_ = ln.Close()
		return err
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
	return sidecar.New(cfg, deps).Run(ctx, ln)
}

// buildDeps builds the metrics, the app client (signing with signer, if
// any) and the lock backend: the
// Consul elector and ledger, or standalone mode's elector and no ledger.
func buildDeps(cfg config.Config, consul *api.Client, signer *appclient.Signer, log hclog.Logger) (sidecar.Deps, error) {
	jobNames := make([]string, len(cfg.Jobs))
	for i, j := range cfg.Jobs {
		jobNames[i] = j.Name
	}
	m, err := metrics.New(nil, metrics.Options{Version: Version, Jobs: jobNames, DrainTimeout: cfg.DrainTimeout, Runtime: true})
	if err != nil {
		return sidecar.Deps{}, err
	}
	d := sidecar.Deps{
		Metrics: m,
		// No client-wide timeout: every trigger has its own deadline
		// and every drain poll its own timeout.
		AppClient: appclient.New(cfg.AppURL, cfg.ID, appclient.NewHTTPClient(), appclient.WithSigner(signer)),
		Clock:     scheduler.SystemClock{},
		Log:       log,
	}
	if consul == nil {
		log.Warn("standalone mode: always leader, no fleet-wide guarantees", "lock", config.LockNone)
		d.Elector = standaloneElector{leader.NewStandalone(time.Now())}
		return d, nil
	}
	d.Ledger = ledger.New(consul, cfg.KVPrefix)
	d.Elector = consulElector{leader.New(consul, leader.Options{
		Keys:        cfg.Keys(),
		ID:          cfg.ID,
		Service:     cfg.Service,
		SessionName: "leadercron " + cfg.Service + " " + cfg.ID,
		TTL:         cfg.SessionTTL,
		LockDelay:   cfg.LockDelay,
		Metrics:     m,
	}, log.Named("leader"))}
	return d, nil
}

// consulElector and standaloneElector adapt package leader's electors,
// whose lead functions take a *leader.Term, to sidecar.Elector.
type (
	consulElector     struct{ e *leader.Elector }
	standaloneElector struct{ e *leader.Standalone }
)

func (c consulElector) Run(ctx context.Context, lead func(context.Context, sidecar.Term) error) error {
	return c.e.Run(ctx, func(ctx context.Context, t *leader.Term) error { return lead(ctx, t) })
}

func (c standaloneElector) Run(ctx context.Context, lead func(context.Context, sidecar.Term) error) error {
	return c.e.Run(ctx, func(ctx context.Context, t *leader.Term) error { return lead(ctx, t) })
}
