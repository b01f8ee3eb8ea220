// Command leadercron is a sidecar that runs an app's scheduled jobs on
// exactly one replica of a fleet: the sidecars elect a leader through a
// Consul session lock, and only the leader triggers its own app over
// localhost HTTP. See README.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	// The IANA time zone database, embedded (about 450 KB), so that a
	// job's tz= resolves in any image, FROM scratch included, and
	// leadercron validate on a workstation agrees with the sidecar in the
	// container. The time package uses it only when the system has no
	// zoneinfo, so a system database, when present, is still preferred.
	_ "time/tzdata"

	"github.com/leadercron/leadercron/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// After the first signal, restore the default handlers: a second
	// signal kills the process at once.
	context.AfterFunc(ctx, stop)
	os.Exit(cli.Main(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
}
