package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy/admin"
	"github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy/config"
)

// ctlCommand is `mirrorproxy ctl VERB`: rabbitmqctl's mirroring verbs,
// sent to a sidecar's admin API.
func ctlCommand() *cli.Command {
	vhost := &cli.StringFlag{Name: "vhost", Aliases: []string{"p"}, Value: "/", Usage: "the `VHOST`"}
	quiet := &cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print no informational lines"}
	verbose := &cli.BoolFlag{Name: "verbose", Usage: "also print the timeout line rabbitmqctl prints"}
	return &cli.Command{
		Name:  "ctl",
		Usage: "rabbitmqctl-like verbs against a sidecar's admin API (list_queues, list_policies, set_policy, clear_policy, sync_queue, cancel_sync_queue, transfer_master, status)",
		Description: "The sidecar is --admin, else admin.address of --config, else " + config.DefaultAdmin + ".\n" +
			"Changes need the node's admin.token: --token, MIRRORPROXY_ADMIN_TOKEN, or admin.token of --config.\n" +
			"Policy changes and syncs are the group's, made by the master: ask the master's sidecar\n" +
			"(a mirror's refuses them and names the master).",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "admin", EnvVars: []string{"MIRRORPROXY_ADMIN"}, Usage: "the admin API, `HOST:PORT` or a URL"},
			&cli.StringFlag{Name: "token", EnvVars: []string{"MIRRORPROXY_ADMIN_TOKEN"}, Usage: "the node's admin.token, for changes"},
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, TakesFile: true, Usage: "read admin.address and admin.token from this config `FILE`"},
			&cli.IntFlag{Name: "timeout", Aliases: []string{"t"}, Value: ctlTimeoutSecs, Usage: "give up after `SECONDS` (sync_queue: 600 unless given)"},
			verbose,
		},
		Action: unknownCommand(func(c *cli.Context) []*cli.Command { return c.Command.VisibleCommands() },
			cli.ShowSubcommandHelp),
		Subcommands: []*cli.Command{
			{
				Name:      "list_queues",
				Usage:     "mirrored queues with the chosen columns (default: name messages)",
				ArgsUsage: "[COLUMN ...] (name vhost node messages slave_pids synchronised_slave_pids policy state)",
				Flags:     []cli.Flag{vhost, quiet, verbose, &cli.BoolFlag{Name: "no-table-headers", Usage: "no column names line"}},
				Action:    ctlListQueues,
			},
			{
				Name:   "list_policies",
				Usage:  "the node's policies",
				Flags:  []cli.Flag{vhost, quiet, &cli.BoolFlag{Name: "no-table-headers", Usage: "no column names line"}},
				Action: ctlListPolicies,
			},
			{
				Name:      "set_policy",
				Usage:     "set a policy for the group (on the master)",
				ArgsUsage: "NAME PATTERN DEFINITION",
				Flags: []cli.Flag{vhost, quiet,
					&cli.IntFlag{Name: "priority", Usage: "the policy's `PRIORITY`"},
					&cli.StringFlag{Name: "apply-to", Value: "all", Usage: "queues, exchanges or all"}},
				Action: ctlSetPolicy,
			},
			{
				Name:      "clear_policy",
				Usage:     "clear a policy of the group (on the master)",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{vhost, quiet},
				Action:    ctlClearPolicy,
			},
			{
				Name:      "sync_queue",
				Usage:     "synchronise a mirrored queue's unsynchronised mirrors, and wait until they are",
				ArgsUsage: "QUEUE",
				Flags: []cli.Flag{vhost, quiet,
					&cli.IntFlag{Name: "timeout", Aliases: []string{"t"}, Usage: "stop waiting after `SECONDS` (default 600; the sync goes on)"}},
				Action: queueAction("sync", "Synchronising queue '%s' in vhost '%s' ...", syncTimeoutSecs),
			},
			{
				Name:      "cancel_sync_queue",
				Usage:     "stop a mirrored queue's running synchronisation",
				ArgsUsage: "QUEUE",
				Flags:     []cli.Flag{vhost, quiet},
				Action:    queueAction("cancel_sync", "Stopping synchronising queue '%s' in vhost '%s' ...", ctlTimeoutSecs),
			},
			ctlTransferMasterCommand(quiet),
			ctlStatusCommand(),
		},
	}
}

// queueColumns are list_queues' columns, in the JSON names of admin.Queue.
// state is rabbitmqctl's: "syncing" while a sync runs, else "running".
var queueColumns = []string{"name", "vhost", "node", "messages", "slave_pids", "synchronised_slave_pids", "policy", "state"}

// ctlClient calls one sidecar's admin API.
type ctlClient struct {
	base    string // http://host:port
	token   string
	timeout time.Duration
	http    *http.Client
}

// How long ctl waits for the admin API unless --timeout is given; a sync
// of a long queue takes minutes.
const (
	ctlTimeoutSecs  = 60
	syncTimeoutSecs = 600
)

// newCtlClient makes the client for the admin API that the flags name;
// it gives up after --timeout, else after defaultSecs.
func newCtlClient(c *cli.Context, defaultSecs int) (*ctlClient, error) {
	addr, tok := c.String("admin"), c.String("token")
	if file := c.String("config"); file != "" {
		cfg, err := config.Load(file)
		if cfg == nil {
			return nil, err
		}
		if err := cfg.Validate(); err != nil {
			return nil, err
		}
		if addr == "" {
			if cfg.Admin.Address == config.AdminOff {
				return nil, fmt.Errorf("%s: admin.address is off: this sidecar serves no admin API", file)
			}
			addr = cfg.Admin.Address
		}
		if tok == "" {
			tok = cfg.Admin.Token
		}
	}
	if addr == "" {
		addr = config.DefaultAdmin
	}
	base := addr
	if !strings.Contains(addr, "://") {
		if strings.HasPrefix(addr, ":") {
			addr = "127.0.0.1" + addr
		}
		base = "http://" + addr
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--admin %q is not HOST:PORT or an http(s) URL", c.String("admin"))
	}
	secs := defaultSecs
	// --timeout given after the verb, else before it (the verb's own flag
	// hides the ctl one from its context).
	for _, cc := range c.Lineage() {
		if cc.IsSet("timeout") {
			secs = cc.Int("timeout")
			break
		}
	}
	t := time.Duration(secs) * time.Second
	if t <= 0 {
		return nil, fmt.Errorf("--timeout %d: must be more than 0 seconds", secs)
	}
	return &ctlClient{base: strings.TrimSuffix(base, "/"), token: tok, timeout: t, http: &http.Client{Timeout: t}}, nil
}

// call sends a request and decodes a 2xx JSON reply into out (if not
// nil); other replies become an error with the API's reason.
func (cl *ctlClient) call(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, cl.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if cl.token != "" {
		req.Header.Set("Authorization", "Bearer "+cl.token)
	}
	resp, err := cl.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the admin API at %s: %w", cl.base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the admin API's reply: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e admin.ErrorBody
		if json.Unmarshal(data, &e) == nil && e.Reason != "" {
			msg := fmt.Sprintf("Error: %s (%s)", e.Reason, resp.Status)
			if resp.StatusCode == http.StatusUnauthorized && cl.token == "" {
				msg += "; give the token with --token or MIRRORPROXY_ADMIN_TOKEN"
			}
			return errors.New(msg)
		}
		return fmt.Errorf("Error: the admin API answered %s", resp.Status)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("the admin API's reply is not what ctl expects: %w", err)
		}
	}
	return nil
}

func (cl *ctlClient) ctx(c *cli.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(c.Context, cl.timeout)
}

// isSet reports whether a boolean flag is true after the verb or before it.
func isSet(c *cli.Context, flag string) bool {
	for _, cc := range c.Lineage() {
		if cc.Bool(flag) {
			return true
		}
	}
	return false
}

// ctlExit turns an error into the exit code rabbitmqctl uses for a failed
// command (69: unavailable or refused, 64: usage).
func ctlExit(err error, code int) error { return cli.Exit(err.Error(), code) }

func ctlListQueues(c *cli.Context) error {
	cols := c.Args().Slice()
	if len(cols) == 0 {
		cols = []string{"name", "messages"}
	}
	for _, col := range cols {
		if !slices.Contains(queueColumns, col) {
			return ctlExit(fmt.Errorf("Error: unknown column %q; use %s", col, strings.Join(queueColumns, ", ")), 64)
		}
	}
	cl, err := newCtlClient(c, ctlTimeoutSecs)
	if err != nil {
		return ctlExit(err, 64)
	}
	vhost := c.String("vhost")
	w := c.App.Writer
	if !c.Bool("quiet") {
		if isSet(c, "verbose") {
			fmt.Fprintf(w, "Timeout: %.1f seconds ...\n", cl.timeout.Seconds())
		}
		fmt.Fprintf(w, "Listing queues for vhost %s ...\n", vhost)
	}
	ctx, cancel := cl.ctx(c)
	defer cancel()
	var qs []admin.Queue
	if err := cl.call(ctx, http.MethodGet, "/api/queues?vhost="+url.QueryEscape(vhost), nil, &qs); err != nil {
		return ctlExit(err, 69)
	}
	if !c.Bool("no-table-headers") && !c.Bool("quiet") {
		fmt.Fprintln(w, strings.Join(cols, "\t"))
	}
	for _, q := range qs {
		row := make([]string, len(cols))
		for i, col := range cols {
			row[i] = queueCell(q, col)
		}
		fmt.Fprintln(w, strings.Join(row, "\t"))
		if q.Error != "" && slices.Contains(cols, "messages") {
			fmt.Fprintf(c.App.ErrWriter, "Warning: messages of %q unknown: %s\n", q.Name, q.Error)
		}
	}
	return nil
}

func queueCell(q admin.Queue, col string) string {
	switch col {
	case "name":
		return q.Name
	case "vhost":
		return q.Vhost
	case "node":
		return q.Node
	case "messages":
		if q.Messages == nil {
			return ""
		}
		return strconv.Itoa(*q.Messages)
	case "slave_pids":
		return "[" + strings.Join(q.SlavePids, ", ") + "]"
	case "synchronised_slave_pids":
		return "[" + strings.Join(q.SynchronisedSlavePids, ", ") + "]"
	case "policy":
		return q.Policy
	case "state":
		if q.Syncing {
			return "syncing"
		}
		return "running"
	}
	return ""
}

func ctlListPolicies(c *cli.Context) error {
	if c.NArg() > 0 {
		return ctlExit(fmt.Errorf("Error: list_policies takes no arguments, got %q", c.Args().First()), 64)
	}
	cl, err := newCtlClient(c, ctlTimeoutSecs)
	if err != nil {
		return ctlExit(err, 64)
	}
	vhost := c.String("vhost")
	w := c.App.Writer
	if !c.Bool("quiet") {
		fmt.Fprintf(w, "Listing policies for vhost %q ...\n", vhost)
	}
	ctx, cancel := cl.ctx(c)
	defer cancel()
	var raw []json.RawMessage
	if err := cl.call(ctx, http.MethodGet, "/api/policies/"+url.PathEscape(vhost), nil, &raw); err != nil {
		return ctlExit(err, 69)
	}
	if !c.Bool("no-table-headers") && !c.Bool("quiet") {
		fmt.Fprintln(w, strings.Join(policyHeader, "\t"))
	}
	for _, r := range raw {
		var p struct {
			Vhost      string          `json:"vhost"`
			Name       string          `json:"name"`
			Pattern    string          `json:"pattern"`
			ApplyTo    string          `json:"apply-to"`
			Definition json.RawMessage `json:"definition"`
			Priority   json.Number     `json:"priority"`
		}
		if err := json.Unmarshal(r, &p); err != nil {
			return ctlExit(fmt.Errorf("the admin API's policy is not what ctl expects: %w", err), 69)
		}
		fmt.Fprintln(w, strings.Join([]string{p.Vhost, p.Name, p.Pattern, p.ApplyTo, string(p.Definition), p.Priority.String()}, "\t"))
	}
	return nil
}

// policyHeader is replicate.RowHeader: rabbitmqctl list_policies' columns.
var policyHeader = []string{"vhost", "name", "pattern", "apply-to", "definition", "priority"}

// trailingFlags takes --priority, --apply-to and -p/--vhost given after the
// positional arguments (rabbitmqctl accepts them there; the flag parser
// stops at the first argument).
func trailingFlags(args []string) (pos []string, set map[string]string, err error) {
	set = map[string]string{}
	names := map[string]string{"--priority": "priority", "--apply-to": "apply-to", "-p": "vhost", "--vhost": "vhost"}
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, val, hasVal := strings.Cut(a, "=")
		key, ok := names[name]
		if !ok {
			if strings.HasPrefix(a, "-") && len(a) > 1 {
				return nil, nil, fmt.Errorf("Error: unknown flag %q", a)
			}
			pos = append(pos, a)
			continue
		}
		if !hasVal {
			if i+1 >= len(args) {
				return nil, nil, fmt.Errorf("Error: %s needs a value", name)
			}
			i++
			val = args[i]
		}
		set[key] = val
	}
	return pos, set, nil
}

func ctlSetPolicy(c *cli.Context) error {
	pos, late, err := trailingFlags(c.Args().Slice())
	if err != nil {
		return ctlExit(err, 64)
	}
	if len(pos) != 3 {
		return ctlExit(fmt.Errorf("Error: set_policy takes NAME PATTERN DEFINITION, got %d arguments", len(pos)), 64)
	}
	name, pattern, def := pos[0], pos[1], pos[2]
	vhost, applyTo, prio := c.String("vhost"), c.String("apply-to"), c.Int("priority")
	if v, ok := late["vhost"]; ok {
		vhost = v
	}
	if v, ok := late["apply-to"]; ok {
		applyTo = v
	}
	if v, ok := late["priority"]; ok {
		if prio, err = strconv.Atoi(v); err != nil {
			return ctlExit(fmt.Errorf("Error: --priority %q is not a whole number", v), 64)
		}
	}
	if !json.Valid([]byte(def)) {
		return ctlExit(fmt.Errorf("Error: the definition %s is not valid JSON", def), 64)
	}
	cl, err := newCtlClient(c, ctlTimeoutSecs)
	if err != nil {
		return ctlExit(err, 64)
	}
	if !c.Bool("quiet") {
		fmt.Fprintf(c.App.Writer, "Setting policy %q for pattern %q to %q with priority %q for vhost %q ...\n",
			name, pattern, def, strconv.Itoa(prio), vhost)
	}
	ctx, cancel := cl.ctx(c)
	defer cancel()
	body := admin.PolicyBody{Pattern: pattern, Definition: json.RawMessage(def), Priority: prio, ApplyTo: applyTo}
	if err := cl.call(ctx, http.MethodPut, "/api/policies/"+url.PathEscape(vhost)+"/"+url.PathEscape(name), body, nil); err != nil {
		return ctlExit(err, 69)
	}
	return nil
}

func ctlClearPolicy(c *cli.Context) error {
	pos, late, err := trailingFlags(c.Args().Slice())
	if err != nil {
		return ctlExit(err, 64)
	}
	if len(pos) != 1 || late["priority"] != "" || late["apply-to"] != "" {
		return ctlExit(errors.New("Error: clear_policy takes NAME (and -p VHOST)"), 64)
	}
	vhost := c.String("vhost")
	if v, ok := late["vhost"]; ok {
		vhost = v
	}
	cl, err := newCtlClient(c, ctlTimeoutSecs)
	if err != nil {
		return ctlExit(err, 64)
	}
	if !c.Bool("quiet") {
		fmt.Fprintf(c.App.Writer, "Clearing policy %q on vhost %q ...\n", pos[0], vhost)
	}
	ctx, cancel := cl.ctx(c)
	defer cancel()
	if err := cl.call(ctx, http.MethodDelete, "/api/policies/"+url.PathEscape(vhost)+"/"+url.PathEscape(pos[0]), nil, nil); err != nil {
		return ctlExit(err, 69)
	}
	return nil
}

// queueArg takes sync_queue's and cancel_sync_queue's QUEUE, with -p VHOST
// before or after it.
func queueArg(c *cli.Context) (vhost, queue string, err error) {
	pos, late, err := trailingFlags(c.Args().Slice())
	if err != nil {
		return "", "", err
	}
	if len(pos) != 1 || late["priority"] != "" || late["apply-to"] != "" {
		return "", "", fmt.Errorf("Error: %s takes QUEUE (and -p VHOST)", c.Command.Name)
	}
	vhost = c.String("vhost")
	if v, ok := late["vhost"]; ok {
		vhost = v
	}
	return vhost, pos[0], nil
}

func queueActionPath(vhost, queue string) string {
	return "/api/queues/" + url.PathEscape(vhost) + "/" + url.PathEscape(queue) + "/actions"
}

// queueAction is sync_queue and cancel_sync_queue: it prints banner (as
// rabbitmqctl does) and posts action to the queue's actions endpoint,
// waiting at most timeoutSecs unless --timeout says otherwise.
func queueAction(action, banner string, timeoutSecs int) cli.ActionFunc {
	return func(c *cli.Context) error {
		vhost, queue, err := queueArg(c)
		if err != nil {
			return ctlExit(err, 64)
		}
		cl, err := newCtlClient(c, timeoutSecs)
		if err != nil {
			return ctlExit(err, 64)
		}
		if !c.Bool("quiet") {
			fmt.Fprintf(c.App.Writer, banner+"\n", queue, vhost)
		}
		ctx, cancel := cl.ctx(c)
		defer cancel()
		if err := cl.call(ctx, http.MethodPost, queueActionPath(vhost, queue), admin.ActionBody{Action: action}, nil); err != nil {
			if ctx.Err() != nil && action == "sync" {
				err = fmt.Errorf("Error: gave up waiting after %v; the sync goes on (list_queues name state synchronised_slave_pids shows it)", cl.timeout)
			}
			return ctlExit(err, 69)
		}
		return nil
	}
}
