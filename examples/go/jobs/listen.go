package jobs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// ErrNotLoopback is returned (wrapped) by Listen when it refuses an
// address that is not a loopback address for a Handler without Secrets.
var ErrNotLoopback = errors.New("not a loopback address, and no secret is configured to authenticate the sidecar")

// Listen announces on the TCP address addr for h: the private trigger
// listener, separate from the app's public port, on which the sidecar
// sends POST /jobs/{name} and POST /drain. Serve h on it with an
// http.Server of its own.
//
// If h has no Secrets, addr must be a loopback address, such as
// "127.0.0.1:8081", "[::1]:8081" or "localhost:8081"; any other one,
// ":8081" and "0.0.0.0:8081" included, is refused with an error wrapping
// ErrNotLoopback (h would answer 403 to every peer but a local one
// anyway). The sidecar shares the app's network namespace (a Kubernetes
// pod, an ECS task in awsvpc mode) and reaches it on 127.0.0.1. If h has
// Secrets, any address is accepted.
func Listen(addr string, h *Handler) (net.Listener, error) {
	if h == nil {
		panic("jobs: Listen with a nil Handler")
	}
	if len(h.keys) > 0 {
		return net.Listen("tcp", addr)
	}
	refuse := fmt.Errorf("jobs: refusing to serve unauthenticated triggers on %q: %w; "+
		"listen on 127.0.0.1 (the sidecar shares the app's network namespace) or configure a secret", addr, ErrNotLoopback)
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("jobs: trigger listener address: %w", err)
	}
	if host == "" {
		return nil, refuse
	}
	if ip, err := netip.ParseAddr(host); err == nil && !ip.WithZone("").Unmap().IsLoopback() {
		return nil, refuse
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	// A host name is accepted if it resolved to a loopback address.
	if ta, ok := ln.Addr().(*net.TCPAddr); !ok || !ta.IP.IsLoopback() {
		ln.Close()
		return nil, refuse
	}
	return ln, nil
}
