package gm

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Frames on a peer link, after the authentication handshake:
//
//	+----------------+------+-------------------------+
//	| length (4, BE) | kind | body (length-1 bytes)   |
//	+----------------+------+-------------------------+
//
// kind 'M' carries one encoded Message, kind 'H' a heartbeat (empty body).
// Each TCP connection carries frames one way: a member dials every peer it
// sends to and only reads from the connections it accepts.
const (
	frameMsg       = 'M'
	frameHeartbeat = 'H'
	// MaxFrame bounds one frame; a longer one drops the connection.
	MaxFrame = 16 << 20
)

// ErrFrameTooLarge is returned for a frame above MaxFrame.
var ErrFrameTooLarge = errors.New("gm: frame too large")

func appendFrame(b []byte, kind byte, body []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(body)+1))
	b = append(b, kind)
	return append(b, body...)
}

// readFrame reads one frame into a fresh buffer (messages alias it).
func readFrame(r *bufio.Reader) (byte, []byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(h[:])
	if n == 0 || n > MaxFrame {
		return 0, nil, fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return 0, nil, err
	}
	return b[0], b[1:], nil
}

// peerWriter owns the outgoing connection to one peer: it dials, runs the
// handshake, writes queued frames (flushing when the queue is empty, so
// frames batch under load) and redials after an error.
type peerWriter struct {
	id    string
	queue chan []byte // encoded frames; bounded
	n     *Node
	log   zerolog.Logger
}

func (w *peerWriter) run(ctx context.Context) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		err := w.session(ctx)
		if ctx.Err() != nil {
			return
		}
		w.log.Debug().Err(err).Msg("peer link down")
		w.n.linkDown(w.id)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

func (w *peerWriter) session(ctx context.Context) error {
	addr := w.n.cfg.Resolve(w.id)
	if addr == "" {
		return fmt.Errorf("no address for peer %q", w.id)
	}
	d := net.Dialer{Timeout: w.n.cfg.DialTimeout}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	conn, peer, err := AuthDial(raw, w.n.cfg.Auth, w.n.cfg.ID, "gm")
	if err != nil {
		return err
	}
	defer conn.Close()
	if peer != w.id {
		return fmt.Errorf("dialed %q at %s but %q answered", w.id, addr, peer)
	}
	// A new connection: anything unacknowledged must be re-sent.
	w.n.linkDown(w.id)
	bw := bufio.NewWriterSize(conn, 64<<10)
	for {
		var f []byte
		select {
		case <-ctx.Done():
			return ctx.Err()
		case f = <-w.queue:
		}
		_ = conn.SetWriteDeadline(time.Now().Add(w.n.cfg.WriteTimeout))
		if _, err := bw.Write(f); err != nil {
			return err
		}
		if len(w.queue) == 0 {
			if err := bw.Flush(); err != nil {
				return err
			}
		}
	}
}

// send queues a frame without blocking; a full queue drops it (the ring
// re-sends what is not acknowledged) and reports false.
func (w *peerWriter) send(f []byte) bool {
	select {
	case w.queue <- f:
		return true
	default:
		return false
	}
}

// acceptLoop accepts peer connections; each gets its own reader goroutine,
// owned by the node's wait group.
func (n *Node) acceptLoop(ctx context.Context, ln net.Listener) {
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				n.log.Error().Err(err).Msg("gm accept failed")
			}
			return
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			n.serveConn(ctx, c)
		}()
	}
}

func (n *Node) serveConn(ctx context.Context, raw net.Conn) {
	log := n.log.With().Str("remote", raw.RemoteAddr().String()).Logger()
	stopRaw := context.AfterFunc(ctx, func() { raw.Close() })
	defer stopRaw()
	conn, peer, purpose, err := AuthAcceptAny(raw, n.cfg.Auth, n.cfg.ID, n.purposes...)
	if err != nil {
		log.Warn().Err(err).Msg("gm peer refused")
		return
	}
	defer conn.Close()
	if purpose != "gm" {
		n.cfg.Handoff[purpose](conn, peer)
		return
	}
	log = log.With().Str("peer", peer).Logger()
	br := bufio.NewReaderSize(conn, 64<<10)
	for {
		_ = conn.SetReadDeadline(time.Now().Add(n.cfg.ReadTimeout))
		kind, body, err := readFrame(br)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				log.Warn().Err(err).Msg("gm peer link dropped")
			}
			return
		}
		switch kind {
		case frameHeartbeat:
			n.heard(peer)
		case frameMsg:
			m, err := ParseMessage(body)
			if err != nil || m.From.ID != peer {
				log.Warn().Err(err).Str("from", m.From.ID).Msg("gm peer sent a bad message; dropping link")
				return
			}
			n.heard(peer)
			select {
			case n.inbox <- m:
			case <-ctx.Done():
				return
			}
		default:
			log.Warn().Int("kind", int(kind)).Msg("gm peer sent an unknown frame; dropping link")
			return
		}
	}
}
