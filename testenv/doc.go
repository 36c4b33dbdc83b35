// Package testenv starts real RabbitMQ brokers for tests, demos and
// benchmarks: a group of independent single-node brokers on free loopback
// ports, each with its own data and log directories.
//
// In a test:
//
//	g := testenv.Start(t, testenv.Options{Nodes: 3})
//	conn, err := amqp.Dial(g.Nodes[0].URL) // guest/guest on 127.0.0.1
//
// Start registers t.Cleanup to close the group; when the test failed the
// directories are kept and the log paths are logged. Outside tests:
//
//	g, err := testenv.StartGroup(ctx, testenv.Options{Nodes: 3})
//	...
//	defer g.Close()
//
// # Backends
//
// The local backend (default, Linux) runs each broker as a rabbitmq-server
// process of the Debian package (the scripts in /usr/lib/rabbitmq/bin, or
// the directory named by MIRRORPROXY_RABBITMQ_BIN). When the test runs as
// root, the brokers and rabbitmqctl run as user rabbitmq and the
// directories are given to it. With Options.Sidecar each node also gets
// a `mirrorproxy run` process on a free loopback port (Node.SidecarAddr),
// built from this module with the go command unless a binary is named.
//
// With Options.Group the sidecars are one mirrored group (local backend):
// each runs from a config file naming every node as a peer (node-0 ...
// node-<N-1>, Node.Member), a shared secret, the policies and an admin
// API (Node.AdminURL). StartGroup returns once every sidecar's view lists
// all nodes and one master; Node.View, Group.Master, WaitMaster and
// WaitFormed read the views (sidecargroup.go, docs/TESTENV.md).
//
// The docker backend (Options.Backend or MIRRORPROXY_TESTENV=docker) is the
// package testenv/docker: a program has it only when it imports that
// package (a blank import will do; see RegisterBackend and driver.go), so
// programs that never run containers link no container client. It runs
// each node in containers through testcontainers-go: a "pod" container
// that owns the node's network namespace, host name and published ports, a
// broker container and, with Options.Sidecar, a mirrorproxy sidecar
// container, both joined to the pod's namespace (docker/backend.go). The pods sit
// on a private internal network made for the group, where nodes reach each
// other as Node.Host. testenv never imports the product's packages: the
// sidecar is the mirrorproxy binary in an image. Images are built locally
// without a registry (docker/images.go, `make images`) or named by options.
//
// # Faults
//
// Node.Kill, Stop, Start, Restart, Pause and Unpause act on the broker;
// Node.Sidecar() returns the same handle for the sidecar; Node.Partition
// and Heal cut the node off the group's network and back (docker only),
// while it keeps answering on its own addresses. See faults.go.
//
// # Readiness
//
// Nodes start in parallel. A node is ready when its AMQP port answers the
// protocol header with connection.start and `rabbitmqctl -n NODE
// await_startup` succeeds (retried: it fails before the VM's distribution
// is up). Ports are picked by listening on 127.0.0.1:0; if another process
// takes one first, the broker fails with eaddrinuse and the start is
// retried on new ports. Errors carry the tail of the console output and
// log of the node (StartError).
//
// # Processes and signals
//
// Each broker is one beam.smp process (the start script is made to exec
// the VM in place) in its own process group, started with
// Pdeathsig=SIGKILL. Kill and Close SIGKILL the group and the VM's helper
// processes (erl_child_setup, inet_gethost), never the machine's shared
// epmd, and wait until they are gone; Stop sends SIGTERM, which RabbitMQ
// handles as a clean shutdown.
//
// On SIGINT or SIGTERM of the process (Ctrl-C of `go test`, which does not
// reach the brokers' process groups), a watcher kills every open group,
// removes its directories (unless kept) and re-raises the signal.
//
// On a hard kill of the process (SIGKILL, or the `go test -timeout` panic,
// which skips t.Cleanup) the kernel SIGKILLs each broker through
// Pdeathsig: no broker survives its starter. (Pdeathsig follows the OS
// thread that started the process; the Go runtime only ends threads that a
// goroutine locked with runtime.LockOSThread and did not unlock, so do not
// start groups from such a goroutine.) The directories stay behind:
// Cleanup, or `go run ./testenv/cmd/testenv cleanup`, removes every group
// directory whose owner process is gone and kills any broker still
// running from it.
//
// The docker backend labels every container and network with the group
// and its owner process; Close removes them, the signal watcher removes
// them on SIGINT/SIGTERM, and the next docker StartGroup (or
// docker.Cleanup, `testenv cleanup`) removes those of dead owners.
// Testcontainers' reaper is disabled (TESTCONTAINERS_RYUK_DISABLED=true
// unless set): its image cannot be pulled without a registry.
//
// Set MIRRORPROXY_TESTENV_KEEP=1 to keep all directories (local) or
// containers (docker, killed but not removed) for inspection.
package testenv
