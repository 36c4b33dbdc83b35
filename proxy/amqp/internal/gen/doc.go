// Package gen turns spec.txt, our compact description of the AMQP 0-9-1
// methods RabbitMQ speaks, into the Go source of proxy/amqp's generated
// files: methods_gen.go with the class and method id constants and the
// dispatch DecodeMethod uses, and methods_<class>_gen.go with one struct per
// method and its argument encoder and decoder.
//
// The amqpgen command writes the files (go generate ./proxy/amqp); the amqp
// package's TestGeneratedCodeIsCurrent compares Generate's output with the
// checked-in files.
package gen
