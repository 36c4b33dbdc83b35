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
	"sync"
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
	mu     sync.Mutex
	raised bool
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
		a.mu.Lock()
		raised := a.raised
		a.mu.Unlock()
		if raised {
			if err := a.off(); err != nil {
				t.Errorf("restoring the memory watermark: %v", err)
			}
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
func (a *memoryAlarm) on() error {
	a.mu.Lock()
	a.raised = true
	a.mu.Unlock()
	return a.set("0.000001")
}

func (a *memoryAlarm) off() error {
	err := a.set(a.normal)
	if err == nil {
		a.mu.Lock()
		a.raised = false
		a.mu.Unlock()
	}
	return err
}

// blockedSteps are the steps every blocked transcript must have.
var blockedSteps = []string{"connect", "ready", "blocked", "unblocked", "get", "queue-delete-ok", "connection-close-ok"}

// barrier lets n runs meet: the last to arrive runs action, and every
// arrival returns its result. A run that gives up leaves instead, so the
// others do not wait for it.
type barrier struct {
	mu      sync.Mutex
	n       int
	arrived int
	action  func() error
	err     error
	done    chan struct{}
}

func newBarrier(n int, action func() error) *barrier {
	return &barrier{n: n, action: action, done: make(chan struct{})}
}

// arrive counts this run in and waits (at most waitFor) for the others.
func (b *barrier) arrive() error {
	b.count(true)
	timer := time.NewTimer(waitFor)
	defer timer.Stop()
	select {
	case <-b.done:
		return b.err
	case <-timer.C:
		return fmt.Errorf("waited %v for the other runs at the barrier", waitFor)
	}
}

// leave takes this run out without waiting.
func (b *barrier) leave() { b.count(false) }

func (b *barrier) count(arrive bool) {
	b.mu.Lock()
	if arrive {
		b.arrived++
	} else {
		b.n--
	}
	var action func() error
	if b.arrived == b.n && b.action != nil {
		action, b.action = b.action, nil
	}
	b.mu.Unlock()
	if action != nil {
		b.err = action()
		close(b.done)
	}
}

// alarmCues are one run's two meeting points: raise the alarm when every
// run is ready, clear it when every run is blocked.
type alarmCues struct {
	raise, clear *barrier
	raised       bool
	cleared      bool
}

func (c *alarmCues) on() error {
	c.raised = true
	return c.raise.arrive()
}

func (c *alarmCues) off() error {
	c.cleared = true
	return c.clear.arrive()
}

// finish leaves the barriers the run did not reach.
func (c *alarmCues) finish() {
	if !c.raised {
		c.raise.leave()
	}
	if !c.cleared {
		c.clear.leave()
	}
}

// TestBlocked checks connection.blocked / connection.unblocked: the client
// announces the capability, publishes during a memory alarm, is blocked,
// and is unblocked when the alarm clears; the message then arrives.
//
// A rabbitmqctl call costs a second or more, so all four runs (amqp091-go
// and pika, each direct and through the proxy) share one alarm: they run
// at once, the alarm goes on when all are ready and off when all are
// blocked. Each client's proxied transcript must equal its direct one.
func TestBlocked(t *testing.T) {
	b := needBroker(t)
	alarm := newMemoryAlarm(t, b)
	direct := leg{name: "direct", addr: b.AMQPAddr}
	proxied := proxyLeg(t, b.AMQPAddr)

	type run struct {
		client string
		l      leg
		fn     func(cues *alarmCues, prefix string) (transcript, []string)
		tr     transcript
		errs   []string
	}
	goRun := func(l leg) *run {
		return &run{client: "go", l: l, fn: func(cues *alarmCues, prefix string) (transcript, []string) {
			s := &goScenario{url: "amqp://guest:guest@" + l.addr + "/", prefix: prefix}
			return s.runBlocked(cues)
		}}
	}
	pikaRun := func(l leg) *run {
		return &run{client: "pika", l: l, fn: func(cues *alarmCues, prefix string) (transcript, []string) {
			url := "amqp://guest:guest@" + l.addr + "/%2F"
			return runInteractive(t.TempDir(), prefix, func(step string) (string, error) {
				switch step {
				case "ready":
					return "alarm-on", cues.on()
				case "blocked":
					return "alarm-off", cues.off()
				}
				return "", nil
			}, debianPython, "testdata/pika_scenario.py", "--url", url, "--prefix", prefix, "--steps", "blocked")
		}}
	}
	runs := []*run{goRun(direct), goRun(proxied)}
	if v, err := checkPika(); err != nil {
		t.Error(err)
	} else {
		t.Logf("pika %s", v)
		runs = append(runs, pikaRun(direct), pikaRun(proxied))
	}

	raise := newBarrier(len(runs), alarm.on)
	lower := newBarrier(len(runs), alarm.off)
	accepted := proxied.proxy.accepted()
	var wg sync.WaitGroup
	for _, r := range runs {
		wg.Go(func() {
			cues := &alarmCues{raise: raise, clear: lower}
			defer cues.finish()
			r.tr, r.errs = r.fn(cues, uniquePrefix(r.client+"-blocked", r.l.name))
		})
	}
	wg.Wait()
	if proxied.proxy.accepted() == accepted {
		t.Errorf("no connection went through the proxy")
	}

	byClient := map[string][]*run{}
	for _, r := range runs {
		name := r.client + "/" + r.l.name
		for _, e := range r.errs {
			t.Errorf("%s: %s", name, e)
		}
		requireSteps(t, name, r.tr, blockedSteps...)
		forbidSteps(t, name, r.tr, "check-failed", "error")
		if t.Failed() || testing.Verbose() {
			t.Logf("%s transcript (%d lines):\n%s", name, len(r.tr), joinLines(r.tr))
		}
		byClient[r.client] = append(byClient[r.client], r)
	}
	for client, rs := range byClient {
		compareTranscripts(t, client+"-blocked", rs[0].l.name, rs[0].tr, rs[1].l.name, rs[1].tr)
	}
	if t.Failed() {
		t.Logf("proxy log (last lines):\n%s", proxied.proxy.logs.tail(60))
	}
}

// runBlocked runs the blocked scenario; it returns the transcript and
// problems outside it (it runs on its own goroutine: no t.Fatal).
func (s *goScenario) runBlocked(cues *alarmCues) (transcript, []string) {
	var problems []string
	err := s.connect()
	if err == nil {
		err = s.blocked(cues)
	}
	if err != nil {
		s.emit("error", "during", "blocked", "error", err.Error())
	}
	if s.conn != nil && !s.conn.IsClosed() {
		s.conn.Close()
	}
	tr, err := parseTranscript([]byte(strings.Join(s.lines, "\n")), s.prefix)
	if err != nil {
		problems = append(problems, fmt.Sprintf("the Go scenario's own transcript: %v", err))
	}
	return tr, problems
}

func (s *goScenario) blocked(cues *alarmCues) error {
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
	if err := cues.on(); err != nil {
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
	if err := cues.off(); err != nil {
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
// and answer a line for the script's stdin. The lines make the transcript;
// problems (exit status, stderr, bad lines) are returned, not reported, as
// it runs on a goroutine of its own.
func runInteractive(tmp, prefix string, react func(step string) (string, error), name string, args ...string) (transcript, []string) {
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	var problems []string
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp, "PYTHONDONTWRITEBYTECODE=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, []string{err.Error()}
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, []string{err.Error()}
	}
	if err := cmd.Start(); err != nil {
		return nil, []string{fmt.Sprintf("starting %s: %v", args[0], err)}
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
			problems = append(problems, fmt.Sprintf("reacting to %q: %v", v.Step, err))
		}
		if reply != "" {
			if _, err := io.WriteString(stdin, reply+"\n"); err != nil {
				problems = append(problems, fmt.Sprintf("writing %q to the script: %v", reply, err))
			}
		}
	}
	// Drain what the scanner left (a line too long) so the script can exit.
	_, _ = io.Copy(&out, stdout)
	stdin.Close()
	err = cmd.Wait()
	tr, perr := parseTranscript(out.Bytes(), prefix)
	if perr != nil {
		problems = append(problems, fmt.Sprintf("%s: %v", args[0], perr))
	}
	if err != nil {
		problems = append(problems, fmt.Sprintf("%s: %v (timed out: %v)\nstderr:\n%s",
			args[0], err, ctx.Err() != nil, truncate(stderr.String(), 4000)))
	}
	return tr, problems
}

func TestBarrier(t *testing.T) {
	var mu sync.Mutex
	runs := 0
	b := newBarrier(3, func() error {
		mu.Lock()
		defer mu.Unlock()
		runs++
		return fmt.Errorf("action %d", runs)
	})
	errs := make(chan error, 2)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { errs <- b.arrive() })
	}
	b.leave() // the third run gave up: the two others must not wait for it
	wg.Wait()
	close(errs)
	for err := range errs {
		if err == nil || err.Error() != "action 1" {
			t.Errorf("arrive returned %v, want the action's error", err)
		}
	}
	if runs != 1 {
		t.Errorf("the action ran %d times, want once", runs)
	}
}
