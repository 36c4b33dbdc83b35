package compat

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// The scenario's fixed parameters, shared by every client.
const (
	scenarioHeartbeat = 10 * time.Second
	scenarioFrameMax  = 131072
	scenarioChannels  = 200
	// waitFor bounds every wait for something the broker sends.
	waitFor = 15 * time.Second
	// idleHeartbeat is the heartbeat of the idle connection; it stays idle
	// for idleFor, longer than amqp091-go's read deadline of three
	// heartbeats, so it dies unless heartbeats arrive.
	idleHeartbeat = time.Second
	idleFor       = 3*idleHeartbeat + 300*time.Millisecond
)

// goSteps are the steps every amqp091-go transcript must have.
var goSteps = []string{
	"connect", "connection-refused", "exchange-declare", "queue-declare", "bind", "queue-declare-passive",
	"channel-error", "server-named", "confirm-select", "confirm", "return", "recover-ok",
	"connection-error",
	"get", "consume-ok", "deliver", "nack", "cancel-ok", "reject", "dead-letter",
	"get-empty", "qos-ok", "prefetch-window", "ack", "server-cancel",
	"tx-select-ok", "tx-rollback-ok", "tx-commit-ok", "get-large", "channels",
	"heartbeat", "queue-delete-ok", "exchange-delete-ok", "connection-close-ok",
}

func TestGoClient(t *testing.T) {
	t.Parallel()
	needBroker(t)
	runLegs(t, legs(t, true), "go", goSteps, func(t *testing.T, l leg, prefix string) transcript {
		s := &goScenario{url: "amqp://guest:guest@" + l.addr + "/", prefix: prefix}
		return s.run(t)
	})
}

// goScenario is the scenario written with amqp091-go. Its steps record what
// they observe with emit, like the client scripts print it.
type goScenario struct {
	url, prefix string
	lines       []string
	conn        *amqp091.Connection

	// ch is the confirm-mode channel of the confirms … get-empty steps.
	ch       *amqp091.Channel
	confirms chan amqp091.Confirmation
	returns  chan amqp091.Return

	// idle is a second connection, with a short heartbeat, that stays
	// idle while the scenario runs on conn; idleSince is when it opened.
	idle      *amqp091.Connection
	idleSince time.Time
}

func (s *goScenario) run(t *testing.T) transcript {
	steps := []struct {
		name string
		fn   func() error
	}{
		{"connect", s.connect}, {"idle-open", s.openIdle}, {"refusals", s.refusals},
		{"topology", s.topology}, {"confirms", s.confirmSteps},
		{"get", s.get}, {"consume", s.consume}, {"reject", s.reject}, {"recover", s.recover},
		{"connection-error", s.connectionError}, {"get-empty", s.getEmpty}, {"qos", s.qos}, {"cancel-notify", s.cancelNotify},
		{"tx", s.tx}, {"large", s.large}, {"channels", s.channels},
		{"heartbeat", s.heartbeat}, {"cleanup", s.cleanup},
	}
	for _, st := range steps {
		if err := st.fn(); err != nil {
			s.emit("error", "during", st.name, "error", err.Error())
			break
		}
	}
	if s.conn != nil && !s.conn.IsClosed() {
		s.conn.Close()
	}
	if s.idle != nil && !s.idle.IsClosed() {
		s.idle.Close()
	}
	tr, err := parseTranscript([]byte(strings.Join(s.lines, "\n")), s.prefix)
	if err != nil {
		t.Fatalf("the Go scenario's own transcript: %v", err)
	}
	return tr
}

// --- transcript ------------------------------------------------------------

// emit records one transcript line: a step and key/value pairs.
func (s *goScenario) emit(step string, kv ...any) {
	m := map[string]any{"step": step}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i].(string)] = kv[i+1]
	}
	b, err := json.Marshal(m)
	if err != nil {
		b, _ = json.Marshal(map[string]any{"step": "error", "during": step, "error": err.Error()})
	}
	s.lines = append(s.lines, string(b))
}

// expect records a "check-failed" line when ok is false.
func (s *goScenario) expect(ok bool, what string) {
	if !ok {
		s.emit("check-failed", "what", what)
	}
}

func (s *goScenario) q(name string) string { return s.prefix + "." + name }

func (s *goScenario) emitQueue(step string, q amqp091.Queue) {
	s.emit(step, "queue", q.Name, "messages", q.Messages, "consumers", q.Consumers)
}

func (s *goScenario) emitDelivery(step string, d amqp091.Delivery, withProps bool) {
	kv := []any{
		"delivery_tag", d.DeliveryTag, "redelivered", d.Redelivered,
		"exchange", d.Exchange, "routing_key", d.RoutingKey, "body", string(d.Body),
	}
	if d.ConsumerTag != "" {
		kv = append(kv, "consumer_tag", d.ConsumerTag)
	} else {
		kv = append(kv, "message_count", d.MessageCount)
	}
	if withProps {
		kv = append(kv, "properties", properties(d))
	}
	s.emit(step, kv...)
}

// emitChannelError records the channel error err (the broker's
// channel.close) or returns err when it is something else.
func (s *goScenario) emitChannelError(op string, err error) error {
	var ae *amqp091.Error
	if !errors.As(err, &ae) {
		return fmt.Errorf("%s: want a channel error from the broker, got %w", op, err)
	}
	s.emit("channel-error", "op", op, "code", ae.Code, "text", ae.Reason, "server", ae.Server)
	return nil
}

// properties are a delivery's basic properties that are set, with header
// values tagged with their Go type (so a proxy that re-encodes a field
// table with other AMQP types shows up).
func properties(d amqp091.Delivery) map[string]any {
	p := map[string]any{}
	set := func(k string, v any, isSet bool) {
		if isSet {
			p[k] = v
		}
	}
	set("content_type", d.ContentType, d.ContentType != "")
	set("content_encoding", d.ContentEncoding, d.ContentEncoding != "")
	set("headers", typed(d.Headers), d.Headers != nil)
	set("delivery_mode", d.DeliveryMode, d.DeliveryMode != 0)
	set("priority", d.Priority, d.Priority != 0)
	set("correlation_id", d.CorrelationId, d.CorrelationId != "")
	set("reply_to", d.ReplyTo, d.ReplyTo != "")
	set("expiration", d.Expiration, d.Expiration != "")
	set("message_id", d.MessageId, d.MessageId != "")
	set("timestamp", d.Timestamp.Unix(), !d.Timestamp.IsZero())
	set("type", d.Type, d.Type != "")
	set("user_id", d.UserId, d.UserId != "")
	set("app_id", d.AppId, d.AppId != "")
	return p
}

// typed turns a field-table value into JSON with its Go type named. The
// timestamps the broker adds (the "time" of x-death entries) become
// "<time>".
func typed(v any) any {
	switch x := v.(type) {
	case amqp091.Table:
		return typed(map[string]any(x))
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			if _, isTime := e.(time.Time); isTime && k == "time" {
				m[k] = "<time>"
				continue
			}
			m[k] = typed(e)
		}
		return m
	case []any:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = typed(e)
		}
		return l
	case time.Time:
		return fmt.Sprintf("time %d", x.Unix())
	case string, bool, nil:
		return x
	case []byte:
		return "bytes " + hex.EncodeToString(x)
	default:
		return fmt.Sprintf("%T %v", x, x)
	}
}

// recv waits for one value from c, at most waitFor.
func recv[T any](c <-chan T, what string) (T, error) {
	timer := time.NewTimer(waitFor)
	defer timer.Stop()
	select {
	case v, ok := <-c:
		if !ok {
			return v, fmt.Errorf("waiting for %s: the client closed the channel (connection or channel closed)", what)
		}
		return v, nil
	case <-timer.C:
		var zero T
		return zero, fmt.Errorf("waited %v for %s", waitFor, what)
	}
}

// pollGet repeats basic.get until a message arrives (for asynchronous
// routing such as dead-lettering); the empty answers are not recorded.
func pollGet(ch *amqp091.Channel, queue string) (amqp091.Delivery, error) {
	var d amqp091.Delivery
	var err error
	got := eventually(waitFor, func() bool {
		var ok bool
		d, ok, err = ch.Get(queue, false)
		return ok || err != nil
	})
	if err != nil {
		return d, fmt.Errorf("basic.get %s: %w", queue, err)
	}
	if !got {
		return d, fmt.Errorf("waited %v for a message in %s", waitFor, queue)
	}
	return d, nil
}
