package chaos

import (
	"context"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Drain reads every message left in queue through addr with basic.get
// until the queue is empty, acks them all at the end and returns them in
// the order read. Run it after the workload stopped, so nothing is held
// unacked by a consumer. On an error nothing is acked (the messages stay in
// the queue) and Drain may be called again.
func Drain(ctx context.Context, addr, queue string) ([]Drained, error) {
	var out []Drained
	err := withChannel(ctx, addr, func(ch *amqp.Channel) error {
		var last uint64
		for ctx.Err() == nil {
			d, ok, err := ch.Get(queue, false)
			if err != nil {
				return err
			}
			if !ok {
				break
			}
			id, raw := messageID(d.MessageId, d.Body)
			dr := Drained{Msg: id, Redelivered: d.Redelivered}
			if id.IsZero() {
				dr.Raw = raw
			}
			out = append(out, dr)
			last = d.DeliveryTag
		}
		if ctx.Err() != nil || last == 0 {
			return nil //nolint:nilerr // ctx ending is how a drain stops, not a failure
		}
		if err := ch.Ack(last, true); err != nil {
			return err
		}
		// A round trip, so the acks are in before the connection closes.
		_, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
