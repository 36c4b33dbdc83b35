#!/bin/sh
# The compatibility scenario, written with the amqp-tools command-line
# clients (Debian package amqp-tools, built on librabbitmq):
#
#     sh amqp_tools.sh amqp://guest:guest@127.0.0.1:5672 compat.x
#
# The URL has no trailing slash: librabbitmq reads "/" as an empty vhost.
# amqp-tools can express a subset of the scenario: queue declare (durable,
# server-named, mismatched), publish with properties and headers, publish
# to an exchange, basic.get (and get-empty), consume with -c and -p (each
# message acked after the command ran), bind through amqp-consume -e/-r,
# large bodies read from stdin, queue delete, and the errors a broker sends.
#
# It prints its transcript on stdout, one JSON object per line with a "step"
# key. Every name it creates starts with the prefix; the Go test replaces the
# prefix and server-named queues with placeholders before it compares runs.
# A failed expectation prints a "check-failed" line and makes the exit
# status 1. Scratch files go to $TMPDIR.

set -u

if [ $# -ne 2 ]; then
	echo "usage: $0 URL PREFIX" >&2
	exit 2
fi
U=$1
P=$2
failed=0
work=$(mktemp -d "${TMPDIR:-/tmp}/amqp-tools.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT

# str prints its argument as a JSON string (the texts here are ASCII).
str() {
	printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr '\n\t' '  ')"
}

# emit prints one transcript line from a step name and "key" json-value pairs.
emit() {
	line="{\"step\":$(str "$1")"
	shift
	while [ $# -ge 2 ]; do
		line="$line,$(str "$1"):$2"
		shift 2
	done
	printf '%s}\n' "$line"
}

expect() { # expect CONDITION-EXIT-STATUS WHAT
	if [ "$1" -ne 0 ]; then
		failed=1
		emit check-failed what "$(str "$2")"
	fi
}

# run runs an amqp-tools command, keeping stdout in $out, stderr in $err and
# the exit status in $rc.
run() {
	"$@" >"$work/out" 2>"$work/err"
	rc=$?
	out=$(cat "$work/out")
	err=$(cat "$work/err")
}

# --- refusals: a wrong password (403) and a missing vhost (530) ------------
# librabbitmq does not announce authentication_failure_close; RabbitMQ
# still answers the bad password with connection.close 403.
bad_password=$(printf '%s' "$U" | sed 's|^amqp://guest:guest@|amqp://guest:wrong@|')
run amqp-get -u "$bad_password" -q "$P.q"
emit connection-refused case '"bad-password"' rc $rc error "$(str "$err")"
[ $rc -eq 1 ]
expect $? "a wrong password is refused"
run amqp-get -u "$U/$P.nosuch" -q "$P.q"
emit connection-refused case '"missing-vhost"' rc $rc error "$(str "$err")"
[ $rc -eq 1 ]
expect $? "a missing vhost is refused"

# --- declare ---------------------------------------------------------------
run amqp-declare-queue -u "$U" -q "$P.q" -d
emit queue-declare rc $rc queue "$(str "$out")" durable true
expect $rc "declaring a durable queue works"

run amqp-declare-queue -u "$U" -q "$P.q" -d
emit queue-declare rc $rc queue "$(str "$out")" durable true

run amqp-declare-queue -u "$U" -q "$P.q"
emit queue-declare rc $rc durable false error "$(str "$err")"
[ $rc -ne 0 ]
expect $? "redeclaring a durable queue as transient fails"

run amqp-declare-queue -u "$U" -q ""
named=$out
emit server-named rc $rc queue "$(str "$named")"
case $named in amq.gen-*) ok=0 ;; *) ok=1 ;; esac
expect $ok "a server-named queue starts with amq.gen-"
run amqp-delete-queue -u "$U" -q "$named"
emit queue-delete rc $rc queue "$(str "$named")" messages "$(str "$out")"

# --- publish with properties and headers -----------------------------------
for i in 1 2 3; do
	run amqp-publish -u "$U" -r "$P.q" -p -C text/plain -E utf-8 -t reply \
		-H "x-n: $i" -H "x-s: str" -b "msg-$i"
	emit publish rc $rc body "$(str "msg-$i")"
	expect $rc "publishing msg-$i works"
done

# --- basic.get ---------------------------------------------------------------
run amqp-get -u "$U" -q "$P.q"
emit get rc $rc body "$(str "$out")"
[ "$out" = msg-1 ]
expect $? "basic.get returns the first message"

# --- consume with a count and a prefetch (acks after each command) ---------
amqp-consume -u "$U" -q "$P.q" -c 2 -p 2 -- \
	sh -c 'printf "{\"step\":\"deliver\",\"body\":\"%s\"}\n" "$(cat)"' 2>"$work/err"
rc=$?
emit consume-done rc $rc count 2
expect $rc "amqp-consume -c 2 consumes two messages and stops"

run amqp-get -u "$U" -q "$P.q"
emit get-empty rc $rc body "$(str "$out")"
[ $rc -eq 2 ]
expect $? "basic.get on an empty queue answers get-empty (exit status 2)"

# --- bind through amqp-consume -e/-r, then publish to the exchange ---------
# amqp-consume declares its queue (auto-delete) and binds it before it
# consumes. The publisher cannot tell when the binding exists, so it
# publishes until the consumer printed a delivery (each try before the
# binding is unroutable and dropped), with a deadline.
amqp-consume -u "$U" -q "$P.b" -e amq.direct -r "$P.key" -c 1 -- \
	sh -c 'printf "{\"step\":\"deliver\",\"body\":\"%s\"}\n" "$(cat)"' \
	>"$work/bound" 2>"$work/err" &
consumer=$!
tries=0
while [ ! -s "$work/bound" ] && [ $tries -lt 100 ]; do
	amqp-publish -u "$U" -e amq.direct -r "$P.key" -b via-exchange 2>>"$work/err"
	tries=$((tries + 1))
	[ -s "$work/bound" ] || sleep 0.1
done
[ -s "$work/bound" ] || kill $consumer 2>/dev/null
wait $consumer
rc=$?
cat "$work/bound"
emit bind-and-consume rc $rc queue "$(str "$P.b")" exchange '"amq.direct"' routing_key "$(str "$P.key")"
expect $rc "a publish to amq.direct reaches the queue amqp-consume bound"

# --- large bodies: many body frames (frame_max 131072) --------------------
for size in 1048576 5242880; do
	seq 1 2000000 | head -c $size >"$work/sent"
	amqp-publish -u "$U" -r "$P.q" <"$work/sent" 2>"$work/err"
	rc=$?
	emit publish rc $rc size $size
	amqp-get -u "$U" -q "$P.q" >"$work/got" 2>"$work/err"
	rc=$?
	got=$(wc -c <"$work/got" | tr -d ' ')
	sum=$(sha256sum <"$work/got" | cut -d' ' -f1)
	if cmp -s "$work/sent" "$work/got"; then same=true; else same=false; fi
	emit get-large rc $rc size $got sha256 "$(str "$sum")" identical $same
	[ $same = true ]
	expect $? "a $size-byte body arrives byte-identical"
done

# --- errors the broker sends -------------------------------------------------
run amqp-get -u "$U" -q "$P.missing"
emit get rc $rc error "$(str "$err")"
[ $rc -eq 1 ]
expect $? "basic.get on a missing queue fails with the broker's 404"

# --- delete -------------------------------------------------------------------
run amqp-publish -u "$U" -r "$P.q" -b left-behind
run amqp-delete-queue -u "$U" -q "$P.q" -e
emit queue-delete rc $rc if_empty true error "$(str "$err")"
[ $rc -ne 0 ]
expect $? "deleting a non-empty queue with --if-empty fails"
run amqp-delete-queue -u "$U" -q "$P.q"
emit queue-delete rc $rc messages "$(str "$out")"
expect $rc "deleting the queue works"
[ "$out" = 1 ]
expect $? "queue.delete-ok counts the one message left"

exit $failed
