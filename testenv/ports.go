package testenv

import (
	"fmt"
	"net"
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
