// Package config is mirrorproxy's configuration: a YAML file decoded into a
// plain Config (data only), checked with errors that name the key and the
// file line, and turned into the runtime's settings (proxy.Options).
//
// The order is fixed: Default, then Load (or Parse) lays a file over the
// defaults, then Set lays command-line flags over that, then Validate checks
// the result, then Options builds what the server takes. Every error names
// where the value came from:
//
//	config.yaml:12: limits.heartbeat: "5x" is not a duration (a number with a unit: 500ms, 5s, 1m)
//	flag --listen: listen.address: "5673" is not host:port
//
// Unknown keys are errors, so a typo never silently leaves a default in
// place. Sections that later parts of the product will read are rejected
// with a "not built yet" error until they exist; config.example.yaml at the
// top of the repository lists every key with its default.
package config
