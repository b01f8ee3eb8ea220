package e2e

import (
	"net"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/leadercron/leadercron/internal/testkit"
)

// TestHandoverRefusedFromOutside runs the built sidecar (standalone, so no
// Consul is needed) with its admin port on every address and no admin
// token: an unauthenticated POST /handover from this host's non-loopback
// address is refused with 401 and changes nothing (the sidecar keeps
// leading and its triggers keep firing), while GET /healthz stays open;
// the same request from loopback hands over.
func TestHandoverRefusedFromOutside(t *testing.T) {
	outside := outsideIP(t)
	ports, err := testkit.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ports[0])
	h := newHistory()
	app := testkit.StartApp(t, "app-a", h)
	s := startSidecar(t, "a", map[string]string{
		"LEADERCRON_LOCK":     "none",
		"LEADERCRON_APP_URL":  app.URL,
		"LEADERCRON_LISTEN":   "0.0.0.0:" + port,
		"LEADERCRON_JOB_TICK": "* * * * * *",
	})
	s.Listen = "127.0.0.1:" + port // statusOf and postHandover go through loopback
	h.WaitFor(t, 20*time.Second, "a trigger", func(evs []event) bool { return len(filter(evs, "trigger")) >= 1 })

	// A client whose connections come from the host's outside address.
	fromOutside := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{
		LocalAddr: &net.TCPAddr{IP: net.ParseIP(outside)}}).DialContext}}
	base := "http://" + net.JoinHostPort(outside, port)
	resp, err := fromOutside.Post(base+"/handover", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("POST /handover from %s = %d, want 401", outside, resp.StatusCode)
	}
	if resp, err := fromOutside.Get(base + "/healthz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("GET /healthz from %s = %v, %v; want 200 (probes stay open)", outside, resp, err)
	} else {
		resp.Body.Close()
	}
	if st := statusOf(t, s); st["handed_over"] == true || !isLeader(st) {
		t.Errorf("after a refused handover: %v; want still leading, not handed over", st)
	}
	since := time.Now()
	h.WaitFor(t, 10*time.Second, "triggers after the refused handover", func(evs []event) bool {
		for _, e := range filter(evs, "trigger") {
			if e.At.After(since) {
				return true
			}
		}
		return false
	})
	if res, _ := postHandover(t, s); res["outcome"] != "released" {
		t.Errorf("POST /handover from loopback = %v, want released", res)
	}
}

// outsideIP returns an IPv4 address of this host that is not loopback.
// With CI=true a host without one fails the test rather than skip it.
func outsideIP(t *testing.T) string {
	t.Helper()
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this host has no non-loopback IPv4 address to call the admin port from")
	}
	t.Skip("no non-loopback IPv4 address on this host")
	return ""
}
