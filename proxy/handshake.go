package proxy

import (
	"errors"
	"fmt"
	"time"

	"github.com/mirrorproxy/mirrorproxy/proxy/amqp"
)

// handshakeFrameMax bounds frames before tuning. RabbitMQ itself accepts
// large start-ok frames (OAuth tokens); the bound only keeps memory finite.
const handshakeFrameMax = 128 << 10

// errHandshakeClosed means the connection ended during the handshake in a way
// that was relayed to the client already (the broker refused the login or
// the vhost); there is nothing more to report.
var errHandshakeClosed = errors.New("proxy: connection closed during handshake")

// handshake runs connection.start … connection.open-ok. The broker's start
// and secure challenges and the client's start-ok and secure-ok pass
// unchanged: the broker authenticates the client. Tuning is per side: the
// client is offered the proxy's frame_max and heartbeat, the broker is told
// the proxy's, so either side can change later without the other noticing.
func (s *session) handshake() error {
	opts := &s.srv.opts
	s.cr.SetMaxFrameSize(handshakeFrameMax)
	s.ur.SetMaxFrameSize(handshakeFrameMax)

	// connection.start from the broker, passed on unchanged.
	f, err := s.readUpstreamMethod(amqp.ConnectionStartID)
	if err != nil {
		return err
	}
	if err := s.cout.write(f.Raw); err != nil {
		return clientGone(err)
	}

	// start-ok from the client: keep credentials and capabilities.
	f, err = s.readClientMethod(amqp.ConnectionStartOkID)
	if err != nil {
		return err
	}
	m, err := amqp.DecodeMethod(f.Payload)
	if err != nil {
		return s.clientFault(err)
	}
	startOk := m.(*amqp.ConnectionStartOk)
	s.st.mechanism = startOk.Mechanism
	s.st.response = []byte(startOk.Response)
	s.st.locale = startOk.Locale
	s.st.clientProperties = startOk.ClientProperties
	s.st.caps = capabilitiesOf(startOk.ClientProperties)
	if err := s.uout.write(f.Raw); err != nil {
		return upstreamGone(err)
	}

	// secure/secure-ok rounds until tune, or the broker's refusal.
	var tune *amqp.ConnectionTune
	for tune == nil {
		f, err := s.readUpstream()
		if err != nil {
			return err
		}
		key, _ := amqp.MethodKey(f.Payload)
		switch key {
		case amqp.ConnectionSecureID:
			if err := s.cout.write(f.Raw); err != nil {
				return clientGone(err)
			}
			cf, err := s.readClientMethod(amqp.ConnectionSecureOkID)
			if err != nil {
				return err
			}
			if err := s.uout.write(cf.Raw); err != nil {
				return upstreamGone(err)
			}
		case amqp.ConnectionTuneID:
			m, err := amqp.DecodeMethod(f.Payload)
			if err != nil {
				return s.upstreamFault(err)
			}
			tune = m.(*amqp.ConnectionTune)
		case amqp.ConnectionCloseID:
			return s.relayHandshakeClose(f)
		default:
			return s.upstreamFault(connErr(amqp.CommandInvalid, "broker sent %s during the handshake", amqp.MethodName(key)))
		}
	}

	// Our offer to the client.
	offer := amqp.ConnectionTune{
		ChannelMax: tune.ChannelMax,
		FrameMax:   opts.FrameMax,
		Heartbeat:  tune.Heartbeat,
	}
	if opts.ChannelMax != 0 && (offer.ChannelMax == 0 || opts.ChannelMax < offer.ChannelMax) {
		offer.ChannelMax = opts.ChannelMax
	}
	if hb := uint16(opts.Heartbeat / time.Second); opts.Heartbeat > 0 && (offer.Heartbeat == 0 || hb < offer.Heartbeat) {
		offer.Heartbeat = hb
	}
	if err := s.cout.write(amqp.AppendMethodFrame(nil, 0, &offer)); err != nil {
		return clientGone(err)
	}
	f, err = s.readClientMethod(amqp.ConnectionTuneOkID)
	if err != nil {
		return err
	}
	m, err = amqp.DecodeMethod(f.Payload)
	if err != nil {
		return s.clientFault(err)
	}
	tuneOk := m.(*amqp.ConnectionTuneOk)
	if err := checkNegotiated("frame_max", amqp.FrameMinSize, offer.FrameMax, tuneOk.FrameMax); err != nil {
		return handshakeRefused(err)
	}
	if err := checkNegotiated("channel_max", 1, uint32(offer.ChannelMax), uint32(tuneOk.ChannelMax)); err != nil {
		return handshakeRefused(err)
	}
	s.st.client = tuneValues{channelMax: tuneOk.ChannelMax, frameMax: tuneOk.FrameMax, heartbeat: tuneOk.Heartbeat}
	if s.st.client.frameMax == 0 {
		s.st.client.frameMax = offer.FrameMax // the proxy offered no limit
	}

	// Our answer to the broker.
	up := amqp.ConnectionTuneOk{ChannelMax: tune.ChannelMax, FrameMax: min32nz(tune.FrameMax, opts.FrameMax)}
	if s.st.client.channelMax != 0 {
		up.ChannelMax = s.st.client.channelMax
	}
	if hb := uint16(opts.UpstreamHeartbeat / time.Second); opts.UpstreamHeartbeat > 0 {
		up.Heartbeat = hb
		if tune.Heartbeat != 0 && tune.Heartbeat < hb {
			up.Heartbeat = tune.Heartbeat
		}
	}
	s.st.upstream = tuneValues{channelMax: up.ChannelMax, frameMax: up.FrameMax, heartbeat: up.Heartbeat}
	if err := s.uout.write(amqp.AppendMethodFrame(nil, 0, &up)); err != nil {
		return upstreamGone(err)
	}
	s.cr.SetMaxFrameSize(s.st.client.frameMax)
	s.ur.SetMaxFrameSize(s.st.upstream.frameMax)

	// connection.open and its answer.
	f, err = s.readClientMethod(amqp.ConnectionOpenID)
	if err != nil {
		return err
	}
	m, err = amqp.DecodeMethod(f.Payload)
	if err != nil {
		return s.clientFault(err)
	}
	s.st.ringMu.Lock()
	s.st.vhost = m.(*amqp.ConnectionOpen).VirtualHost
	s.st.ringMu.Unlock()
	if err := s.uout.write(f.Raw); err != nil {
		return upstreamGone(err)
	}
	f, err = s.readUpstream()
	if err != nil {
		return err
	}
	switch key, _ := amqp.MethodKey(f.Payload); key {
	case amqp.ConnectionOpenOkID:
	case amqp.ConnectionCloseID:
		return s.relayHandshakeClose(f)
	default:
		return s.upstreamFault(connErr(amqp.CommandInvalid, "broker answered connection.open with %s", amqp.MethodName(key)))
	}
	if err := s.cout.write(f.Raw); err != nil {
		return clientGone(err)
	}
	return nil
}

// silentCloseDelay is how long RabbitMQ waits before it drops a connection
// whose handshake failed (rabbit_reader's SILENT_CLOSE_DELAY, against
// clients that retry in a loop).
const silentCloseDelay = 3 * time.Second

// handshakeRefused is a fault in the client's handshake that RabbitMQ
// answers by logging it and, after silentCloseDelay, dropping the
// connection without a connection.close: the proxy does the same.
func handshakeRefused(err error) error {
	reason, code := err.Error(), uint16(0)
	var fe *amqp.FrameError
	if errors.As(err, &fe) {
		reason, code = fe.Reason, fe.Code
	}
	return &sessionError{kind: kindHandshakeRefused, code: code, reason: reason}
}

// checkNegotiated checks a value of the client's tune-ok against the
// proxy's offer as RabbitMQ checks it against its own (rabbit_reader's
// validate_negotiated_integer_value): 0 means no limit, which is more than
// any limit offered; below min is refused too. The text is RabbitMQ's (it
// logs it, and sends no close: see handshakeRefused).
func checkNegotiated(field string, minimum, offered, value uint32) error {
	detail := ""
	if field == "channel_max" && value == 0 {
		detail = " (no limit)"
	}
	switch {
	case value != 0 && value < minimum:
		return connErr(amqp.NotAllowed, "NOT_ALLOWED - negotiated %s = %d%s is lower than the minimum allowed value (%d)", field, value, detail, minimum)
	case offered != 0 && (value == 0 || value > offered):
		return connErr(amqp.NotAllowed, "NOT_ALLOWED - negotiated %s = %d%s is higher than the maximum allowed value (%d)", field, value, detail, offered)
	}
	return nil
}

// relayHandshakeClose passes the broker's connection.close (a refused login
// or vhost) to the client and its close-ok back.
func (s *session) relayHandshakeClose(f amqp.Frame) error {
	if m, err := amqp.DecodeMethod(f.Payload); err == nil {
		c := m.(*amqp.ConnectionClose)
		s.log.Info().Uint16("code", c.ReplyCode).Str("reason", c.ReplyText).Msg("broker refused the connection")
	}
	if err := s.cout.write(f.Raw); err != nil {
		return clientGone(err)
	}
	if cf, err := s.readClientMethod(amqp.ConnectionCloseOkID); err == nil {
		_ = s.uout.write(cf.Raw)
	}
	return errHandshakeClosed
}

// readClient reads the client's next non-heartbeat frame during the handshake.
func (s *session) readClient() (amqp.Frame, error) {
	for {
		f, err := s.cr.ReadFrame()
		if err != nil {
			return f, s.clientReadError(err)
		}
		if f.Type == amqp.FrameHeartbeat && f.Channel == 0 {
			continue
		}
		if f.Type != amqp.FrameMethod || f.Channel != 0 {
			return f, s.clientFault(connErr(amqp.UnexpectedFrame, "UNEXPECTED_FRAME - type %d on channel %d during the connection handshake", f.Type, f.Channel))
		}
		return f, nil
	}
}

// readClientMethod reads the client's next method and checks it is want.
func (s *session) readClientMethod(want uint32) (amqp.Frame, error) {
	f, err := s.readClient()
	if err != nil {
		return f, err
	}
	if key, ok := amqp.MethodKey(f.Payload); !ok || key != want {
		if ok && key == amqp.ConnectionCloseID {
			// A client may give up during the handshake: relay it.
			_ = s.uout.write(f.Raw)
			return f, errHandshakeClosed
		}
		return f, s.clientFault(connErr(amqp.CommandInvalid, "COMMAND_INVALID - expected '%s', got '%s'", amqp.MethodName(want), amqp.MethodName(key)))
	}
	return f, nil
}

func (s *session) readUpstream() (amqp.Frame, error) {
	for {
		f, err := s.ur.ReadFrame()
		if err != nil {
			return f, upstreamGone(err)
		}
		if f.Type == amqp.FrameHeartbeat {
			continue
		}
		if f.Type != amqp.FrameMethod || f.Channel != 0 {
			return f, s.upstreamFault(connErr(amqp.UnexpectedFrame, "broker sent frame type %d on channel %d during the handshake", f.Type, f.Channel))
		}
		return f, nil
	}
}

func (s *session) readUpstreamMethod(want uint32) (amqp.Frame, error) {
	f, err := s.readUpstream()
	if err != nil {
		return f, err
	}
	if key, _ := amqp.MethodKey(f.Payload); key != want {
		return f, s.upstreamFault(fmt.Errorf("broker sent %s, want %s", amqp.MethodName(key), amqp.MethodName(want)))
	}
	return f, nil
}

// capabilitiesOf reads client_properties.capabilities.
func capabilitiesOf(props amqp.Table) clientCaps {
	var c clientCaps
	v, ok := props.Get("capabilities")
	if !ok {
		return c
	}
	caps, ok := v.(amqp.Table)
	if !ok {
		return c
	}
	is := func(name string) bool {
		v, ok := caps.Get(name)
		b, _ := v.(bool)
		return ok && b
	}
	c.consumerCancelNotify = is("consumer_cancel_notify")
	c.connectionBlocked = is("connection.blocked")
	c.publisherConfirms = is("publisher_confirms")
	c.basicNack = is("basic.nack")
	c.exchangeExchange = is("exchange_exchange_bindings")
	c.authFailureClose = is("authentication_failure_close")
	return c
}

// min32nz is the smaller of a and b where 0 means "no limit".
func min32nz(a, b uint32) uint32 {
	switch {
	case a == 0:
		return b
	case b == 0:
		return a
	}
	return min(a, b)
}
