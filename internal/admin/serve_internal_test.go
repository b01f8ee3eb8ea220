package admin

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// TestServeTimeouts runs the server with short timeouts: a handover that
// lasts several write timeouts still gets its answer, a read-only
// endpoint that overruns the write timeout is cut, and a client that
// stalls in its headers is disconnected.
func TestServeTimeouts(t *testing.T) {
	t.Parallel()
	const write = 200 * time.Millisecond
	slow := func() { time.Sleep(3 * write) }
	h := Handler(Endpoints{
		Status: func() Status { slow(); return Status{} },
		Handover: func(context.Context) (HandoverResult, error) {
			slow()
			return HandoverResult{Outcome: "released"}, nil
		},
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, ln, h, hclog.NewNullLogger(), timeouts{readHeader: 100 * time.Millisecond, read: 150 * time.Millisecond, write: write, idle: time.Second})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	base := "http://" + ln.Addr().String()
	hc := &http.Client{Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()

	resp, err := hc.Post(base+"/handover", "", nil)
	if err != nil {
		t.Fatalf("POST /handover lasting 3 write timeouts: %v, want its answer", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "released") {
		t.Errorf("POST /handover: %d %s, want 200 released", resp.StatusCode, b)
	}

	if resp, err := hc.Get(base + "/status"); err == nil {
		resp.Body.Close()
		t.Errorf("GET /status lasting 3 write timeouts answered %d, want the connection cut", resp.StatusCode)
	}

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n"); err != nil { // and no end of headers
		t.Fatal(err)
	}
	start := time.Now()
	_ = conn.SetReadDeadline(start.Add(5 * time.Second))
	if _, err := io.ReadAll(conn); err != nil {
		t.Errorf("a client stalled in its headers was not disconnected: %v after %v", err, time.Since(start))
	}
}

// TestServerLimits: the real server has every timeout, in the order the
// comments on them require.
func TestServerLimits(t *testing.T) {
	t.Parallel()
	to := serverTimeouts
	if to.readHeader <= 0 || to.read < to.readHeader || to.write <= 2*time.Second || to.idle <= 0 {
		t.Errorf("server timeouts %+v: want all set, read >= readHeader, write above /status's 2 s Consul read", to)
	}
}
