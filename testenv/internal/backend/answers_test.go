package backend

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/mirrorproxy/mirrorproxy/proxy"
	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// TestAmqpAnswersSidecarWithoutBroker: a sidecar whose broker cannot be
// reached answers the protocol header (connection.start, then a 320), but
// that is not a broker answering; a broker's connection.start is.
func TestAmqpAnswersSidecarWithoutBroker(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	upstream := dead.Addr().String()
	dead.Close()
	srv, err := proxy.NewServer(proxy.Options{Upstream: upstream, DialTimeout: time.Second, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		srv.Close()
		if err := <-served; !errors.Is(err, proxy.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	}()
	if AMQPAnswers(context.Background(), ln.Addr().String(), "") {
		t.Error("a sidecar without its broker counted as an AMQP answer")
	}

	// A broker's start: product RabbitMQ.
	fake, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	go func() {
		c, err := fake.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		hdr := make([]byte, 8)
		if _, err := readFull(c, hdr); err != nil {
			return
		}
		_, _ = c.Write(amqp.AppendMethodFrame(nil, 0, &amqp.ConnectionStart{VersionMinor: 9,
			ServerProperties: amqp.Table{{Key: "product", Value: "RabbitMQ"}}, Mechanisms: "PLAIN", Locales: "en_US"}))
	}()
	if !AMQPAnswers(context.Background(), fake.Addr().String(), "") {
		t.Error("a broker's connection.start did not count as an answer")
	}
}
