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
