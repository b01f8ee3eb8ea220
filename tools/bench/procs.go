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
	"time"
)

// binaries returns the leadercron and naive binaries to benchmark, and
// says where the leadercron one comes from. The naive leader is always
// built from the tree; leadercron too, unless lcBin names a prebuilt one.
func binaries(ctx context.Context, root, dir, lcBin string) (lc, nv, origin string, err error) {
	pkgs := []string{"./tools/naive/cmd/naive-leader"}
	if lcBin == "" {
		pkgs = append(pkgs, ".")
	} else {
		if lc, err = checkBinary(lcBin); err != nil {
			return "", "", "", err
		}
		v, err := binaryVersion(ctx, lc)
		if err != nil {
			return "", "", "", err
		}
		origin = "prebuilt " + lc + " (`" + v + "`)"
	}
	logf("building %s (CGO_ENABLED=0 -trimpath -ldflags '-s -w')", strings.Join(pkgs, " and "))
	built, err := buildBinaries(ctx, root, dir, pkgs)
	if err != nil {
		return "", "", "", err
	}
	nv = built[pkgs[0]]
	if lcBin == "" {
		lc = built["."]
		v, err := binaryVersion(ctx, lc)
		if err != nil {
			return "", "", "", err
		}
		origin = "built from the tree, " + treeRevision(root) + " (`" + v + "`)"
	}
	return lc, nv, origin, nil
}

// checkBinary says why path cannot be the leadercron binary to measure,
// or returns it made absolute.
func checkBinary(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("-leadercron-bin %q: %w", path, err)
	}
	st, err := os.Stat(abs)
	switch {
	case err != nil:
		return "", fmt.Errorf("-leadercron-bin %q: %w", path, err)
	case st.IsDir():
		return "", fmt.Errorf("-leadercron-bin %q: a directory, not a regular file; give the path of a leadercron binary", path)
	case !st.Mode().IsRegular():
		return "", fmt.Errorf("-leadercron-bin %q: not a regular file (mode %s); give the path of a leadercron binary", path, st.Mode())
	case st.Mode().Perm()&0o111 == 0:
		return "", fmt.Errorf("-leadercron-bin %q: not executable (mode %s); chmod +x it", path, st.Mode().Perm())
	}
	return abs, nil
}

// treeRevision names the tree's commit, and says when the tree differs
// from it.
func treeRevision(root string) string {
	rev, err := exec.Command("git", "-C", root, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "commit unknown (not a git checkout?)"
	}
	s := "commit " + strings.TrimSpace(string(rev))
	if st, err := exec.Command("git", "-C", root, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(bytes.TrimSpace(st)) > 0 {
		s += " with uncommitted changes"
	}
	return s
}

// binaryVersion is what `leadercron version` prints, or says why there
// is nothing (a build that predates the command, say). It fails only when
// bin cannot be run at all (not a binary for this machine, say), so that
// a wrong -leadercron-bin stops the bench before the first scenario.
func binaryVersion(ctx context.Context, bin string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "version").Output()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit) || ctx.Err() != nil:
		return "version: unknown, `version` " + err.Error(), nil
	case err != nil:
		return "", fmt.Errorf("leadercron binary %s does not run: %w", bin, err)
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line, nil
}

// buildBinaries builds the packages (module paths relative to root) with
// release flags into dir, and returns each one's binary by package.
func buildBinaries(ctx context.Context, root, dir string, pkgs []string) (map[string]string, error) {
	out := map[string]string{}
	for _, pkg := range pkgs {
		name := filepath.Base(pkg)
		if pkg == "." {
			name = "leadercron"
		}
		bin := filepath.Join(dir, name)
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if msg, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build %s: %w: %s", pkg, err, msg)
		}
		out[pkg] = bin
	}
	return out, nil
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
