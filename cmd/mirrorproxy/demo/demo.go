// Package demo is `mirrorproxy demo`: it starts a mirrored group on this
// machine — three local RabbitMQ nodes, each with a mirrorproxy sidecar in
// front of it (this same binary, as separate processes) — runs an unchanged
// amqp091-go client through the master's sidecar with the example from the
// articles the product was conceived from, and shows the copies on every
// broker as the client publishes and consumes.
package demo

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/urfave/cli/v2"

	"github.com/mirrorproxy/mirrorproxy/failover/chaos"
	"github.com/mirrorproxy/mirrorproxy/testenv"
)

// Command returns the `demo` sub-command.
func Command() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "start a mirrored group (3 local RabbitMQ nodes and sidecars), run a client through it, show the copies",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "messages", Value: 10000, Usage: "messages to publish and consume"},
			&cli.BoolFlag{Name: "sidecar-logs", Usage: "show the sidecars' log lines"},
		},
		Action: func(c *cli.Context) error {
			ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
			defer stop()
			err := run(ctx, c.App.Writer, c.Int("messages"), c.Bool("sidecar-logs"))
			if err != nil && ctx.Err() != nil && c.Err() == nil {
				// A signal, not a failure: everything the demo started is
				// stopped by now. 130 is what a shell reports for SIGINT.
				return cli.Exit("demo interrupted: the sidecars and brokers it started are stopped", 130)
			}
			return err
		},
	}
}

// executable is the binary the sidecars and ctl calls run: this one (a
// test points it at a built binary).
var executable = os.Executable

// nodes is the size of the demo group.
const nodes = 3

func run(ctx context.Context, w io.Writer, n int, sidecarLogs bool) (err error) {
	say := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	t0 := time.Now()

	say("1. Starting %d RabbitMQ nodes (local rabbitmq-server processes, random ports, not clustered)…", nodes)
	g, err := testenv.StartGroup(ctx, testenv.Options{Nodes: nodes})
	if err != nil {
		return err // a broker that did not start: the error has its last log lines
	}
	killed := make([]bool, len(g.Nodes)) // brokers the demo kills on purpose
	defer func() {
		if err != nil && ctx.Err() == nil {
			// A broker that died under the demo: show why, whatever the flags.
			for i, node := range g.Nodes {
				if !killed[i] && !node.Running() {
					say("   node-%d's broker is not running; its last log lines:\n%s", i, indent(node.LogTail(20)))
				}
			}
		}
		g.Close()
		say("   brokers stopped and their directories removed")
	}()
	for _, node := range g.Nodes {
		say("   broker %s on %s", node.Name, node.AMQPAddr)
	}
	say("   (%.1fs)", time.Since(t0).Seconds())

	say("2. Starting a mirrorproxy sidecar beside each (separate processes of this binary), as one group:")
	dir, err := os.MkdirTemp("", "mirrorproxy-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfgs, clients, admins, err := groupConfigs(dir, g)
	if err != nil {
		return err
	}
	var sidecars []*sidecarProc
	defer func() {
		for i := len(sidecars) - 1; i >= 0; i-- {
			sidecars[i].stop(say, fmt.Sprintf("node-%d", i))
		}
	}()
	for i, cfg := range cfgs {
		p, err := startSidecar(ctx, cfg, clients[i], w, sidecarLogs, fmt.Sprintf("node-%d", i))
		if err != nil {
			return err
		}
		sidecars = append(sidecars, p)
		say("   node-%d: sidecar pid %d, clients on %s, broker %s", i, p.cmd.Process.Pid, clients[i], g.Nodes[i].AMQPAddr)
	}
	if err := waitMembers(ctx, admins[0], nodes); err != nil {
		return err
	}
	say("   node-0 is the master: it serves clients; the others hold copies of the queues the policies place on them.")
	say("   Policy ha (in the config): ^hello- queues get exactly 2 copies — the master's and node-1's")

	ctl := func(args ...string) {
		exe, err := executable()
		if err != nil {
			say("   (%v)", err)
			return
		}
		out, err := exec.CommandContext(ctx, exe, append([]string{"ctl", "--config", cfgs[0]}, args...)...).CombinedOutput()
		for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
			say("   %s", line)
		}
		if err != nil {
			say("   (mirrorproxy ctl: %v)", err)
		}
	}
	// queueOn returns the hello-queue row of a broker's list_queues.
	queueOn := func(i int) (fields []string, err error) {
		out, err := g.Nodes[i].Ctl(ctx, "-q", "--no-table-headers", "list_queues", "name", "messages", "messages_unacknowledged", "consumers")
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if f := strings.Fields(line); len(f) == 4 && f[0] == "hello-queue" {
				return f, nil
			}
		}
		return nil, nil
	}
	brokers := func() {
		for i := range g.Nodes {
			f, err := queueOn(i)
			switch {
			case err != nil:
				say("   (rabbitmqctl on node-%d failed: %v)", i, err)
			case f == nil:
				say("   node-%d's broker: no hello-queue", i)
			default:
				say("   node-%d's broker: %s holds %s messages (%s unacked), %s consumer(s)", i, f[0], f[1], f[2], f[3])
			}
		}
	}
	// settle waits (up to 30s) until broker i's copy holds want messages,
	// all unacked (a mirror's sidecar takes its copies as they arrive):
	// the demo shows the state the group converges to, not a moment of it.
	settle := func(i int, want string) {
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) && ctx.Err() == nil {
			if f, _ := queueOn(i); f != nil && f[1] == want && f[2] == want {
				return
			}
			pause(ctx, 50*time.Millisecond)
		}
	}
	count := strconv.Itoa(n)
	listQueues := func() { ctl("list_queues", "name", "messages", "slave_pids", "synchronised_slave_pids") }
	steps := demoSteps{
		afterPublish: func() {
			say("4. Where the messages are (mirrorproxy ctl list_queues, on the master's admin API):")
			settle(1, count)
			listQueues()
			say("   and on each broker directly (rabbitmqctl list_queues): the master's broker has the queue,")
			say("   node-1's a copy its sidecar holds unacked, node-2's none")
			brokers()

			say("5. An operator gives the queue a third copy: mirrorproxy ctl set_policy ha '^hello-' '{\"ha-mode\":\"all\"}'")
			ctl("set_policy", "ha", "^hello-", `{"ha-mode":"all"}`)
			deadline := time.Now().Add(30 * time.Second)
			for {
				if f, _ := queueOn(2); f != nil || time.Now().After(deadline) || ctx.Err() != nil {
					break
				}
				pause(ctx, 50*time.Millisecond)
			}
			say("   the master replicated the policy; node-2 declared its copy, which starts empty and unsynced:")
			listQueues()
			brokers()
			say("   mirrorproxy ctl sync_queue hello-queue copies the older messages (the queue is blocked meanwhile):")
			ctl("sync_queue", "hello-queue")
			settle(2, count)
			listQueues()
			brokers()
		},
		afterConsume: func() {
			say("7. After the acks, on each broker: the copies went with the master's messages")
			settle(1, "0")
			settle(2, "0")
			brokers()
			say("   the brokers see the sidecars, which authenticated the client with its own credentials")
			out, err := g.Nodes[0].Ctl(ctx, "-q", "--no-table-headers", "list_connections", "user", "peer_host", "state")
			if err == nil {
				for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
					say("   node-0's broker: connection %s", strings.Join(strings.Fields(line), " "))
				}
			}
		},
	}
	say("3. An unchanged amqp091-go client publishes through the master's sidecar (node-0, %s):", clients[0])
	say("   and consumes through a mirror's sidecar (node-2, %s), which carries it to the master", clients[2])
	if err := client(ctx, "amqp://guest:guest@"+clients[0]+"/", "amqp://guest:guest@"+clients[2]+"/", n, say, steps); err != nil {
		return err
	}
	if err := failoverStep(ctx, say, g, clients, func() { killed[0] = true }); err != nil {
		return err
	}
	say("9. Done in %.1fs.", time.Since(t0).Seconds())
	return nil
}

// failoverStep kills the master's broker while a producer (with confirms)
// and a consumer (manual acks) stream through two different sidecars,
// and counts what the clients saw: nothing confirmed is lost.
func failoverStep(ctx context.Context, say func(string, ...any), g *testenv.Group, clients []string, kill func()) error {
	const queue = "hello-failover"
	say("8. Failover. A producer with publisher confirms streams through node-2's sidecar into %s (ha-mode all),", queue)
	say("   a consumer with manual acks reads it through node-1's; both reconnect to the next sidecar on an error.")
	if err := chaos.DeclareQueue(ctx, clients[2], queue, nil); err != nil {
		return fmt.Errorf("declare %s: %w", queue, err)
	}
	h := chaos.NewHistory(chaos.NewClock())
	order := func(first int) []string {
		var a []string
		for i := range clients {
			a = append(a, clients[(first+i)%len(clients)])
		}
		return a
	}
	run, err := chaos.Workload{History: h,
		Producers: []chaos.ProducerConfig{{ClientConfig: chaos.ClientConfig{ID: "producer", Addrs: order(2)}, RoutingKey: queue, Rate: 200}},
		Consumers: []chaos.ConsumerConfig{{ClientConfig: chaos.ClientConfig{ID: "consumer", Addrs: order(1)}, Queue: queue}},
	}.Start(ctx)
	if err != nil {
		return err
	}
	wait := func(d time.Duration) {
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
	wait(3 * time.Second)
	say("   after 3s: kill -9 of the master's broker (node-0); its sidecar notices, steps down, a synced mirror takes over")
	killed := h.Now()
	h.Fault("kill -9 master broker", "node-0")
	kill()
	if err := g.Nodes[0].Kill(); err != nil {
		run.Stop()
		return err
	}
	wait(5 * time.Second)
	run.StopProducers()
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	// Best effort: the drain below counts whatever arrived either way.
	_ = h.WaitQuiet(qctx, time.Second)
	cancel()
	run.Stop()
	drained, err := chaos.Drain(ctx, clients[1], queue)
	if err != nil {
		return fmt.Errorf("drain %s: %w", queue, err)
	}
	r := chaos.Check(h.Events(), drained)
	say("   published %d, confirmed %d, consumed %d (%d left in the queue, read at the end)", r.Published, r.Confirmed, r.Delivered, r.Drained)
	say("   lost (confirmed, never consumed): %d; duplicates: %d expected (redelivered or re-sent), %d unexpected",
		len(r.Lost)+len(r.Dropped), r.ExpectedDuplicates(), r.UnexpectedCount)
	say("   the kill was at %.1fs; the producer's longest wait for a confirm: %s (duration@start),", killed.Seconds(), r.LongestWait())
	say("   the consumer's longest gap between deliveries: %s", r.LongestGap())
	if !r.Valid() {
		return fmt.Errorf("the failover lost or duplicated messages:\n%s", r)
	}
	return nil
}

// demoSteps are the demo's looks at the group between the client's steps.
type demoSteps struct {
	afterPublish, afterConsume func()
}

// groupConfigs writes one sidecar config per broker of g and returns their
// paths, the sidecars' client addresses and admin addresses.
func groupConfigs(dir string, g *testenv.Group) (cfgs, clients, admins []string, err error) {
	type addrs struct{ client, gm, raft, admin string }
	// Reserved, not merely free a moment ago: nothing else on the machine
	// (test packages running beside this one, rabbitmqctl) is handed one
	// of them before the sidecar binds it.
	reserved, err := testenv.ReserveAddrs(4 * len(g.Nodes))
	if err != nil {
		return nil, nil, nil, err
	}
	var as []addrs
	for i := range g.Nodes {
		r := reserved[4*i:]
		as = append(as, addrs{client: r[0], gm: r[1], raft: r[2], admin: r[3]})
	}
	var peers strings.Builder
	for i, a := range as {
		fmt.Fprintf(&peers, "  - {name: node-%d, client_address: %q, gm_address: %q, raft_address: %q}\n", i, a.client, a.gm, a.raft)
	}
	for i, node := range g.Nodes {
		cfg := fmt.Sprintf(`# written by mirrorproxy demo
listen:
  address: %q
upstream:
  address: %q
shutdown_grace: 5s
node:
  name: node-%d
peers:
%sgm:
  secret: mirrorproxy demo secret, not for production
broker:
  username: guest
  password: guest
policies:
  - name: ha
    pattern: ^hello-
    apply-to: queues
    definition: {ha-mode: exactly, ha-params: 2}
admin:
  address: %q
  token: mirrorproxy demo admin token
`, as[i].client, node.AMQPAddr, i, peers.String(), as[i].admin)
		path := filepath.Join(dir, fmt.Sprintf("node-%d.yaml", i))
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			return nil, nil, nil, err
		}
		cfgs = append(cfgs, path)
		clients = append(clients, as[i].client)
		admins = append(admins, as[i].admin)
	}
	return cfgs, clients, admins, nil
}

// waitMembers waits until a node's admin API lists n members: the group
// has formed (the first node admits the others as they come up).
func waitMembers(ctx context.Context, addr string, n int) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		if got, err := members(ctx, addr); err == nil && got == n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the group did not form within 60s (node-0's admin API on %s)", addr)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func members(ctx context.Context, addr string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/api/nodes", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var ms []struct{ Name string }
	if err := json.NewDecoder(resp.Body).Decode(&ms); err != nil {
		return 0, err
	}
	return len(ms), nil
}

// confirmWait bounds the wait for each publisher confirm.
const confirmWait = 30 * time.Second

// client runs the articles' example: a durable direct exchange hello-exch,
// a queue hello-queue declared with x-ha-policy all, persistent publishes
// with routing key hala (with publisher confirms), consumed with manual acks.
func client(ctx context.Context, url, consumeURL string, n int, say func(string, ...any), steps demoSteps) error {
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
	say("   note: the queue asks for x-ha-policy all (a copy on every node), but it gets 2 copies: a matching")
	say("   policy wins over the queue's x-ha-policy argument, as in RabbitMQ, and policy ha says exactly 2")

	if err := ch.Confirm(false); err != nil {
		return err
	}
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 256))
	body := make([]byte, 1024)
	start := time.Now()
	inflight, acked := 0, 0
	// confirm waits for the next confirm, at most confirmWait.
	confirm := func() error {
		select {
		case c, ok := <-confirms:
			if !ok {
				return fmt.Errorf("client: the channel closed with %d of %d publishes confirmed", acked, n)
			}
			inflight--
			if c.Ack {
				acked++
			}
			return nil
		case <-time.After(confirmWait):
			return fmt.Errorf("client: no confirm within %s (%d of %d confirmed, %d waiting): the group withholds a confirm until every synced mirror has the message", confirmWait, acked, n, inflight)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for i := 0; i < n; i++ {
		for inflight >= 256 {
			if err := confirm(); err != nil {
				return err
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
	for inflight > 0 {
		if err := confirm(); err != nil {
			return err
		}
	}
	el := time.Since(start)
	say("   published %d persistent 1 KiB messages with confirms: %d confirmed in %.2fs (%.0f msg/s)", n, acked, el.Seconds(), float64(n)/el.Seconds())

	steps.afterPublish()

	say("6. The client consumes with manual acks, through node-2's sidecar:")
	cconn, err := amqp091.Dial(consumeURL)
	if err != nil {
		return fmt.Errorf("client: dial node-2's sidecar: %w", err)
	}
	defer cconn.Close()
	cch, err := cconn.Channel()
	if err != nil {
		return err
	}
	if err := cch.Qos(256, 0, false); err != nil {
		return err
	}
	deliveries, err := cch.Consume("hello-queue", "", false, false, false, false, nil)
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
	steps.afterConsume()
	_, err = ch.QueueDelete("hello-queue", false, false, false)
	if err == nil {
		err = ch.ExchangeDelete("hello-exch", false, false)
	}
	return err
}

type sidecarProc struct {
	cmd  *exec.Cmd
	done chan error // the exit, once the log is read to its end
	tail *logTail
}

// sidecarTailLines is how many of a sidecar's last log lines the demo
// keeps, to show when it exits early.
const sidecarTailLines = 30

// logTail keeps the last lines of a log.
type logTail struct {
	mu    sync.Mutex
	lines []string
}

func (t *logTail) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == sidecarTailLines {
		t.lines = t.lines[1:]
	}
	t.lines = append(t.lines, line)
}

func (t *logTail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == 0 {
		return "(no log lines)"
	}
	return strings.Join(t.lines, "\n")
}

// startSidecar starts a sidecar and waits until it listens on listen. A
// sidecar that exits first is reported with its last log lines, whatever
// showLogs says.
func startSidecar(ctx context.Context, cfg, listen string, w io.Writer, showLogs bool, name string) (*sidecarProc, error) {
	exe, err := executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "run", "--config", cfg, "--log-format", "console")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the sidecar: %w", err)
	}
	p := &sidecarProc{cmd: cmd, done: make(chan error, 1), tail: &logTail{}}
	logsDone := make(chan struct{})
	go func() {
		defer close(logsDone)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.tail.add(sc.Text())
			if showLogs {
				fmt.Fprintf(w, "   %s | %s\n", name, sc.Text())
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
			p.done <- err
			return nil, fmt.Errorf("the sidecar of %s exited: %w; its last log lines:\n%s", name, err, indent(p.tail.String()))
		case <-ctx.Done():
			_ = cmd.Process.Kill() // fails only when it has exited, which p.done reports
			<-p.done               //nolint:errcheck // the exit the kill caused; the kill is the news
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill() // fails only when it has exited, which p.done reports
			<-p.done               //nolint:errcheck // the exit the kill caused; the kill is the news
			return nil, fmt.Errorf("the sidecar of %s did not listen on %s within 10s; its last log lines:\n%s", name, listen, indent(p.tail.String()))
		}
	}
}

// stop ends the sidecar with SIGTERM (or finds it gone: then its last log
// lines are shown, whatever the flags).
func (p *sidecarProc) stop(say func(string, ...any), name string) {
	select {
	case err := <-p.done:
		say("   %s's sidecar had exited early (%v); its last log lines:\n%s", name, exitText(err), indent(p.tail.String()))
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM) // fails only when it has exited, which p.done reports
	select {
	case err := <-p.done:
		if err != nil {
			say("   %s's sidecar stopped: %v; its last log lines:\n%s", name, err, indent(p.tail.String()))
		} else {
			say("   sidecar stopped on SIGTERM (exit 0)")
		}
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill() // fails only when it has exited, which p.done reports
		<-p.done                 //nolint:errcheck // the exit the kill caused; the kill is the news
		say("   %s's sidecar did not stop on SIGTERM within 15s; killed", name)
	}
}

func exitText(err error) string {
	if err == nil {
		return "exit 0"
	}
	return err.Error()
}

// pause waits for d or until ctx is done.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// indent prefixes every line of text with the demo's margin.
func indent(text string) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	for i, l := range lines {
		lines[i] = "   | " + l
	}
	return strings.Join(lines, "\n")
}
