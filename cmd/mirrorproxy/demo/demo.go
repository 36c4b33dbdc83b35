// Package demo is `mirrorproxy demo`: it starts a local RabbitMQ node and a
// mirrorproxy sidecar in front of it (this same binary, as a separate
// process), runs an unchanged amqp091-go client through the sidecar — the
// example from the articles the product was conceived from — and prints what
// happened.
package demo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/urfave/cli/v2"

	"github.com/mirrorproxy/mirrorproxy/testenv"
)

// Command returns the `demo` sub-command.
func Command() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "start a local RabbitMQ and a sidecar, run a client through it, print what happened",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "messages", Value: 10000, Usage: "messages to publish and consume"},
			&cli.BoolFlag{Name: "sidecar-logs", Usage: "show the sidecar's log lines"},
		},
		Action: func(c *cli.Context) error {
			ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
			defer stop()
			return run(ctx, c.App.Writer, c.Int("messages"), c.Bool("sidecar-logs"))
		},
	}
}

func run(ctx context.Context, w io.Writer, n int, sidecarLogs bool) error {
	say := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	t0 := time.Now()

	say("1. Starting a RabbitMQ node (local rabbitmq-server process, random ports)…")
	g, err := testenv.StartGroup(ctx, testenv.Options{Nodes: 1})
	if err != nil {
		return err
	}
	defer func() {
		g.Close()
		say("   broker stopped and its directories removed")
	}()
	node := g.Nodes[0]
	say("   broker %s listening on %s (%.1fs)", node.Name, node.AMQPAddr, time.Since(t0).Seconds())

	say("2. Starting the mirrorproxy sidecar in front of it (a separate process of this binary)…")
	listen, err := freeAddr()
	if err != nil {
		return err
	}
	sidecar, err := startSidecar(ctx, listen, node.AMQPAddr, w, sidecarLogs)
	if err != nil {
		return err
	}
	defer sidecar.stop(say)
	say("   sidecar pid %d: clients connect to %s, it carries them to %s", sidecar.cmd.Process.Pid, listen, node.AMQPAddr)

	say("3. An unchanged amqp091-go client, connected to the sidecar:")
	brokerView := func() {
		say("4. What the broker sees while the client is connected (rabbitmqctl list_connections):")
		out, err := node.Ctl(ctx, "list_connections", "user", "peer_host", "peer_port", "state")
		if err != nil {
			say("   (rabbitmqctl failed: %v)", err)
			return
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			say("   %s", line)
		}
		say("   (the peer is the sidecar's side of its broker connection; the broker authenticated the client's own credentials)")
	}
	if err := client(ctx, "amqp://guest:guest@"+listen+"/", n, say, brokerView); err != nil {
		return err
	}
	say("5. Done in %.1fs.", time.Since(t0).Seconds())
	return nil
}

// client runs the articles' example: a durable direct exchange hello-exch,
// a queue hello-queue declared with x-ha-policy all, persistent publishes
// with routing key hala (with publisher confirms), consumed with manual acks.
func client(ctx context.Context, url string, n int, say func(string, ...any), whileOpen func()) error {
	conn, err := amqp091.Dial(url)
	if err != nil {
		return fmt.Errorf("client: dial the sidecar: %w", err)
	}
	defer conn.Close()
	props := conn.Properties
	say("   connected; the broker says it is %v %v", props["product"], props["version"])
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := ch.ExchangeDeclare("hello-exch", "direct", true, false, false, false, nil); err != nil {
		return err
	}
	if _, err := ch.QueueDeclare("hello-queue", true, false, false, false, amqp091.Table{"x-ha-policy": "all"}); err != nil {
		return err
	}
	if _, err := ch.QueuePurge("hello-queue", false); err != nil {
		return err
	}
	if err := ch.QueueBind("hello-queue", "hala", "hello-exch", false, nil); err != nil {
		return err
	}
	say("   declared exchange hello-exch (direct, durable), queue hello-queue {x-ha-policy: all}, binding hala")

	if err := ch.Confirm(false); err != nil {
		return err
	}
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 256))
	body := make([]byte, 1024)
	start := time.Now()
	inflight, acked := 0, 0
	for i := 0; i < n; i++ {
		for inflight >= 256 {
			c := <-confirms
			inflight--
			if c.Ack {
				acked++
			}
		}
		err := ch.PublishWithContext(ctx, "hello-exch", "hala", false, false, amqp091.Publishing{
			DeliveryMode: amqp091.Persistent, ContentType: "application/octet-stream", Body: body,
		})
		if err != nil {
			return err
		}
		inflight++
	}
	for ; inflight > 0; inflight-- {
		if c := <-confirms; c.Ack {
			acked++
		}
	}
	el := time.Since(start)
	say("   published %d persistent 1 KiB messages with confirms: %d confirmed in %.2fs (%.0f msg/s)", n, acked, el.Seconds(), float64(n)/el.Seconds())

	if err := ch.Qos(256, 0, false); err != nil {
		return err
	}
	deliveries, err := ch.Consume("hello-queue", "", false, false, false, false, nil)
	if err != nil {
		return err
	}
	start = time.Now()
	got := 0
	for got < n {
		select {
		case d, ok := <-deliveries:
			if !ok {
				return errors.New("client: the consumer was cancelled")
			}
			if err := d.Ack(false); err != nil {
				return err
			}
			got++
		case <-time.After(30 * time.Second):
			return fmt.Errorf("client: only %d of %d messages arrived", got, n)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	el = time.Since(start)
	say("   consumed and acked %d messages in %.2fs (%.0f msg/s)", got, el.Seconds(), float64(got)/el.Seconds())
	q, err := ch.QueueDeclarePassive("hello-queue", true, false, false, false, amqp091.Table{"x-ha-policy": "all"})
	if err != nil {
		return err
	}
	say("   hello-queue now holds %d messages", q.Messages)
	whileOpen()
	_, err = ch.QueueDelete("hello-queue", false, false, false)
	if err == nil {
		err = ch.ExchangeDelete("hello-exch", false, false)
	}
	return err
}

type sidecarProc struct {
	cmd  *exec.Cmd
	done chan error
}

func startSidecar(ctx context.Context, listen, upstream string, w io.Writer, showLogs bool) (*sidecarProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "run", "--listen", listen, "--upstream", upstream, "--log-format", "console")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the sidecar: %w", err)
	}
	p := &sidecarProc{cmd: cmd, done: make(chan error, 1)}
	logsDone := make(chan struct{})
	go func() {
		defer close(logsDone)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if showLogs {
				fmt.Fprintf(w, "   sidecar | %s\n", sc.Text())
			}
		}
	}()
	go func() {
		<-logsDone
		p.done <- cmd.Wait()
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", listen, time.Second)
		if err == nil {
			c.Close()
			return p, nil
		}
		select {
		case err := <-p.done:
			return nil, fmt.Errorf("the sidecar exited: %v", err)
		case <-ctx.Done():
			cmd.Process.Kill()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			return nil, fmt.Errorf("the sidecar did not listen on %s within 10s", listen)
		}
	}
}

func (p *sidecarProc) stop(say func(string, ...any)) {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			say("   sidecar stopped: %v", err)
		} else {
			say("   sidecar stopped on SIGTERM (exit 0)")
		}
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		say("   sidecar did not stop on SIGTERM within 15s; killed")
	}
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
