package main

import (
	"fmt"
	"net/http"

	"github.com/urfave/cli/v2"

	"github.com/mirrorproxy/mirrorproxy/cmd/mirrorproxy/admin"
)

// ctlTransferMaster is `ctl transfer_master [NODE]`: a graceful handover
// of the master role, on demand. Any node's admin API takes it.
func ctlTransferMasterCommand(quiet cli.Flag) *cli.Command {
	return &cli.Command{
		Name:      "transfer_master",
		Usage:     "hand the master role to NODE, a synced mirror (none: the group chooses one)",
		ArgsUsage: "[NODE]",
		Description: "The master stops confirming and delivering, the named mirror applies its tail, requeues\n" +
			"its copies in order and serves; the old master mirrors again from empty. Refused, before\n" +
			"anything stops, when NODE is not a member or not synced for every mirrored queue.\n" +
			"Any node's admin API takes it; the answer comes once a view names the new master.",
		Flags:  []cli.Flag{quiet},
		Action: ctlTransferMaster,
	}
}

func ctlTransferMaster(c *cli.Context) error {
	if c.NArg() > 1 {
		return ctlExit(fmt.Errorf("Error: transfer_master takes at most one NODE, got %d arguments", c.NArg()), 64)
	}
	target := c.Args().First()
	cl, err := newCtlClient(c, ctlTimeoutSecs)
	if err != nil {
		return ctlExit(err, 64)
	}
	w := c.App.Writer
	if !c.Bool("quiet") {
		if target == "" {
			fmt.Fprintln(w, "Transferring the master role to a synced mirror ...")
		} else {
			fmt.Fprintf(w, "Transferring the master role to %q ...\n", target)
		}
	}
	ctx, cancel := cl.ctx(c)
	defer cancel()
	var rep admin.TransferReply
	if err := cl.call(ctx, http.MethodPost, "/api/master", admin.TransferBody{Node: target}, &rep); err != nil {
		return ctlExit(err, 69)
	}
	fmt.Fprintf(w, "%s is the master (view epoch %d)\n", rep.Master, rep.Epoch)
	return nil
}
