package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// buildBinaries builds leadercron and the naive leader with release flags
// into dir, and returns their paths.
func buildBinaries(ctx context.Context, root, dir string) (lc, nv string, err error) {
	lc, nv = filepath.Join(dir, "leadercron"), filepath.Join(dir, "naive-leader")
	for _, b := range []struct{ out, pkg string }{{lc, "."}, {nv, "./tools/naive/cmd/naive-leader"}} {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", b.out, b.pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("build %s: %w: %s", b.pkg, err, out)
		}
	}
	return lc, nv, nil
}

// usage is what /proc says about a process.
type usage struct {
	rssKB int64
	ticks int64 // utime + stime, in clock ticks
}

// clockTicks is USER_HZ, which Linux fixes at 100 for /proc/<pid>/stat.
const clockTicks = 100

func readUsage(pid int) (usage, error) {
	var u usage
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, fmt.Errorf("read stat: %w", err)
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(st, ')')
	if i < 0 {
		return u, errors.New("read stat: no command name")
	}
	f := strings.Fields(string(st[i+1:]))
	if len(f) < 13 {
		return u, errors.New("read stat: too few fields")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)  // field 14: utime
	stt, _ := strconv.ParseInt(f[12], 10, 64) // field 15: stime
	u.ticks = ut + stt
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, fmt.Errorf("read status: %w", err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			v := strings.Fields(rest)
			if len(v) > 0 {
				u.rssKB, _ = strconv.ParseInt(v[0], 10, 64)
			}
		}
	}
	return u, nil
}
