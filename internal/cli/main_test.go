package cli_test

import (
	"context"
	"os"
	"testing"
	_ "time/tzdata" // as in main.go

	"github.com/leadercron/leadercron/internal/cli"
)

// TestMain doubles as the leadercron binary: started with argv[0]
// "leadercron", the test binary runs cli.Main with its own process
// environment, as main.go does, so that a test can run a command the way a
// shell does, with nothing in the environment but what the test sets.
func TestMain(m *testing.M) {
	if os.Args[0] == "leadercron" {
		os.Exit(cli.Main(context.Background(), os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}
