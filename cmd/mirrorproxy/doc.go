// Command mirrorproxy is the sidecar proxy that gives single-node RabbitMQ
// brokers classic mirrored queues.
//
//	mirrorproxy run --config config.yaml    run a sidecar
//	mirrorproxy run --listen 127.0.0.1:5673 --upstream 127.0.0.1:5672
//	mirrorproxy config check config.yaml    check a config file
//	mirrorproxy version                     version, commit, Go version
//
// Configuration: defaults, then the file given with --config, then the
// flags --listen, --upstream, --log-level, --log-format (see package
// config and config.example.yaml). Logs are zerolog on stderr: JSON, or
// console lines when stderr is a terminal (log.format auto).
//
// Signals: SIGTERM or SIGINT starts a graceful shutdown (stop accepting, let
// sessions finish within shutdown_grace, then close the rest with 320
// CONNECTION_FORCED); the exit code is 0 once it is done. A second signal
// closes every session at once and exits 1; a third exits without waiting.
//
// Exit codes: 0 success, 1 any failure (bad configuration, cannot listen,
// the server failed, forced shutdown).
//
// The version is set at build time: go build -ldflags "-X main.version=v1.2.3";
// the commit comes from the Go build information when the build recorded it.
package main
