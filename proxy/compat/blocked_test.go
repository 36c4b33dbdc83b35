//go:build unix

package compat

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/mirrorproxy/mirrorproxy/testenv"
)

// memoryAlarm raises and clears RabbitMQ's memory alarm by moving the
// broker's vm_memory_high_watermark. The alarm blocks every publishing
// connection of the broker, so TestBlocked is not parallel: Go runs it
// before the parallel tests start.
type memoryAlarm struct {
	node   *testenv.Node
	normal string
}

func newMemoryAlarm(t *testing.T, node *testenv.Node) *memoryAlarm {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := node.Ctl(ctx, "eval", "vm_memory_monitor:get_vm_memory_high_watermark().")
	if err != nil {
		t.Fatalf("reading the memory watermark: %v", err)
	}
	a := &memoryAlarm{node: node, normal: strings.TrimSpace(out)}
	if _, err := fmt.Sscanf(a.normal, "%g", new(float64)); err != nil {
		t.Fatalf("the memory watermark %q is not a number (an absolute watermark?): %v", a.normal, err)
	}
	t.Cleanup(func() {
		if err := a.set(a.normal); err != nil {
			t.Errorf("restoring the memory watermark: %v", err)
		}
	})
	return a
}

func (a *memoryAlarm) set(watermark string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := a.node.Ctl(ctx, "set_vm_memory_high_watermark", watermark)
	return err
}

// on sets a watermark far below what the broker uses: the alarm goes off
// at once.
func (a *memoryAlarm) on() error { return a.set("0.000001") }

func (a *memoryAlarm) off() error { return a.set(a.normal) }

// blockedSteps are the steps every blocked transcript must have.
var blockedSteps = []string{"connect", "ready", "blocked", "unblocked", "get", "queue-delete-ok", "connection-close-ok"}

// TestBlocked checks connection.blocked / connection.unblocked: the client
// announces the capability, publishes during a memory alarm, is blocked,
// and is unblocked when the alarm clears; the message then arrives. Each
// rabbitmqctl call costs a second or two, so the legs are direct and proxy
// only (no direct-again).
func TestBlocked(t *testing.T) {
	b := needBroker(t)
	alarm := newMemoryAlarm(t, b)
	t.Run("go", func(t *testing.T) {
		runLegs(t, legs(t, false), "go-blocked", blockedSteps, func(t *testing.T, l leg, prefix string) transcript {
			s := &goScenario{url: "amqp://guest:guest@" + l.addr + "/", prefix: prefix}
			return s.runBlocked(t, alarm)
		})
	})
	t.Run("pika", func(t *testing.T) {
		needPika(t)
		runLegs(t, legs(t, false), "pika-blocked", blockedSteps, func(t *testing.T, l leg, prefix string) transcript {
			url := "amqp://guest:guest@" + l.addr + "/%2F"
			raised := false
			tr := runInteractive(t, prefix, func(step string) (string, error) {
				switch step {
				case "ready":
					raised = true
					return "alarm-on", alarm.on()
				case "blocked":
					raised = false
					return "alarm-off", alarm.off()
				}
				return "", nil
			}, debianPython, "testdata/pika_scenario.py", "--url", url, "--prefix", prefix, "--steps", "blocked")
			if raised { // the script stopped while blocked
				if err := alarm.off(); err != nil {
					t.Errorf("clearing the memory alarm: %v", err)
				}
			}
			return tr
		})
	})
}

func (s *goScenario) runBlocked(t *testing.T, alarm *memoryAlarm) transcript {
	err := s.connect()
	if err == nil {
		err = s.blocked(alarm)
	}
	if err != nil {
		s.emit("error", "during", "blocked", "error", err.Error())
		if err := alarm.off(); err != nil {
			t.Errorf("clearing the memory alarm: %v", err)
		}
	}
	if s.conn != nil && !s.conn.IsClosed() {
		s.conn.Close()
	}
	tr, err := parseTranscript([]byte(strings.Join(s.lines, "\n")), s.prefix)
	if err != nil {
		t.Fatalf("the Go scenario's own transcript: %v", err)
	}
	return tr
}

func (s *goScenario) blocked(alarm *memoryAlarm) error {
	blockings := s.conn.NotifyBlocked(make(chan amqp091.Blocking, 2))
	ch, err := s.conn.Channel()
	if err != nil {
		return err
	}
	if err := ch.Confirm(false); err != nil {
		return err
	}
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 1))
	if _, err := ch.QueueDeclare(s.q("blocked"), false, false, false, false, nil); err != nil {
		return err
	}
	s.emit("ready")
	if err := alarm.on(); err != nil {
		return fmt.Errorf("raising the memory alarm: %w", err)
	}
	if err := ch.Publish("", s.q("blocked"), false, false, amqp091.Publishing{Body: []byte("while-blocked")}); err != nil {
		return err
	}
	bl, err := recv(blockings, "connection.blocked")
	if err != nil {
		return err
	}
	s.emit("blocked", "reason", bl.Reason)
	s.expect(bl.Active, "connection.blocked comes first")
	if err := alarm.off(); err != nil {
		return fmt.Errorf("clearing the memory alarm: %w", err)
	}
	ub, err := recv(blockings, "connection.unblocked")
	if err != nil {
		return err
	}
	s.emit("unblocked", "active", ub.Active)
	s.expect(!ub.Active, "connection.unblocked follows")
	if err := s.recvConfirmInto(confirms); err != nil {
		return err
	}
	d, err := pollGet(ch, s.q("blocked"))
	if err != nil {
		return err
	}
	s.emitDelivery("get", d, true)
	if err := ch.Ack(d.DeliveryTag, false); err != nil {
		return err
	}
	n, err := ch.QueueDelete(s.q("blocked"), false, false, false)
	if err != nil {
		return err
	}
	s.emit("queue-delete-ok", "messages", n)
	if err := ch.Close(); err != nil {
		return err
	}
	if err := s.conn.Close(); err != nil {
		return err
	}
	s.emit("connection-close-ok")
	return nil
}

func (s *goScenario) recvConfirmInto(c <-chan amqp091.Confirmation) error {
	conf, err := recv(c, "the confirm of the publish made while blocked")
	if err != nil {
		return err
	}
	s.emit("confirm", "delivery_tag", conf.DeliveryTag, "ack", conf.Ack)
	s.expect(conf.Ack, "the broker acks the publish made while blocked")
	return nil
}

// runInteractive runs a client script that takes cues on stdin: for each
// transcript line it prints, react(step) may do something (raise an alarm)
// and answer a line for the script's stdin. The lines make the transcript.
func runInteractive(t *testing.T, prefix string, react func(step string) (string, error), name string, args ...string) transcript {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir(), "PYTHONDONTWRITEBYTECODE=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", args[0], err)
	}
	var out bytes.Buffer
	sc := bufio.NewScanner(io.TeeReader(stdout, &out))
	for sc.Scan() {
		var v struct{ Step string }
		if json.Unmarshal(sc.Bytes(), &v) != nil {
			continue // parseTranscript reports it
		}
		reply, err := react(v.Step)
		if err != nil {
			t.Errorf("reacting to %q: %v", v.Step, err)
		}
		if reply != "" {
			if _, err := io.WriteString(stdin, reply+"\n"); err != nil {
				t.Errorf("writing %q to the script: %v", reply, err)
			}
		}
	}
	stdin.Close()
	err = cmd.Wait()
	tr, perr := parseTranscript(out.Bytes(), prefix)
	if perr != nil {
		t.Errorf("%s: %v", args[0], perr)
	}
	if err != nil {
		t.Errorf("%s: %v (timeout: %v)\nstderr:\n%s", args[0], err, ctx.Err() != nil, truncate(stderr.String(), 4000))
	}
	return tr
}
