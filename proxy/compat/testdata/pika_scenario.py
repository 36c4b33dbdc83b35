#!/usr/bin/python3
"""The compatibility scenario, written with python3-pika.

Run with Debian's interpreter (/usr/bin/python3, which has python3-pika):

    /usr/bin/python3 pika_scenario.py --url amqp://guest:guest@127.0.0.1:5672/%2F --prefix compat.x

It prints its transcript on stdout, one JSON object per line, each with a
"step" key. Every name it creates starts with --prefix; the Go test replaces
the prefix, server-named queues and consumer tags with placeholders before it
compares two runs. Checks of what a broker must do print a "check-failed"
line; an exception prints an "error" line. Either makes the exit status 1.
Everything is deterministic for a given broker: no timing is printed.
"""

import argparse
import datetime
import decimal
import hashlib
import json
import random
import sys
import time
import traceback

import pika
from pika.exceptions import ChannelClosedByBroker, NackError, UnroutableError

WAIT_SECONDS = 15.0
FRAME_MAX = 131072
HEARTBEAT = 10
IDLE_SECONDS = 2.0


def jsonable(v):
    """Turns what pika decodes into JSON values; timestamps the broker adds
    (x-death "time") become a placeholder."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return {"hex": v.hex()}
    if isinstance(v, datetime.datetime):
        return "<time>"
    if isinstance(v, decimal.Decimal):
        return {"decimal": str(v)}
    return v


PROPERTY_NAMES = (
    "content_type", "content_encoding", "headers", "delivery_mode", "priority",
    "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
    "type", "user_id", "app_id", "cluster_id",
)


def props_dict(p):
    if p is None:
        return None
    return {n: getattr(p, n) for n in PROPERTY_NAMES if getattr(p, n) is not None}


class Scenario:
    def __init__(self, url, prefix, channels):
        self.url = url
        self.p = prefix
        self.channel_count = channels
        self.failed = False
        self.conn = None

    # --- transcript ------------------------------------------------------

    def emit(self, step, **fields):
        fields["step"] = step
        sys.stdout.write(json.dumps(jsonable(fields), sort_keys=True) + "\n")
        sys.stdout.flush()

    def expect(self, cond, what):
        if not cond:
            self.failed = True
            self.emit("check-failed", what=what)

    def wait_for(self, cond, what):
        """Lets pika read frames until cond() holds; raises after WAIT_SECONDS."""
        deadline = time.monotonic() + WAIT_SECONDS
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError("waited %.0fs for %s" % (WAIT_SECONDS, what))
            self.conn.process_data_events(time_limit=0.05)

    def poll_get(self, ch, queue, what):
        """basic.get until a message arrives (for asynchronous routing such
        as dead-lettering); the empty answers are not part of the transcript."""
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            m, p, b = ch.basic_get(queue)
            if m is not None:
                return m, p, b
            if time.monotonic() > deadline:
                raise TimeoutError("waited %.0fs for %s" % (WAIT_SECONDS, what))
            self.conn.process_data_events(time_limit=0.05)

    def q(self, name):
        return self.p + "." + name

    def emit_delivery(self, step, m, p, b, **extra):
        fields = dict(
            delivery_tag=m.delivery_tag,
            redelivered=m.redelivered,
            exchange=m.exchange,
            routing_key=m.routing_key,
            body=b,
            properties=props_dict(p),
        )
        if hasattr(m, "consumer_tag"):
            fields["consumer_tag"] = m.consumer_tag
        if hasattr(m, "message_count"):
            fields["message_count"] = m.message_count
        fields.update(extra)
        self.emit(step, **fields)

    def emit_queue(self, step, r):
        self.emit(step, queue=r.method.queue, messages=r.method.message_count,
                  consumers=r.method.consumer_count)

    # --- steps -----------------------------------------------------------

    def connect(self):
        params = pika.URLParameters(self.url)
        params.heartbeat = HEARTBEAT
        params.frame_max = FRAME_MAX
        params.blocked_connection_timeout = None
        self.conn = pika.BlockingConnection(params)
        impl = self.conn._impl  # negotiated values live on the adapter
        sp = impl.server_properties
        self.emit("connect", heartbeat=impl.params.heartbeat,
                  frame_max=impl.params.frame_max,
                  channel_max=impl.params.channel_max,
                  product=sp.get("product"),
                  capabilities=sp.get("capabilities"))
        self.expect(impl.params.heartbeat == HEARTBEAT, "heartbeat negotiated to the client's %d" % HEARTBEAT)
        self.expect(impl.params.frame_max == FRAME_MAX, "frame_max negotiated to %d" % FRAME_MAX)

    def refusals(self):
        """The broker refuses a wrong password (403, announced with
        authentication_failure_close) and a missing vhost (530)."""
        for case in ("bad-password", "missing-vhost"):
            params = pika.URLParameters(self.url)
            if case == "bad-password":
                params.credentials = pika.PlainCredentials("guest", "wrong")
            else:
                params.virtual_host = self.q("nosuch")
            try:
                pika.BlockingConnection(params).close()
                self.expect(False, "the broker refuses the %s connection" % case)
            except pika.exceptions.AMQPConnectionError as e:
                self.emit("connection-refused", case=case, error=type(e).__name__,
                          detail=str(e.args[0]) if e.args else "")

    def topology(self):
        ch = self.conn.channel()
        ch.exchange_declare(self.q("dlx"), "fanout")
        ch.exchange_declare(self.q("alt"), "fanout")
        ch.exchange_declare(self.q("x"), "direct", arguments={"alternate-exchange": self.q("alt")})
        ch.exchange_declare(self.q("x"), "direct", passive=True)
        self.emit("exchange-declare", names=[self.q("dlx"), self.q("alt"), self.q("x")])
        for name, args in (
            ("dead", None),
            ("altq", None),
            ("q", {"x-dead-letter-exchange": self.q("dlx"), "x-max-priority": 5,
                   "x-message-ttl": 600000}),
            ("nodlx", None),
        ):
            self.emit_queue("queue-declare", ch.queue_declare(self.q(name), arguments=args))
        ch.queue_bind(self.q("dead"), self.q("dlx"))
        ch.queue_bind(self.q("altq"), self.q("alt"))
        ch.queue_bind(self.q("q"), self.q("x"), "k")
        self.emit("bind", bindings=[["dead", "dlx", ""], ["altq", "alt", ""], ["q", "x", "k"]])
        self.emit_queue("queue-declare-passive", ch.queue_declare(self.q("q"), passive=True))

        try:
            ch.queue_declare(self.q("q"), arguments={"x-max-priority": 9})
            self.expect(False, "redeclaring a queue with other arguments fails")
        except ChannelClosedByBroker as e:
            self.emit("channel-error", op="redeclare-mismatch", code=e.reply_code, text=e.reply_text)
        # The number of a channel the broker closed is free again: reopen it.
        number = ch.channel_number
        ch = self.conn.channel(channel_number=number)
        r = ch.queue_declare(self.q("q"), passive=True)
        self.emit("channel-reopen", same_number=ch.channel_number == number,
                  queue=r.method.queue)
        ch.basic_publish(self.q("noexchange"), "k", b"lost")
        try:
            ch.queue_declare(self.q("q"), passive=True)
            self.expect(False, "a publish to a missing exchange closes the channel")
        except ChannelClosedByBroker as e:
            self.emit("channel-error", op="publish-no-exchange", code=e.reply_code, text=e.reply_text)
        ch = self.conn.channel()
        try:
            ch.queue_declare(self.q("missing"), passive=True)
            self.expect(False, "a passive declare of a missing queue fails")
        except ChannelClosedByBroker as e:
            self.emit("channel-error", op="passive-missing", code=e.reply_code, text=e.reply_text)
        ch = self.conn.channel()
        r = ch.queue_declare("", exclusive=True)
        self.emit_queue("server-named", r)
        self.expect(r.method.queue.startswith("amq.gen-"), "a server-named queue starts with amq.gen-")
        ch.close()
        self.emit("channel-close", ok=True)

    def confirms(self):
        ch = self.ch = self.conn.channel()
        ch.confirm_delivery()
        self.emit("confirm-select", ok=True)
        for i in (1, 2, 3):
            props = pika.BasicProperties(
                content_type="text/plain", content_encoding="utf-8",
                headers={"n": 7, "s": "str", "neg": -3, "flag": True,
                         "nested": {"a": [1, "b", False]}},
                delivery_mode=2, priority=i, correlation_id="corr-%d" % i,
                reply_to="reply", expiration="600000", message_id="m%d" % i,
                timestamp=1700000000 + i, type="kind", app_id="compat")
            ch.basic_publish(self.q("x"), "k", ("msg-%d" % i).encode(), props, mandatory=True)
            self.emit("publish-confirmed", body="msg-%d" % i)
        try:
            ch.basic_publish("", self.q("none"), b"unroutable", mandatory=True)
            self.expect(False, "a mandatory unroutable publish comes back")
        except UnroutableError as e:
            for m in e.messages:
                self.emit("return", code=m.method.reply_code, text=m.method.reply_text,
                          exchange=m.method.exchange, routing_key=m.method.routing_key,
                          body=m.body)
        ch.basic_publish(self.q("x"), "other", b"to-alternate", mandatory=True)
        self.emit("publish-confirmed", body="to-alternate")
        # A full queue that rejects publishes: the broker nacks the second.
        self.emit_queue("queue-declare", ch.queue_declare(
            self.q("full"), arguments={"x-max-length": 1, "x-overflow": "reject-publish"}))
        ch.basic_publish("", self.q("full"), b"fits")
        self.emit("publish-confirmed", body="fits")
        try:
            ch.basic_publish("", self.q("full"), b"overflow")
            self.expect(False, "a publish to a full reject-publish queue is nacked")
        except NackError as e:
            self.emit("publish-nacked", body="overflow", error=type(e).__name__)
        r = ch.queue_delete(self.q("full"))
        self.emit("queue-delete-ok", messages=r.method.message_count)

    def get(self):
        ch = self.ch
        m, p, b = ch.basic_get(self.q("q"))
        self.emit_delivery("get", m, p, b)
        self.expect(b == b"msg-3", "the priority queue gives the highest priority first")
        ch.basic_ack(m.delivery_tag)
        m, p, b = ch.basic_get(self.q("altq"))
        self.emit_delivery("get", m, p, b)
        ch.basic_ack(m.delivery_tag)

    def consume(self):
        ch = self.ch
        got = []
        ch.basic_consume(self.q("q"), lambda c, m, p, b: got.append((m, p, b)),
                         consumer_tag=self.q("c1"))
        self.emit("consume-ok", consumer_tag=self.q("c1"))
        self.wait_for(lambda: len(got) >= 2, "two deliveries")
        for m, p, b in got[:2]:
            self.emit_delivery("deliver", m, None, b)
        ch.basic_nack(got[0][0].delivery_tag, requeue=True)
        self.emit("nack", delivery_tag=got[0][0].delivery_tag, requeue=True)
        self.wait_for(lambda: len(got) >= 3, "the nacked message to come back")
        m, p, b = got[2]
        self.emit_delivery("deliver", m, None, b)
        self.expect(m.redelivered and b == got[0][2], "a requeued message comes back redelivered")
        ch.basic_ack(got[1][0].delivery_tag)
        ch.basic_ack(m.delivery_tag)
        ch.basic_cancel(self.q("c1"))
        self.emit("cancel-ok", consumer_tag=self.q("c1"), deliveries=len(got))
        self.emit_queue("queue-declare-passive", ch.queue_declare(self.q("q"), passive=True))

    def reject(self):
        ch = self.ch
        ch.basic_publish(self.q("x"), "k", b"dl-1", pika.BasicProperties(priority=1))
        ch.basic_publish("", self.q("nodlx"), b"drop-1")
        ch.basic_publish("", self.q("nodlx"), b"requeue-1")
        m, p, b = ch.basic_get(self.q("q"))
        self.emit_delivery("get", m, p, b)
        ch.basic_reject(m.delivery_tag, requeue=False)
        self.emit("reject", delivery_tag=m.delivery_tag, requeue=False)
        m, p, b = self.poll_get(ch, self.q("dead"), "the dead-lettered message")
        self.emit_delivery("dead-letter", m, p, b)
        self.expect(b == b"dl-1" and "x-death" in (p.headers or {}), "a rejected message dead-letters with x-death")
        ch.basic_ack(m.delivery_tag)

        m, p, b = ch.basic_get(self.q("nodlx"))
        self.emit_delivery("get", m, p, b)
        ch.basic_reject(m.delivery_tag, requeue=False)
        self.emit("reject", delivery_tag=m.delivery_tag, requeue=False)
        m, p, b = ch.basic_get(self.q("nodlx"))
        self.emit_delivery("get", m, p, b)
        ch.basic_reject(m.delivery_tag, requeue=True)
        self.emit("reject", delivery_tag=m.delivery_tag, requeue=True)
        m, p, b = ch.basic_get(self.q("nodlx"))
        self.emit_delivery("get", m, p, b)
        self.expect(b == b"requeue-1" and m.redelivered, "a message rejected with requeue comes back redelivered")
        ch.basic_ack(m.delivery_tag)

    def recover(self):
        """basic.recover with requeue: every unacked message goes back and
        comes again redelivered."""
        ch = self.ch
        for body in (b"rec-1", b"rec-2"):
            ch.basic_publish("", self.q("nodlx"), body)
        for _ in range(2):
            m, p, b = ch.basic_get(self.q("nodlx"))
            self.emit_delivery("get", m, p, b)
        ch.basic_recover(requeue=True)
        self.emit("recover-ok", requeue=True)
        for body in (b"rec-1", b"rec-2"):
            m, p, b = self.poll_get(ch, self.q("nodlx"), "a recovered message")
            self.emit_delivery("get", m, p, b)
            self.expect(b == body and m.redelivered, "a recovered message comes back redelivered, in order")
        ch.basic_ack(m.delivery_tag, multiple=True)
        self.emit("ack", delivery_tag=m.delivery_tag, multiple=True)

    def get_empty(self):
        for name in ("q", "nodlx", "dead"):
            m, p, b = self.ch.basic_get(self.q(name))
            self.emit("get-empty", queue=self.q(name), empty=m is None)
            self.expect(m is None, "queue %s is empty" % name)

    def qos(self):
        ch = self.conn.channel()
        ch.basic_qos(prefetch_count=2)
        self.emit("qos-ok", prefetch_count=2)
        # Confirms make the counts below exact: RabbitMQ answers a passive
        # declare ahead of publishes still on their way into the queue.
        ch.confirm_delivery()
        ch.queue_declare(self.q("qos"))
        for i in range(1, 6):
            ch.basic_publish("", self.q("qos"), ("qos-%d" % i).encode())
        self.emit_queue("queue-declare-passive", ch.queue_declare(self.q("qos"), passive=True))
        got = []
        ch.basic_consume(self.q("qos"), lambda c, m, p, b: got.append((m, p, b)),
                         consumer_tag=self.q("cq"))
        self.wait_for(lambda: len(got) >= 2, "two deliveries under prefetch 2")
        r = ch.queue_declare(self.q("qos"), passive=True)
        self.conn.process_data_events(time_limit=0)
        self.emit_queue("queue-declare-passive", r)
        self.emit("prefetch-window", deliveries=len(got), bodies=[b for _, _, b in got])
        self.expect(len(got) == 2 and r.method.message_count == 3, "prefetch 2 holds back the other 3")
        ch.basic_ack(got[0][0].delivery_tag)
        self.emit("ack", delivery_tag=got[0][0].delivery_tag)
        self.wait_for(lambda: len(got) >= 3, "one more delivery after one ack")
        r = ch.queue_declare(self.q("qos"), passive=True)
        self.conn.process_data_events(time_limit=0)
        self.emit_queue("queue-declare-passive", r)
        self.emit("prefetch-window", deliveries=len(got), bodies=[b for _, _, b in got])
        self.expect(len(got) == 3 and r.method.message_count == 2, "one ack lets exactly one more through")
        # Cancel before the last ack: an ack frees the window, and a consumer
        # still there would be sent the rest at once.
        ch.basic_cancel(self.q("cq"))
        self.emit("cancel-ok", consumer_tag=self.q("cq"))
        ch.basic_ack(got[-1][0].delivery_tag, multiple=True)
        self.emit("ack", delivery_tag=got[-1][0].delivery_tag, multiple=True)
        r = ch.queue_delete(self.q("qos"))
        self.emit("queue-delete-ok", messages=r.method.message_count)
        ch.close()

    def cancel_notify(self):
        ch = self.conn.channel()
        cancelled = []
        ch.add_on_cancel_callback(lambda f: cancelled.append(f.method.consumer_tag))
        ch.queue_declare(self.q("cancel"))
        ch.basic_consume(self.q("cancel"), lambda c, m, p, b: None, consumer_tag=self.q("cc"))
        self.emit("consume-ok", consumer_tag=self.q("cc"))
        other = self.conn.channel()
        r = other.queue_delete(self.q("cancel"))
        self.emit("queue-delete-ok", messages=r.method.message_count)
        self.wait_for(lambda: cancelled, "basic.cancel from the broker")
        self.emit("server-cancel", consumer_tags=cancelled)
        other.close()
        ch.close()

    def tx(self):
        ch = self.conn.channel()
        ch.queue_declare(self.q("tx"))
        ch.tx_select()
        self.emit("tx-select-ok")
        ch.basic_publish("", self.q("tx"), b"rolled-back")
        ch.tx_rollback()
        self.emit("tx-rollback-ok")
        ch.basic_publish("", self.q("tx"), b"committed")
        ch.tx_commit()
        self.emit("tx-commit-ok")
        self.emit_queue("queue-declare-passive", ch.queue_declare(self.q("tx"), passive=True))
        m, p, b = ch.basic_get(self.q("tx"))
        self.emit_delivery("get", m, p, b)
        self.expect(b == b"committed", "only the committed publish arrives")
        ch.basic_ack(m.delivery_tag)
        ch.tx_commit()
        m, p, b = ch.basic_get(self.q("tx"))
        self.emit("get-empty", queue=self.q("tx"), empty=m is None)
        self.expect(m is None, "the rolled-back publish never arrives")
        ch.close()

    def large(self):
        ch = self.conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(self.q("big"))
        sent = []
        for n in (1 << 20, 5 << 20):
            body = random.Random(n).randbytes(n)
            sent.append(body)
            ch.basic_publish("", self.q("big"), body)
            per_frame = FRAME_MAX - 8
            self.emit("publish-confirmed", size=n, body_frames=(n + per_frame - 1) // per_frame)
        for body in sent:
            m, p, b = ch.basic_get(self.q("big"), auto_ack=True)
            self.emit("get-large", size=len(b), sha256=hashlib.sha256(b).hexdigest(),
                      identical=b == body, message_count=m.message_count)
            self.expect(b == body, "a %d-byte body arrives byte-identical" % len(body))
        ch.queue_delete(self.q("big"))
        ch.close()

    def channels(self):
        chans = [self.conn.channel() for _ in range(self.channel_count)]
        ok = 0
        for i, ch in enumerate(chans):
            r = ch.queue_declare("", exclusive=True)
            ch.basic_publish("", r.method.queue, ("ch-%d" % i).encode())
            m, p, b = ch.basic_get(r.method.queue, auto_ack=True)
            if m is not None and b == ("ch-%d" % i).encode():
                ok += 1
        numbers = {ch.channel_number for ch in chans}
        for ch in chans:
            ch.close()
        self.emit("channels", opened=len(chans), distinct=len(numbers), round_trips_ok=ok)
        self.expect(ok == self.channel_count, "every channel's round trip works")

    def heartbeat(self):
        """A second connection with a 1 s heartbeat stays idle for
        IDLE_SECONDS: only heartbeats flow, and it must still work after."""
        params = pika.URLParameters(self.url)
        params.heartbeat = 1
        c = pika.BlockingConnection(params)
        negotiated = c._impl.params.heartbeat
        deadline = time.monotonic() + IDLE_SECONDS
        while time.monotonic() < deadline:
            c.process_data_events(time_limit=deadline - time.monotonic())
        checker = c._impl._heartbeat_checker
        received = getattr(checker, "_heartbeat_frames_received", 0) if checker else 0
        ch = c.channel()
        r = ch.queue_declare("", exclusive=True)
        ch.close()
        c.close()
        self.emit("heartbeat", negotiated=negotiated, idle_seconds=IDLE_SECONDS,
                  heartbeats_received=received > 0, alive=r.method.queue.startswith("amq.gen-"))
        self.expect(negotiated == 1, "a 1 s heartbeat is negotiated")
        self.expect(received > 0, "heartbeat frames arrive on an idle connection")

    def cleanup(self):
        ch = self.conn.channel()
        for name in ("q", "dead", "altq", "nodlx", "tx"):
            r = ch.queue_delete(self.q(name))
            self.emit("queue-delete-ok", queue=self.q(name), messages=r.method.message_count)
        for name in ("x", "alt", "dlx"):
            ch.exchange_delete(self.q(name))
        self.emit("exchange-delete-ok", names=[self.q(n) for n in ("x", "alt", "dlx")])
        ch.close()
        self.conn.close()
        self.emit("connection-close-ok")

    def blocked(self):
        """connection.blocked and connection.unblocked around a memory alarm
        that the Go test raises and clears: it prints "ready" and waits for
        "alarm-on" on stdin, publishes, prints "blocked" once the broker
        blocks the connection, waits for "alarm-off", then checks the
        message went through."""
        events = []
        self.conn.add_on_connection_blocked_callback(
            lambda conn, f: events.append(("blocked", f.method.reason)))
        self.conn.add_on_connection_unblocked_callback(
            lambda conn, f: events.append(("unblocked", None)))
        ch = self.conn.channel()
        ch.queue_declare(self.q("blocked"))
        self.emit("ready")
        self.expect(sys.stdin.readline().strip() == "alarm-on", "the test raises the memory alarm")
        ch.basic_publish("", self.q("blocked"), b"while-blocked")
        self.wait_for(lambda: events, "connection.blocked")
        self.emit("blocked", reason=events[0][1])
        self.expect(events[0][0] == "blocked", "connection.blocked comes first")
        self.expect(sys.stdin.readline().strip() == "alarm-off", "the test clears the memory alarm")
        self.wait_for(lambda: len(events) >= 2, "connection.unblocked")
        self.emit("unblocked", events=[e[0] for e in events])
        m, p, b = self.poll_get(ch, self.q("blocked"), "the publish made while blocked")
        self.emit_delivery("get", m, p, b)
        ch.basic_ack(m.delivery_tag)
        r = ch.queue_delete(self.q("blocked"))
        self.emit("queue-delete-ok", messages=r.method.message_count)
        ch.close()
        self.conn.close()
        self.emit("connection-close-ok")

    def run(self, steps):
        all_steps = [
            ("connect", self.connect), ("refusals", self.refusals),
            ("topology", self.topology),
            ("confirms", self.confirms), ("get", self.get), ("consume", self.consume),
            ("reject", self.reject), ("recover", self.recover),
            ("get-empty", self.get_empty), ("qos", self.qos),
            ("cancel-notify", self.cancel_notify), ("tx", self.tx), ("large", self.large),
            ("channels", self.channels), ("heartbeat", self.heartbeat),
            ("cleanup", self.cleanup),
        ]
        if steps == ["blocked"]:
            all_steps = [("connect", self.connect), ("blocked", self.blocked)]
        for name, fn in all_steps:
            if steps and name not in steps and name not in ("connect", "cleanup"):
                continue
            began = time.monotonic()
            try:
                fn()
                sys.stderr.write("step %s took %.3fs\n" % (name, time.monotonic() - began))
            except Exception as e:  # the transcript shows where a leg broke
                self.emit("error", during=name, error="%s: %s" % (type(e).__name__, e))
                sys.stderr.write(traceback.format_exc())
                self.failed = True
                break
        if self.conn is not None and self.conn.is_open:
            self.conn.close()
        return 1 if self.failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--channels", type=int, default=200)
    ap.add_argument("--steps", default="",
                    help="comma-separated subset of the steps; \"blocked\" alone runs the memory-alarm scenario")
    a = ap.parse_args()
    steps = [s for s in a.steps.split(",") if s]
    sys.exit(Scenario(a.url, a.prefix, a.channels).run(steps))


if __name__ == "__main__":
    main()
