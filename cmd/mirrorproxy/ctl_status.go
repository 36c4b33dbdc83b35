package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy/ops"
)

// ctlStatusCommand is `ctl status`: what /healthz, /readyz and the status
// page say, for a person.
func ctlStatusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "the sidecar's readiness, health, role, view, members and mirrored queues (exit 1 when not ready)",
		Description: "What /readyz, /healthz and the status page of the admin listener say. Needs no token.\n" +
			"Exits 0 when the sidecar is ready to serve clients, 1 when it is not (printing why), 69 when\n" +
			"its admin listener cannot be reached.",
		Action: ctlStatus,
	}
}

func ctlStatus(c *cli.Context) error {
	if c.NArg() > 0 {
		return ctlExit(fmt.Errorf("Error: status takes no arguments, got %q", c.Args().First()), 64)
	}
	cl, err := newCtlClient(c, ctlTimeoutSecs)
	if err != nil {
		return ctlExit(err, 64)
	}
	ctx, cancel := cl.ctx(c)
	defer cancel()
	var st ops.PageStatus
	if err := cl.call(ctx, http.MethodGet, "/api/status", nil, &st); err != nil {
		return ctlExit(err, 69)
	}
	printStatus(c.App.Writer, st)
	if !st.Ready.OK {
		return cli.Exit("", 1)
	}
	return nil
}

// printStatus writes st for a person, one aspect per line.
func printStatus(w io.Writer, st ops.PageStatus) {
	line := func(k, format string, args ...any) {
		fmt.Fprintf(w, "%-10s %s\n", k, fmt.Sprintf(format, args...))
	}
	check := func(ok bool, reasons []string) string {
		if ok {
			return "yes"
		}
		return "no: " + strings.Join(reasons, "; ")
	}
	n := st.Node
	if n == nil {
		line("node", "plain sidecar (no group)   version %s", st.Version)
	} else {
		role := n.Role
		if n.Serving {
			role += ", serving"
		}
		line("node", "%s (%s)   version %s", n.Node, role, st.Version)
	}
	line("ready", "%s", check(st.Ready.OK, st.Ready.Reasons))
	line("healthy", "%s", check(st.Healthy.OK, st.Healthy.Reasons))
	if st.Error != "" {
		line("error", "%s", st.Error)
	}
	if n != nil {
		line("broker", "%s", n.Broker)
		master := n.Master
		if master == "" {
			master = "none"
			if n.LostMaster != "" {
				master += " (waiting for " + n.LostMaster + ")"
			}
		}
		leader := n.Raft.Leader
		if leader == "" {
			leader = "unknown"
		}
		line("view", "epoch %d, master %s, raft leader %s (term %d)", n.Epoch, master, leader, n.Raft.Term)
	}
	line("sessions", "%d open (%d since start), %d from other sidecars, %d confirms withheld",
		st.Sessions, st.SessionsTotal, st.PeerSessions, st.Withheld)
	if n == nil {
		return
	}
	for i, m := range n.Members {
		k := ""
		if i == 0 {
			k = "members"
		}
		heard := "-"
		switch {
		case m.Self:
		case m.HeardAgo < 0:
			heard = "never heard"
		default:
			heard = fmt.Sprintf("heard %.1fs ago", m.HeardAgo)
		}
		lag := ""
		if n.Serving && m.Role != "master" {
			lag = fmt.Sprintf("  lag %d ops", m.LagOps)
			if m.LagOps > 0 {
				lag += fmt.Sprintf(" (%.1fs)", m.LagSeconds)
			}
		}
		line(k, "%s  %s  join %d  %s%s", m.ID, m.Role, m.JoinEpoch, heard, lag)
	}
	if len(n.Queues) == 0 {
		line("queues", "none mirrored")
	}
	for i, q := range n.Queues {
		k := ""
		if i == 0 {
			k = "queues"
		}
		extra := ""
		if q.Syncing {
			extra = fmt.Sprintf("  syncing %.0f%% (%d copied)", 100*q.SyncProgress, q.SyncCopied)
		}
		if q.Held != nil {
			extra += fmt.Sprintf("  %d held here", *q.Held)
		}
		line(k, "%s %s  mirrors %s  synced %s%s", q.Vhost, q.Name, listOrNone(q.Mirrors), listOrNone(q.Synced), extra)
	}
}

func listOrNone(xs []string) string {
	if len(xs) == 0 {
		return "none"
	}
	return strings.Join(xs, ", ")
}
