package bench

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// echoServer answers every connection by echoing it until EOF, then closes.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

func TestHopForwardsBothWaysAndHalfCloses(t *testing.T) {
	for _, userSpace := range []bool{false, true} {
		h, err := StartHop(echoServer(t), userSpace, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		c, err := net.Dial("tcp", h.Addr())
		if err != nil {
			t.Fatal(err)
		}
		msg := bytes.Repeat([]byte("mirrorproxy"), 20000) // larger than one buffer
		var wg sync.WaitGroup
		wg.Add(1)
		var got []byte
		var rerr error
		go func() {
			defer wg.Done()
			got, rerr = io.ReadAll(c)
		}()
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		// Half-close: the echo server sees EOF, closes, and the hop must pass
		// that back so ReadAll ends.
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		c.Close()
		if rerr != nil || !bytes.Equal(got, msg) {
			t.Errorf("userSpace=%v: echoed %d bytes (err %v), sent %d", userSpace, len(got), rerr, len(msg))
		}
		if err := h.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}
}

func TestHopCloseEndsOpenConnections(t *testing.T) {
	h, err := StartHop(echoServer(t), false, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", h.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A round trip proves the upstream side is connected before Close.
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var ne net.Error
	if _, err := c.Read(b); err == nil {
		t.Fatal("client connection still delivers data after Close")
	} else if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("client connection not closed by Close: read timed out")
	}
	if _, err := net.DialTimeout("tcp", h.Addr(), time.Second); err == nil {
		t.Errorf("hop still accepts after Close")
	}
}

func TestHopDialFailureClosesClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // nothing listens there now
	h, err := StartHop(dead, false, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	c, err := net.Dial("tcp", h.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var ne net.Error
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read succeeded")
	} else if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("client not closed after the upstream dial failed")
	}
}
