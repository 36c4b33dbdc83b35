package testenv

import (
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"
)

// The ports rabbitmqctl's Erlang distribution listens on (baseEnv sets
// this range, wider than RabbitMQ's default 35672-35682): a broker or a
// sidecar given one of them fails to bind it while a rabbitmqctl runs, or
// makes the next rabbitmqctl move on. No port of the range is handed out.
const (
	ctlDistPortMin = 35672
	ctlDistPortMax = 35871
)

// handedOut holds every port this process handed out (freePorts,
// reservePorts, ReserveAddrs), so it never hands one out twice, even
// after its TIME_WAIT reservation ended and before its owner bound it.
var handedOut struct {
	sync.Mutex
	ports map[int]bool
}

// ReserveAddrs returns n distinct loopback addresses ("127.0.0.1:port")
// for processes the caller starts and that bind them explicitly (a
// sidecar's client, gm, raft and admin addresses in the demo). Each port
// is reserved as reservePorts does — left with a socket in TIME_WAIT, so
// for a minute no bind(0) or connect() of any process on the machine is
// handed it (test packages running beside this one, the brokers' own
// picks) while a bind that names it with SO_REUSEADDR, as Go's
// net.Listen and Erlang's listeners do, succeeds — and none is ever
// handed out twice by this process or lies in rabbitmqctl's distribution
// range.
func ReserveAddrs(n int) ([]string, error) {
	ports, err := reservePorts(n)
	if err != nil {
		return nil, err
	}
	addrs := make([]string, len(ports))
	for i, p := range ports {
		addrs[i] = net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
	}
	return addrs, nil
}

// freePorts returns n distinct loopback ports for a broker (AMQP,
// distribution, management): they are reserved as ReserveAddrs does.
// Should a port be taken all the same (a process that named it), the
// broker fails with eaddrinuse and the start is retried on new ports.
func freePorts(n int) ([]int, error) { return reservePorts(n) }

// reservePorts returns n distinct loopback TCP ports that no other
// process will be handed for about a minute, unless it names them
// explicitly: each port is left with a socket in TIME_WAIT (see
// timeWait). The sidecars of a group and the brokers bind them
// explicitly, with SO_REUSEADDR (Go's net.Listen and Erlang's listeners
// set it), which a TIME_WAIT socket does not block. Ports in
// rabbitmqctl's distribution range, or handed out before by this process,
// are skipped.
func reservePorts(n int) ([]int, error) {
	var ls, skipped []net.Listener
	defer func() {
		// Held until all are chosen, so bind(0) does not hand one out again.
		for _, l := range append(ls, skipped...) {
			l.Close()
		}
	}()
	handedOut.Lock()
	defer handedOut.Unlock()
	if handedOut.ports == nil {
		handedOut.ports = make(map[int]bool)
	}
	for len(ls) < n {
		if len(skipped) > 1000 {
			return nil, fmt.Errorf("no free loopback port outside rabbitmqctl's range after %d tries", len(skipped))
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("listen on a free loopback port: %w", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		if (p >= ctlDistPortMin && p <= ctlDistPortMax) || handedOut.ports[p] {
			skipped = append(skipped, l)
			continue
		}
		ls = append(ls, l)
	}
	ports := make([]int, 0, n)
	for _, l := range ls {
		if err := timeWait(l); err != nil {
			return nil, err
		}
		p := l.Addr().(*net.TCPAddr).Port
		handedOut.ports[p] = true
		ports = append(ports, p)
	}
	return ports, nil
}

// reservePort leaves a TIME_WAIT socket on 127.0.0.1:port, if the port is
// free now; otherwise it does nothing (whoever holds it keeps it).
func reservePort(port int) {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return
	}
	defer l.Close()
	_ = timeWait(l)
}

// timeWait connects to l, accepts that connection and closes the accepted
// end first: the active close leaves that end, bound to l's port, in
// TIME_WAIT for 60s (Linux) after l is closed. Until then the kernel hands
// the port to no bind(0) and no connect(): both skip a port with a bound
// socket on it, and a TIME_WAIT socket counts as one unless the new socket
// names the port itself with SO_REUSEADDR. Connections from others that
// arrive meanwhile are accepted and closed.
func timeWait(l net.Listener) error {
	c, err := net.DialTimeout("tcp", l.Addr().String(), 5*time.Second)
	if err != nil {
		return fmt.Errorf("reserve port %s: connect: %w", l.Addr(), err)
	}
	defer c.Close()
	if tl, ok := l.(*net.TCPListener); ok {
		_ = tl.SetDeadline(time.Now().Add(5 * time.Second))
	}
	for {
		a, err := l.Accept()
		if err != nil {
			return fmt.Errorf("reserve port %s: accept: %w", l.Addr(), err)
		}
		ours := a.RemoteAddr().String() == c.LocalAddr().String()
		a.Close() // first: this end goes to TIME_WAIT
		if ours {
			return nil
		}
	}
}
