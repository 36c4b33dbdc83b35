package testenv

import (
	"fmt"
	"net"
	"strconv"
	"time"
)

// freePorts returns n distinct loopback TCP ports that were free a moment
// ago: it listens on 127.0.0.1:0 n times, holding every listener until all
// are chosen, then closes them. Another process may take one before the
// broker binds it; the broker then fails with eaddrinuse and the start is
// retried on new ports.
func freePorts(n int) ([]int, error) {
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("listen on a free loopback port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// reservePorts returns n distinct loopback TCP ports that no other
// process will be handed for about a minute, unless it names them
// explicitly: each port is left with a socket in TIME_WAIT (see
// reservePort). The sidecars of a group bind them explicitly, with
// SO_REUSEADDR (Go's net.Listen sets it), which a TIME_WAIT socket does
// not block.
func reservePorts(n int) ([]int, error) {
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	// Hold all listeners first, so the n ports are distinct.
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("listen on a free loopback port: %w", err)
		}
		ls = append(ls, l)
	}
	ports := make([]int, 0, n)
	for _, l := range ls {
		if err := timeWait(l); err != nil {
			return nil, err
		}
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
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
