package proxy_test

import (
	"io"
	"testing"
	"time"

	"github.com/mirrorproxy/mirrorproxy/proxy"
	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// TestStatsCountSessionsTrafficAndBadInput: Server.Stats counts the
// sessions a client opened, the frames and bytes they carried each way,
// and the sessions closed for bad input by their reply code.
func TestStatsCountSessionsTrafficAndBadInput(t *testing.T) {
	p := startProxy(t, proxy.Options{})
	if st := p.Stats(); st.ClientsTotal != 0 || st.ClientsOpen != 0 || st.ClientTraffic != (proxy.Traffic{}) {
		t.Fatalf("a new server's stats = %+v, want zero", st)
	}
	c := p.dial(t)
	healthy(t, c) // a declare, a publish and gets: frames both ways
	st := p.Stats()
	if st.ClientsOpen != 1 || st.ClientsTotal != 1 || st.LegsOpen != 0 || st.LegsTotal != 0 {
		t.Errorf("with one client open: open %d total %d legs %d/%d; want 1, 1, 0, 0", st.ClientsOpen, st.ClientsTotal, st.LegsOpen, st.LegsTotal)
	}
	tr := st.ClientTraffic
	// The handshake alone is 3 frames from the client (start-ok, tune-ok,
	// open) and 3 to it; a frame is at least 8 bytes.
	if tr.FramesFromClient < 6 || tr.FramesToClient < 6 || tr.BytesFromClient < 8*tr.FramesFromClient || tr.BytesToClient < 8*tr.FramesToClient {
		t.Errorf("traffic after a round trip = %+v; want at least 6 frames of 8 bytes each way", tr)
	}
	c.Close()
	eventually(t, 5*time.Second, "the session ends", func() bool { return p.Stats().ClientsOpen == 0 })
	after := p.Stats()
	if after.ClientsTotal != 1 || after.ClientTraffic.FramesFromClient < tr.FramesFromClient || after.ClientTraffic.BytesToClient < tr.BytesToClient {
		t.Errorf("after the close: %+v; the ended session's counts must stay (were %+v)", after, tr)
	}

	// Bad input: a heartbeat on channel 1 is 505, an unknown frame type 501.
	for _, bad := range [][]byte{
		{amqp.FrameHeartbeat, 0, 1, 0, 0, 0, 0, amqp.FrameEnd},
		{9, 0, 1, 0, 0, 0, 1, 0, amqp.FrameEnd},
	} {
		rc := dialRaw(t, p.Addr)
		rc.open(0, nil)
		rc.send(bad)
		if cl := rc.closed(); cl == nil {
			t.Fatal("no connection.close for bad input")
		}
	}
	// Not AMQP at all.
	rc := dialRaw(t, p.Addr)
	rc.send([]byte("GET / HTTP/1.1\r\n\r\n"))
	_, _ = io.ReadAll(rc.conn)
	eventually(t, 5*time.Second, "the bad sessions are counted", func() bool {
		b := p.Stats().BadInput
		return b["505"] == 1 && b["501"] == 1 && b[proxy.BadInputProtocolHeader] == 1
	})
	if st := p.Stats(); st.ClientsTotal != 4 || len(st.BadInput) != 3 {
		t.Errorf("after 3 bad clients: total %d, bad input %v; want 4 sessions and 3 kinds", st.ClientsTotal, st.BadInput)
	}
}
