module github.com/polybus/polybus/bindings/go

go 1.24
