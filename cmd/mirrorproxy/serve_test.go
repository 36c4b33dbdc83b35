package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/proxy"
)

// fakeServer stands in for *proxy.Server: Serve blocks until Shutdown or
// Close; Shutdown does what the test's shutdown func says.
type fakeServer struct {
	stop     chan struct{} // closed to make Serve return ErrServerClosed
	stopOnce sync.Once
	serveErr error // when set, Serve returns it at once

	shutdown     func(ctx context.Context, closed <-chan struct{}) error
	closed       chan struct{} // closed by Close
	closeOnce    sync.Once
	shutdownCtx  chan context.Context
	shutdownDone chan struct{}
}

func newFake(shutdown func(ctx context.Context, closed <-chan struct{}) error) *fakeServer {
	return &fakeServer{
		stop:         make(chan struct{}),
		shutdown:     shutdown,
		closed:       make(chan struct{}),
		shutdownCtx:  make(chan context.Context, 1),
		shutdownDone: make(chan struct{}),
	}
}

func (f *fakeServer) Serve(ln net.Listener) error {
	if f.serveErr != nil {
		return f.serveErr
	}
	<-f.stop
	return proxy.ErrServerClosed
}

func (f *fakeServer) Shutdown(ctx context.Context) error {
	defer close(f.shutdownDone)
	f.stopOnce.Do(func() { close(f.stop) }) // stop accepting
	f.shutdownCtx <- ctx
	return f.shutdown(ctx, f.closed)
}

func (f *fakeServer) Close() error {
	f.closeOnce.Do(func() { close(f.closed) })
	f.stopOnce.Do(func() { close(f.stop) })
	return nil
}

func (f *fakeServer) wasClosed() bool {
	select {
	case <-f.closed:
		return true
	default:
		return false
	}
}

// serveAsync runs serve in a goroutine owned by the test and returns its
// result channel and log buffer.
func serveAsync(t *testing.T, srv server, grace time.Duration, signals chan os.Signal) (<-chan error, *lockedBuffer) {
	t.Helper()
	logs := &lockedBuffer{}
	done := make(chan error, 1)
	go func() { done <- serve(zerolog.New(logs), srv, nil, grace, signals) }()
	return done, logs
}

func waitResult(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not return")
		return nil
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestServeCleanShutdown(t *testing.T) {
	f := newFake(func(ctx context.Context, _ <-chan struct{}) error { return nil })
	signals := make(chan os.Signal, 3)
	done, logs := serveAsync(t, f, 30*time.Second, signals)
	signals <- syscall.SIGTERM
	if err := waitResult(t, done); err != nil {
		t.Fatalf("serve: %v", err)
	}
	ctx := <-f.shutdownCtx
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > 30*time.Second || time.Until(dl) < 20*time.Second {
		t.Errorf("Shutdown's context deadline %v is not the 30s grace", dl)
	}
	if f.wasClosed() {
		t.Error("Close called on a clean shutdown")
	}
	if l := logs.String(); !strings.Contains(l, `"signal":"terminated"`) || !strings.Contains(l, `"message":"stopped"`) {
		t.Errorf("logs:\n%s", l)
	}
}

func TestServeGraceExpires(t *testing.T) {
	// The server waits for sessions until the context ends, then closes them
	// (with 320) and reports the context's error: still a clean exit.
	f := newFake(func(ctx context.Context, _ <-chan struct{}) error {
		<-ctx.Done()
		return ctx.Err()
	})
	signals := make(chan os.Signal, 3)
	done, logs := serveAsync(t, f, 50*time.Millisecond, signals)
	signals <- os.Interrupt
	if err := waitResult(t, done); err != nil {
		t.Fatalf("serve: %v", err)
	}
	if l := logs.String(); !strings.Contains(l, "grace period over") {
		t.Errorf("logs:\n%s", l)
	}
}

func TestServeSecondSignalForcesClose(t *testing.T) {
	f := newFake(func(ctx context.Context, closed <-chan struct{}) error {
		<-closed // sessions only end when the server is closed
		return ctx.Err()
	})
	signals := make(chan os.Signal, 3)
	done, logs := serveAsync(t, f, time.Hour, signals)
	signals <- syscall.SIGTERM
	<-f.shutdownCtx // shutdown has begun
	signals <- syscall.SIGTERM
	if err := waitResult(t, done); !errors.Is(err, errForced) {
		t.Fatalf("serve: %v, want errForced", err)
	}
	if !f.wasClosed() {
		t.Error("the second signal did not Close the server")
	}
	if l := logs.String(); !strings.Contains(l, "second signal") {
		t.Errorf("logs:\n%s", l)
	}
}

func TestServeThirdSignalStopsWaiting(t *testing.T) {
	release := make(chan struct{})
	f := newFake(func(ctx context.Context, _ <-chan struct{}) error {
		<-release // a server that hangs even after Close
		return nil
	})
	signals := make(chan os.Signal, 3)
	done, _ := serveAsync(t, f, time.Hour, signals)
	signals <- syscall.SIGTERM
	<-f.shutdownCtx
	signals <- syscall.SIGTERM
	signals <- syscall.SIGTERM
	if err := waitResult(t, done); !errors.Is(err, errForced) {
		t.Fatalf("serve: %v, want errForced", err)
	}
	close(release) // let the hung Shutdown return, so no goroutine outlives the test
	<-f.shutdownDone
}

func TestServeFailsWithoutSignal(t *testing.T) {
	f := newFake(nil)
	f.serveErr = errors.New("accept: too many open files")
	done, logs := serveAsync(t, f, time.Second, make(chan os.Signal))
	err := waitResult(t, done)
	if err == nil || !strings.Contains(err.Error(), "too many open files") {
		t.Fatalf("serve: %v", err)
	}
	if !f.wasClosed() {
		t.Error("server not closed after Serve failed")
	}
	if l := logs.String(); !strings.Contains(l, "server stopped unexpectedly") {
		t.Errorf("logs:\n%s", l)
	}
}

func TestServeShutdownError(t *testing.T) {
	f := newFake(func(context.Context, <-chan struct{}) error { return errors.New("broker link stuck") })
	signals := make(chan os.Signal, 3)
	done, _ := serveAsync(t, f, time.Second, signals)
	signals <- syscall.SIGTERM
	if err := waitResult(t, done); err == nil || !strings.Contains(err.Error(), "broker link stuck") {
		t.Fatalf("serve: %v, want the shutdown error", err)
	}
}
