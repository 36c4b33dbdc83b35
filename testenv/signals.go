package testenv

import (
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// While any group is open, testenv watches SIGINT and SIGTERM of the
// process. The brokers run in their own process groups, so a Ctrl-C on the
// terminal does not reach them; on either signal the watcher kills every
// open group's brokers, removes their directories (unless kept), stops
// watching and sends the signal to the process again, so it then does
// what it would have done without testenv (by default: exit).
//
// The watcher goroutine is owned by the registry: it is started when the
// first group registers and stopped (and waited for) when the last one
// unregisters, so goleak sees nothing between tests.
var registry struct {
	mu     sync.Mutex
	groups map[*Group]struct{}
	sigc   chan os.Signal
	stop   chan struct{}
	done   chan struct{}
}

func register(g *Group) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	if registry.groups == nil {
		registry.groups = map[*Group]struct{}{}
	}
	registry.groups[g] = struct{}{}
	if registry.done == nil {
		registry.sigc = make(chan os.Signal, 1)
		registry.stop = make(chan struct{})
		registry.done = make(chan struct{})
		signal.Notify(registry.sigc, syscall.SIGINT, syscall.SIGTERM)
		go watchSignals(registry.sigc, registry.stop, registry.done)
	}
}

func unregister(g *Group) {
	registry.mu.Lock()
	delete(registry.groups, g)
	if len(registry.groups) > 0 || registry.done == nil {
		registry.mu.Unlock()
		return
	}
	stop, done := registry.stop, registry.done
	registry.stop, registry.done = nil, nil
	registry.mu.Unlock()
	close(stop)
	<-done
}

func watchSignals(sigc chan os.Signal, stop, done chan struct{}) {
	defer close(done)
	defer signal.Stop(sigc)
	select {
	case <-stop:
	case sig := <-sigc:
		registry.mu.Lock()
		groups := make([]*Group, 0, len(registry.groups))
		for g := range registry.groups {
			groups = append(groups, g)
		}
		registry.mu.Unlock()
		var wg sync.WaitGroup
		for _, g := range groups {
			wg.Go(g.emergencyKill)
		}
		wg.Wait()
		signal.Stop(sigc)
		// If the process survives (someone else handles the signal), the
		// killed groups' Close still works, and the next group to
		// register starts a new watcher.
		registry.mu.Lock()
		if registry.done == done {
			registry.stop, registry.done = nil, nil
		}
		registry.mu.Unlock()
		if self, err := os.FindProcess(os.Getpid()); err == nil {
			_ = self.Signal(sig)
		}
	}
}
