// Command amqpgen writes proxy/amqp's generated method files
// (methods_gen.go and methods_<class>_gen.go) from the method description in
// proxy/amqp/internal/gen/spec.txt. It runs from `go generate ./proxy/amqp`:
//
//	amqpgen -dir .
package main
