module github.com/polybus/polybus/examples/go

go 1.24

require github.com/polybus/polybus/bindings/go v0.0.0

replace github.com/polybus/polybus/bindings/go => ../../bindings/go
