package compat

// The steps of the amqp091-go scenario, in the order goScenario.run calls
// them. Each records what it observes with emit; an error stops the run.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

func (s *goScenario) connect() error {
	conn, err := amqp091.DialConfig(s.url, amqp091.Config{
		Heartbeat: scenarioHeartbeat,
		FrameSize: scenarioFrameMax,
		Locale:    "en_US",
	})
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	s.conn = conn
	s.emit("connect",
		"heartbeat", int(conn.Config.Heartbeat/time.Second),
		"frame_max", conn.Config.FrameSize,
		"channel_max", conn.Config.ChannelMax,
		"version", fmt.Sprintf("%d-%d", conn.Major, conn.Minor),
		"locales", conn.Locales,
		"product", conn.Properties["product"],
		"capabilities", typed(conn.Properties["capabilities"]))
	s.expect(conn.Config.Heartbeat == scenarioHeartbeat, "heartbeat negotiated to the client's 10s")
	s.expect(conn.Config.FrameSize == scenarioFrameMax, "frame_max negotiated to 131072")
	return nil
}

// openIdle opens the idle connection that the heartbeat step checks; it
// opens early so that its idle time overlaps the scenario's.
func (s *goScenario) openIdle() error {
	idle, err := amqp091.DialConfig(s.url, amqp091.Config{Heartbeat: idleHeartbeat})
	if err != nil {
		return fmt.Errorf("dial the idle connection: %w", err)
	}
	s.idle, s.idleSince = idle, time.Now()
	return nil
}

// heartbeat checks the idle connection: after idleFor without traffic
// other than heartbeats it must still be open and work.
func (s *goScenario) heartbeat() error {
	closed := s.idle.NotifyClose(make(chan *amqp091.Error, 1))
	// Waiting is the point here: the connection must survive idleFor.
	timer := time.NewTimer(time.Until(s.idleSince.Add(idleFor)))
	defer timer.Stop()
	select {
	case err := <-closed:
		return fmt.Errorf("the idle connection with a %v heartbeat closed after %v: %w",
			idleHeartbeat, time.Since(s.idleSince).Round(time.Millisecond), err)
	case <-timer.C:
	}
	ch, err := s.idle.Channel()
	if err != nil {
		return fmt.Errorf("channel on the idle connection: %w", err)
	}
	q, err := ch.QueueDeclare("", false, false, true, false, nil)
	if err != nil {
		return fmt.Errorf("declare on the idle connection: %w", err)
	}
	s.emit("heartbeat", "negotiated", int(s.idle.Config.Heartbeat/time.Second),
		"idle_seconds", idleFor.Seconds(), "alive", strings.HasPrefix(q.Name, "amq.gen-"))
	s.expect(s.idle.Config.Heartbeat == idleHeartbeat, "a 1 s heartbeat is negotiated")
	if err := ch.Close(); err != nil {
		return err
	}
	return s.idle.Close()
}

// refusals: the broker refuses a wrong password (403, announced with
// authentication_failure_close) and a missing vhost (530).
func (s *goScenario) refusals() error {
	for _, c := range []struct{ name, url string }{
		{"bad-password", strings.Replace(s.url, "guest:guest@", "guest:wrong@", 1)},
		{"missing-vhost", s.url + s.q("nosuch")},
	} {
		conn, err := amqp091.DialConfig(c.url, amqp091.Config{Heartbeat: scenarioHeartbeat})
		if err == nil {
			conn.Close()
			s.expect(false, "the broker refuses the "+c.name+" connection")
			continue
		}
		var ae *amqp091.Error
		if errors.As(err, &ae) {
			s.emit("connection-refused", "case", c.name, "code", ae.Code, "text", ae.Reason)
		} else {
			s.emit("connection-refused", "case", c.name, "error", err.Error())
		}
	}
	return nil
}

func (s *goScenario) topology() error {
	ch, err := s.conn.Channel()
	if err != nil {
		return err
	}
	for _, e := range []struct {
		name, kind string
		args       amqp091.Table
	}{
		{s.q("dlx"), "fanout", nil},
		{s.q("alt"), "fanout", nil},
		{s.q("x"), "direct", amqp091.Table{"alternate-exchange": s.q("alt")}},
	} {
		if err := ch.ExchangeDeclare(e.name, e.kind, false, false, false, false, e.args); err != nil {
			return fmt.Errorf("exchange.declare %s: %w", e.name, err)
		}
	}
	if err := ch.ExchangeDeclarePassive(s.q("x"), "direct", false, false, false, false, nil); err != nil {
		return fmt.Errorf("passive exchange.declare: %w", err)
	}
	s.emit("exchange-declare", "names", []string{s.q("dlx"), s.q("alt"), s.q("x")})
	for _, d := range []struct {
		name string
		args amqp091.Table
	}{
		{"dead", nil},
		{"altq", nil},
		{"q", amqp091.Table{"x-dead-letter-exchange": s.q("dlx"), "x-max-priority": int32(5), "x-message-ttl": int32(600000)}},
		{"nodlx", nil},
	} {
		q, err := ch.QueueDeclare(s.q(d.name), false, false, false, false, d.args)
		if err != nil {
			return fmt.Errorf("queue.declare %s: %w", d.name, err)
		}
		s.emitQueue("queue-declare", q)
	}
	for _, b := range [][3]string{{"dead", "dlx", ""}, {"altq", "alt", ""}, {"q", "x", "k"}} {
		if err := ch.QueueBind(s.q(b[0]), b[2], s.q(b[1]), false, nil); err != nil {
			return fmt.Errorf("queue.bind %v: %w", b, err)
		}
	}
	s.emit("bind", "bindings", [][3]string{{"dead", "dlx", ""}, {"altq", "alt", ""}, {"q", "x", "k"}})
	q, err := ch.QueueDeclarePassive(s.q("q"), false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("passive queue.declare: %w", err)
	}
	s.emitQueue("queue-declare-passive", q)

	_, err = ch.QueueDeclare(s.q("q"), false, false, false, false, amqp091.Table{"x-max-priority": int32(9)})
	s.expect(err != nil, "redeclaring a queue with other arguments fails")
	if err := s.emitChannelError("redeclare-mismatch", err); err != nil {
		return err
	}
	if ch, err = s.conn.Channel(); err != nil {
		return err
	}
	// The broker closes the channel asynchronously: wait for that close
	// itself (a following RPC would race it and fail either with the 404 or
	// with "channel not open", depending on timing).
	closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
	if err := ch.Publish(s.q("noexchange"), "k", false, false, amqp091.Publishing{Body: []byte("lost")}); err != nil {
		return err
	}
	select {
	case cerr := <-closed:
		err = nil
		if cerr != nil {
			err = cerr
		}
	case <-time.After(10 * time.Second):
		err = nil
	}
	s.expect(err != nil, "a publish to a missing exchange closes the channel")
	if err := s.emitChannelError("publish-no-exchange", err); err != nil {
		return err
	}
	if ch, err = s.conn.Channel(); err != nil {
		return err
	}
	_, err = ch.QueueDeclarePassive(s.q("missing"), false, false, false, false, nil)
	s.expect(err != nil, "a passive declare of a missing queue fails")
	if err := s.emitChannelError("passive-missing", err); err != nil {
		return err
	}
	if ch, err = s.conn.Channel(); err != nil {
		return err
	}
	q, err = ch.QueueDeclare("", false, false, true, false, nil)
	if err != nil {
		return fmt.Errorf("server-named queue.declare: %w", err)
	}
	s.emitQueue("server-named", q)
	s.expect(strings.HasPrefix(q.Name, "amq.gen-"), "a server-named queue starts with amq.gen-")
	if err := ch.Close(); err != nil {
		return fmt.Errorf("channel.close: %w", err)
	}
	s.emit("channel-close", "ok", true)
	return nil
}

func (s *goScenario) confirmSteps() error {
	ch, err := s.conn.Channel()
	if err != nil {
		return err
	}
	s.ch = ch
	if err := ch.Confirm(false); err != nil {
		return fmt.Errorf("confirm.select: %w", err)
	}
	s.confirms = ch.NotifyPublish(make(chan amqp091.Confirmation, 16))
	s.returns = ch.NotifyReturn(make(chan amqp091.Return, 4))
	s.emit("confirm-select", "ok", true)
	// Three publishes in flight before the first confirm is read.
	for i := 1; i <= 3; i++ {
		err := ch.Publish(s.q("x"), "k", true, false, amqp091.Publishing{
			ContentType:     "text/plain",
			ContentEncoding: "utf-8",
			Headers: amqp091.Table{
				"n": int32(7), "s": "str", "neg": int64(-3), "flag": true, "f": 1.5,
				"nested": amqp091.Table{"a": []any{int32(1), "b", false}},
				"ts":     time.Unix(1700000000, 0),
			},
			DeliveryMode:  amqp091.Persistent,
			Priority:      uint8(i),
			CorrelationId: fmt.Sprintf("corr-%d", i),
			ReplyTo:       "reply",
			Expiration:    "600000",
			MessageId:     fmt.Sprintf("m%d", i),
			Timestamp:     time.Unix(int64(1700000000+i), 0),
			Type:          "kind",
			UserId:        "guest",
			AppId:         "compat",
			Body:          []byte(fmt.Sprintf("msg-%d", i)),
		})
		if err != nil {
			return fmt.Errorf("publish %d: %w", i, err)
		}
	}
	for i := 1; i <= 3; i++ {
		if err := s.recvConfirm(); err != nil {
			return err
		}
	}
	if err := ch.Publish("", s.q("none"), true, false, amqp091.Publishing{Body: []byte("unroutable")}); err != nil {
		return fmt.Errorf("publish unroutable: %w", err)
	}
	r, err := recv(s.returns, "basic.return of the unroutable publish")
	if err != nil {
		return err
	}
	s.emit("return", "code", r.ReplyCode, "text", r.ReplyText, "exchange", r.Exchange,
		"routing_key", r.RoutingKey, "body", string(r.Body))
	if err := s.recvConfirm(); err != nil {
		return err
	}
	if err := ch.Publish(s.q("x"), "other", true, false, amqp091.Publishing{Body: []byte("to-alternate")}); err != nil {
		return fmt.Errorf("publish to the alternate exchange: %w", err)
	}
	if err := s.recvConfirm(); err != nil {
		return err
	}

	// A full queue that rejects publishes: the broker nacks the second.
	q, err := ch.QueueDeclare(s.q("full"), false, false, false, false,
		amqp091.Table{"x-max-length": int32(1), "x-overflow": "reject-publish"})
	if err != nil {
		return err
	}
	s.emitQueue("queue-declare", q)
	for _, body := range []string{"fits", "overflow"} {
		if err := ch.Publish("", s.q("full"), false, false, amqp091.Publishing{Body: []byte(body)}); err != nil {
			return err
		}
	}
	c, err := recv(s.confirms, "the confirm of the publish that fits")
	if err != nil {
		return err
	}
	s.emit("confirm", "delivery_tag", c.DeliveryTag, "ack", c.Ack)
	c, err = recv(s.confirms, "the nack of the publish that overflows")
	if err != nil {
		return err
	}
	s.emit("confirm", "delivery_tag", c.DeliveryTag, "ack", c.Ack)
	s.expect(!c.Ack, "a publish to a full reject-publish queue is nacked")
	n, err := ch.QueueDelete(s.q("full"), false, false, false)
	if err != nil {
		return err
	}
	s.emit("queue-delete-ok", "messages", n)
	return nil
}

func (s *goScenario) recvConfirm() error {
	c, err := recv(s.confirms, "a publisher confirm")
	if err != nil {
		return err
	}
	s.emit("confirm", "delivery_tag", c.DeliveryTag, "ack", c.Ack)
	s.expect(c.Ack, "the broker acks the publish")
	return nil
}

func (s *goScenario) get() error {
	d, ok, err := s.ch.Get(s.q("q"), false)
	if err != nil || !ok {
		return fmt.Errorf("basic.get: ok=%v: %w", ok, err)
	}
	s.emitDelivery("get", d, true)
	s.expect(string(d.Body) == "msg-3", "the priority queue gives the highest priority first")
	if err := s.ch.Ack(d.DeliveryTag, false); err != nil {
		return err
	}
	d, ok, err = s.ch.Get(s.q("altq"), false)
	if err != nil || !ok {
		return fmt.Errorf("basic.get from the alternate exchange's queue: ok=%v: %w", ok, err)
	}
	s.emitDelivery("get", d, true)
	return s.ch.Ack(d.DeliveryTag, false)
}

func (s *goScenario) consume() error {
	ch := s.ch
	tag := s.q("c1")
	deliveries, err := ch.Consume(s.q("q"), tag, false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("basic.consume: %w", err)
	}
	s.emit("consume-ok", "consumer_tag", tag)
	var got []amqp091.Delivery
	for len(got) < 2 {
		d, err := recv(deliveries, "two deliveries")
		if err != nil {
			return err
		}
		got = append(got, d)
		s.emitDelivery("deliver", d, false)
	}
	if err := ch.Nack(got[0].DeliveryTag, false, true); err != nil {
		return err
	}
	s.emit("nack", "delivery_tag", got[0].DeliveryTag, "requeue", true)
	d, err := recv(deliveries, "the nacked message to come back")
	if err != nil {
		return err
	}
	s.emitDelivery("deliver", d, false)
	s.expect(d.Redelivered && bytes.Equal(d.Body, got[0].Body), "a requeued message comes back redelivered")
	if err := ch.Ack(got[1].DeliveryTag, false); err != nil {
		return err
	}
	if err := ch.Ack(d.DeliveryTag, false); err != nil {
		return err
	}
	if err := ch.Cancel(tag, false); err != nil {
		return fmt.Errorf("basic.cancel: %w", err)
	}
	s.emit("cancel-ok", "consumer_tag", tag, "deliveries", len(got)+1)
	q, err := ch.QueueDeclarePassive(s.q("q"), false, false, false, false, nil)
	if err != nil {
		return err
	}
	s.emitQueue("queue-declare-passive", q)
	return nil
}

func (s *goScenario) reject() error {
	ch := s.ch
	for _, p := range []struct{ ex, key, body string }{
		{s.q("x"), "k", "dl-1"}, {"", s.q("nodlx"), "drop-1"}, {"", s.q("nodlx"), "requeue-1"},
	} {
		if err := ch.Publish(p.ex, p.key, false, false, amqp091.Publishing{Priority: 1, Body: []byte(p.body)}); err != nil {
			return err
		}
		if err := s.recvConfirm(); err != nil {
			return err
		}
	}
	d, ok, err := ch.Get(s.q("q"), false)
	if err != nil || !ok {
		return fmt.Errorf("basic.get: ok=%v: %w", ok, err)
	}
	s.emitDelivery("get", d, true)
	if err := ch.Reject(d.DeliveryTag, false); err != nil {
		return err
	}
	s.emit("reject", "delivery_tag", d.DeliveryTag, "requeue", false)
	d, err = pollGet(ch, s.q("dead"))
	if err != nil {
		return err
	}
	s.emitDelivery("dead-letter", d, true)
	_, hasDeath := d.Headers["x-death"]
	s.expect(string(d.Body) == "dl-1" && hasDeath, "a rejected message dead-letters with x-death")
	if err := ch.Ack(d.DeliveryTag, false); err != nil {
		return err
	}

	for _, requeue := range []bool{false, true} {
		d, ok, err := ch.Get(s.q("nodlx"), false)
		if err != nil || !ok {
			return fmt.Errorf("basic.get: ok=%v: %w", ok, err)
		}
		s.emitDelivery("get", d, true)
		if err := ch.Reject(d.DeliveryTag, requeue); err != nil {
			return err
		}
		s.emit("reject", "delivery_tag", d.DeliveryTag, "requeue", requeue)
	}
	d, ok, err = ch.Get(s.q("nodlx"), false)
	if err != nil || !ok {
		return fmt.Errorf("basic.get: ok=%v: %w", ok, err)
	}
	s.emitDelivery("get", d, true)
	s.expect(string(d.Body) == "requeue-1" && d.Redelivered, "a message rejected with requeue comes back redelivered")
	return ch.Ack(d.DeliveryTag, false)
}

// recover: basic.recover with requeue sends every unacked message back;
// they come again redelivered.
func (s *goScenario) recover() error {
	ch := s.ch
	for _, body := range []string{"rec-1", "rec-2"} {
		if err := ch.Publish("", s.q("nodlx"), false, false, amqp091.Publishing{Body: []byte(body)}); err != nil {
			return err
		}
		if err := s.recvConfirm(); err != nil {
			return err
		}
	}
	for range 2 {
		d, ok, err := ch.Get(s.q("nodlx"), false)
		if err != nil || !ok {
			return fmt.Errorf("basic.get: ok=%v: %w", ok, err)
		}
		s.emitDelivery("get", d, true)
	}
	if err := ch.Recover(true); err != nil { //nolint:staticcheck // SA1019: clients still send basic.recover; the proxy must carry it
		return fmt.Errorf("basic.recover: %w", err)
	}
	s.emit("recover-ok", "requeue", true)
	var last uint64
	for _, body := range []string{"rec-1", "rec-2"} {
		d, err := pollGet(ch, s.q("nodlx"))
		if err != nil {
			return err
		}
		s.emitDelivery("get", d, true)
		s.expect(string(d.Body) == body && d.Redelivered, "a recovered message comes back redelivered, in order")
		last = d.DeliveryTag
	}
	if err := ch.Ack(last, true); err != nil {
		return err
	}
	s.emit("ack", "delivery_tag", last, "multiple", true)
	return nil
}

// connectionError: publishing with immediate=true, which RabbitMQ does not
// implement, closes the whole connection with 540.
func (s *goScenario) connectionError() error {
	conn, err := amqp091.DialConfig(s.url, amqp091.Config{Heartbeat: scenarioHeartbeat})
	if err != nil {
		return err
	}
	defer conn.Close()
	closed := conn.NotifyClose(make(chan *amqp091.Error, 1))
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := ch.Publish("", s.q("q"), false, true, amqp091.Publishing{Body: []byte("immediate")}); err != nil {
		return err
	}
	e, err := recv(closed, "connection.close after an immediate publish")
	if err != nil {
		return err
	}
	if e == nil {
		return errors.New("the connection closed without an error")
	}
	s.emit("connection-error", "code", e.Code, "text", e.Reason, "server", e.Server)
	s.expect(e.Code == amqp091.NotImplemented, "immediate=true is refused with 540 NOT_IMPLEMENTED")
	return nil
}

func (s *goScenario) getEmpty() error {
	for _, name := range []string{"q", "nodlx", "dead"} {
		_, ok, err := s.ch.Get(s.q(name), false)
		if err != nil {
			return err
		}
		s.emit("get-empty", "queue", s.q(name), "empty", !ok)
		s.expect(!ok, "queue "+name+" is empty")
	}
	return nil
}

func (s *goScenario) qos() error {
	ch, err := s.conn.Channel()
	if err != nil {
		return err
	}
	if err := ch.Qos(2, 0, false); err != nil {
		return fmt.Errorf("basic.qos: %w", err)
	}
	s.emit("qos-ok", "prefetch_count", 2)
	if _, err := ch.QueueDeclare(s.q("qos"), false, false, false, false, nil); err != nil {
		return err
	}
	// Confirms make the counts below exact: RabbitMQ answers a passive
	// declare ahead of publishes still on their way into the queue.
	if err := ch.Confirm(false); err != nil {
		return err
	}
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 5))
	for i := 1; i <= 5; i++ {
		if err := ch.Publish("", s.q("qos"), false, false, amqp091.Publishing{Body: []byte(fmt.Sprintf("qos-%d", i))}); err != nil {
			return err
		}
	}
	for range 5 {
		if c, err := recv(confirms, "a publisher confirm"); err != nil || !c.Ack {
			return fmt.Errorf("confirm of a qos publish: %+v %w", c, err)
		}
	}
	q, err := ch.QueueDeclarePassive(s.q("qos"), false, false, false, false, nil)
	if err != nil {
		return err
	}
	s.emitQueue("queue-declare-passive", q)
	tag := s.q("cq")
	deliveries, err := ch.Consume(s.q("qos"), tag, false, false, false, false, nil)
	if err != nil {
		return err
	}
	var got []amqp091.Delivery
	window := func(want int, what string) error {
		for len(got) < want {
			d, err := recv(deliveries, what)
			if err != nil {
				return err
			}
			got = append(got, d)
		}
		q, err := ch.QueueDeclarePassive(s.q("qos"), false, false, false, false, nil)
		if err != nil {
			return err
		}
		// Anything beyond the window that came before declare-ok counts.
		select {
		case d, ok := <-deliveries:
			if ok {
				got = append(got, d)
			}
		default:
		}
		s.emitQueue("queue-declare-passive", q)
		bodies := make([]string, len(got))
		for i, d := range got {
			bodies[i] = string(d.Body)
		}
		s.emit("prefetch-window", "deliveries", len(got), "bodies", bodies)
		s.expect(len(got) == want && q.Messages == 5-want, what)
		return nil
	}
	if err := window(2, "prefetch 2 holds back the other 3"); err != nil {
		return err
	}
	if err := ch.Ack(got[0].DeliveryTag, false); err != nil {
		return err
	}
	s.emit("ack", "delivery_tag", got[0].DeliveryTag)
	if err := window(3, "one ack lets exactly one more through"); err != nil {
		return err
	}
	// Cancel before the last ack: an ack frees the window, and a consumer
	// still there would be sent the rest at once.
	if err := ch.Cancel(tag, false); err != nil {
		return err
	}
	s.emit("cancel-ok", "consumer_tag", tag)
	last := got[len(got)-1].DeliveryTag
	if err := ch.Ack(last, true); err != nil {
		return err
	}
	s.emit("ack", "delivery_tag", last, "multiple", true)
	n, err := ch.QueueDelete(s.q("qos"), false, false, false)
	if err != nil {
		return err
	}
	s.emit("queue-delete-ok", "messages", n)
	return ch.Close()
}

func (s *goScenario) cancelNotify() error {
	ch, err := s.conn.Channel()
	if err != nil {
		return err
	}
	cancels := ch.NotifyCancel(make(chan string, 1))
	if _, err := ch.QueueDeclare(s.q("cancel"), false, false, false, false, nil); err != nil {
		return err
	}
	tag := s.q("cc")
	deliveries, err := ch.Consume(s.q("cancel"), tag, false, false, false, false, nil)
	if err != nil {
		return err
	}
	s.emit("consume-ok", "consumer_tag", tag)
	other, err := s.conn.Channel()
	if err != nil {
		return err
	}
	n, err := other.QueueDelete(s.q("cancel"), false, false, false)
	if err != nil {
		return err
	}
	s.emit("queue-delete-ok", "messages", n)
	got, err := recv(cancels, "basic.cancel from the broker")
	if err != nil {
		return err
	}
	s.emit("server-cancel", "consumer_tags", []string{got})
	// The library closes the consumer's delivery channel on basic.cancel.
	timer := time.NewTimer(waitFor)
	defer timer.Stop()
	select {
	case _, open := <-deliveries:
		s.expect(!open, "no delivery after basic.cancel")
	case <-timer.C:
		s.expect(false, "the delivery channel closes after basic.cancel")
	}
	if err := other.Close(); err != nil {
		return err
	}
	return ch.Close()
}

func (s *goScenario) tx() error {
	ch, err := s.conn.Channel()
	if err != nil {
		return err
	}
	if _, err := ch.QueueDeclare(s.q("tx"), false, false, false, false, nil); err != nil {
		return err
	}
	if err := ch.Tx(); err != nil {
		return fmt.Errorf("tx.select: %w", err)
	}
	s.emit("tx-select-ok")
	pub := func(body string) error {
		return ch.Publish("", s.q("tx"), false, false, amqp091.Publishing{Body: []byte(body)})
	}
	if err := pub("rolled-back"); err != nil {
		return err
	}
	if err := ch.TxRollback(); err != nil {
		return fmt.Errorf("tx.rollback: %w", err)
	}
	s.emit("tx-rollback-ok")
	if err := pub("committed"); err != nil {
		return err
	}
	if err := ch.TxCommit(); err != nil {
		return fmt.Errorf("tx.commit: %w", err)
	}
	s.emit("tx-commit-ok")
	q, err := ch.QueueDeclarePassive(s.q("tx"), false, false, false, false, nil)
	if err != nil {
		return err
	}
	s.emitQueue("queue-declare-passive", q)
	d, ok, err := ch.Get(s.q("tx"), false)
	if err != nil || !ok {
		return fmt.Errorf("basic.get: ok=%v: %w", ok, err)
	}
	s.emitDelivery("get", d, true)
	s.expect(string(d.Body) == "committed", "only the committed publish arrives")
	if err := ch.Ack(d.DeliveryTag, false); err != nil {
		return err
	}
	if err := ch.TxCommit(); err != nil {
		return err
	}
	_, ok, err = ch.Get(s.q("tx"), false)
	if err != nil {
		return err
	}
	s.emit("get-empty", "queue", s.q("tx"), "empty", !ok)
	s.expect(!ok, "the rolled-back publish never arrives")
	return ch.Close()
}

// largeBody is n deterministic pseudo-random bytes.
func largeBody(n int) []byte {
	r := rand.NewChaCha8([32]byte{byte(n), byte(n >> 8), byte(n >> 16), byte(n >> 24)})
	b := make([]byte, n)
	_, _ = r.Read(b)
	return b
}

func (s *goScenario) large() error {
	ch, err := s.conn.Channel()
	if err != nil {
		return err
	}
	if err := ch.Confirm(false); err != nil {
		return err
	}
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 2))
	if _, err := ch.QueueDeclare(s.q("big"), false, false, false, false, nil); err != nil {
		return err
	}
	var sent [][]byte
	for _, n := range []int{1 << 20, 5 << 20} {
		body := largeBody(n)
		sent = append(sent, body)
		if err := ch.Publish("", s.q("big"), false, false, amqp091.Publishing{Body: body}); err != nil {
			return fmt.Errorf("publish %d bytes: %w", n, err)
		}
	}
	for _, body := range sent {
		c, err := recv(confirms, "the confirm of a large publish")
		if err != nil {
			return err
		}
		perFrame := scenarioFrameMax - 8
		s.emit("publish-confirmed", "size", len(body), "body_frames", (len(body)+perFrame-1)/perFrame,
			"delivery_tag", c.DeliveryTag, "ack", c.Ack)
	}
	for _, body := range sent {
		d, ok, err := ch.Get(s.q("big"), true)
		if err != nil || !ok {
			return fmt.Errorf("basic.get of a large message: ok=%v: %w", ok, err)
		}
		sum := sha256.Sum256(d.Body)
		same := bytes.Equal(d.Body, body)
		s.emit("get-large", "size", len(d.Body), "sha256", hex.EncodeToString(sum[:]),
			"identical", same, "message_count", d.MessageCount)
		s.expect(same, fmt.Sprintf("a %d-byte body arrives byte-identical", len(body)))
	}
	if _, err := ch.QueueDelete(s.q("big"), false, false, false); err != nil {
		return err
	}
	return ch.Close()
}

// channels opens scenarioChannels channels on the connection, then runs a
// round trip (declare a server-named queue, publish, get) on all of them
// at once.
func (s *goScenario) channels() error {
	chans := make([]*amqp091.Channel, 0, scenarioChannels)
	defer func() {
		for _, ch := range chans {
			ch.Close()
		}
	}()
	for range scenarioChannels {
		ch, err := s.conn.Channel()
		if err != nil {
			return fmt.Errorf("channel %d: %w", len(chans)+1, err)
		}
		chans = append(chans, ch)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(chans))
	for i, ch := range chans {
		wg.Go(func() {
			body := fmt.Sprintf("ch-%d", i)
			q, err := ch.QueueDeclare("", false, false, true, false, nil)
			if err == nil {
				err = ch.Publish("", q.Name, false, false, amqp091.Publishing{Body: []byte(body)})
			}
			if err == nil {
				var d amqp091.Delivery
				var ok bool
				d, ok, err = ch.Get(q.Name, true)
				if err == nil && (!ok || string(d.Body) != body) {
					err = fmt.Errorf("got ok=%v %q, want %q", ok, d.Body, body)
				}
			}
			errs[i] = err
		})
	}
	wg.Wait()
	okCount := 0
	var first error
	for i, err := range errs {
		if err == nil {
			okCount++
		} else if first == nil {
			first = fmt.Errorf("channel %d: %w", i+1, err)
		}
	}
	for _, ch := range chans {
		if err := ch.Close(); err != nil && first == nil {
			first = fmt.Errorf("channel.close: %w", err)
		}
	}
	chans = nil
	s.emit("channels", "opened", scenarioChannels, "round_trips_ok", okCount)
	s.expect(okCount == scenarioChannels, "every channel's round trip works")
	if first != nil {
		s.emit("channel-failure", "first", first.Error())
	}
	return nil
}

func (s *goScenario) cleanup() error {
	ch, err := s.conn.Channel()
	if err != nil {
		return err
	}
	for _, name := range []string{"q", "dead", "altq", "nodlx", "tx"} {
		n, err := ch.QueueDelete(s.q(name), false, false, false)
		if err != nil {
			return fmt.Errorf("queue.delete %s: %w", name, err)
		}
		s.emit("queue-delete-ok", "queue", s.q(name), "messages", n)
	}
	names := []string{s.q("x"), s.q("alt"), s.q("dlx")}
	for _, name := range names {
		if err := ch.ExchangeDelete(name, false, false); err != nil {
			return fmt.Errorf("exchange.delete %s: %w", name, err)
		}
	}
	s.emit("exchange-delete-ok", "names", names)
	if err := ch.Close(); err != nil {
		return err
	}
	if err := s.conn.Close(); err != nil {
		return fmt.Errorf("connection.close: %w", err)
	}
	s.emit("connection-close-ok")
	return nil
}
