package polybus_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	polybus "github.com/polybus/polybus/bindings/go"
)

// The conformance steps that run a process: restart_broker (the harness restarts the
// backend's broker) and child (this test binary, run again as a group member that leaves
// without closing its bus). See tests/conformance/SCHEMA.md.

// childEnv is the environment variable that makes this test binary a child step's child
// (SCHEMA.md, "Child processes"); TestMain runs the child when it is set.
const childEnv = "POLYBUS_CONFORMANCE_CHILD"

// TestMain runs the tests, or, with POLYBUS_CONFORMANCE_CHILD set, the child of a child step:
// then no test runs and the process exits as the child's main returns.
func TestMain(m *testing.M) {
	if spec, ok := os.LookupEnv(childEnv); ok {
		// As a Go program whose main returns: os.Exit, with nothing closed.
		os.Exit(conformanceChild(spec))
	}
	os.Exit(m.Run())
}

// childPublish is a child step's publish: count events to topic, {i} in payload replaced.
type childPublish struct {
	Topic   string `json:"topic"`
	Payload string `json:"payload"`
	Count   int    `json:"count"`
}

// childSpec is what a child step hands its child in POLYBUS_CONFORMANCE_CHILD.
type childSpec struct {
	Config  map[string]any `json:"config"`
	Pattern string         `json:"pattern"`
	Options map[string]any `json:"options"`
	Handler struct {
		DelayMS int `json:"delay_ms"`
	} `json:"handler"`
	Publish   childPublish `json:"publish"`
	ExitAfter int          `json:"exit_after"`
}

// childLine is the line a child writes as an invocation finishes.
type childLine struct {
	Payload   *string `json:"payload"`
	Succeeded *bool   `json:"succeeded"`
}

// conformanceChild is the child of a child step: it opens a bus, subscribes with a handler
// that works for delay_ms and writes one line per finished invocation, publishes, waits for
// exit_after finished invocations and returns the process's exit status, closing nothing.
func conformanceChild(spec string) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "child: "+format+"\n", args...)
		return 2
	}
	var c childSpec
	dec := json.NewDecoder(strings.NewReader(spec))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return fail("%s is not a child's spec: %v", childEnv, err)
	}
	cfg, err := busConfig(c.Config)
	if err != nil {
		return fail("config: %v", err)
	}
	opts, err := subscribeOptions(c.Options)
	if err != nil {
		return fail("%v", err)
	}
	// What took how long goes to stderr, which the parent shows.
	start := time.Now()
	var phases []string
	phase := func(what string) {
		phases = append(phases, fmt.Sprintf("%s after %v", what, time.Since(start).Round(time.Millisecond)))
	}
	defer func() { fmt.Fprintf(os.Stderr, "child: %s\n", strings.Join(phases, ", ")) }()
	ctx := context.Background()
	bus, err := polybus.OpenConfig(ctx, cfg)
	if err != nil {
		return fail("open: %v", err)
	}
	phase("opened")
	var (
		mu       sync.Mutex
		finished int
		reached  = make(chan struct{})
	)
	if c.ExitAfter <= 0 {
		close(reached)
	}
	delay := time.Duration(c.Handler.DelayMS) * time.Millisecond
	_, err = bus.Subscribe(ctx, c.Pattern, func(_ context.Context, e *polybus.Event) error {
		time.Sleep(delay) // the workload
		payload, ok := string(e.Payload), true
		line, err := json.Marshal(childLine{Payload: &payload, Succeeded: &ok})
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		// os.Stdout is not buffered: the line is out once Write returns.
		if _, err := os.Stdout.Write(append(line, '\n')); err != nil {
			fmt.Fprintf(os.Stderr, "child: stdout: %v\n", err)
		}
		finished++
		if finished == c.ExitAfter {
			close(reached)
		}
		return nil
	}, opts...)
	if err != nil {
		return fail("subscribe: %v", err)
	}
	phase("subscribed")
	for i := range c.Publish.Count {
		payload := strings.ReplaceAll(c.Publish.Payload, "{i}", strconv.Itoa(i))
		if err := bus.Publish(ctx, c.Publish.Topic, payload); err != nil {
			return fail("publish %d: %v", i, err)
		}
	}
	phase(fmt.Sprintf("published %d", c.Publish.Count))
	wait := scaled(10 * time.Second)
	select {
	case <-reached:
		phase(fmt.Sprintf("%d finished", c.ExitAfter))
	case <-time.After(wait):
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(os.Stderr, "child: %d of %d invocations finished within %v\n", finished, c.ExitAfter, wait)
		return 3
	}
	// Leaves without closing the bus or the subscription.
	return 0
}

// scaled is d times POLYBUS_TEST_TIMEOUT_SCALE (1 when unset or not a positive number: the
// parent has checked it).
func scaled(d time.Duration) time.Duration {
	if f, err := strconv.ParseFloat(os.Getenv("POLYBUS_TEST_TIMEOUT_SCALE"), 64); err == nil && f > 0 {
		return time.Duration(float64(d) * f)
	}
	return d
}

// child runs a child step: this test binary again, as the child, with the scenario's bus
// configuration; it must exit with status 0 within timeout_ms (scaled). Its lines become the
// returned recording (finished invocations only, in the order written).
func (r *runner) child(at string, s step) *recorder {
	t := r.t
	t.Helper()
	options := s.Options
	if options == nil {
		options = map[string]any{}
	}
	spec, err := json.Marshal(map[string]any{
		"config":     r.config,
		"pattern":    *s.Pattern,
		"options":    options,
		"handler":    map[string]any{"delay_ms": s.Handler.DelayMS},
		"publish":    s.Publish,
		"exit_after": *s.ExitAfter,
	})
	if err != nil {
		t.Fatalf("%s: %v", at, err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("%s: %v", at, err)
	}
	timeout := 10 * time.Second
	if s.TimeoutMS != nil {
		timeout = time.Duration(*s.TimeoutMS) * time.Millisecond
	}
	timeout = time.Duration(float64(timeout) * r.scale)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// -test.run=^$: were TestMain not to see the variable, no test would run either.
	cmd := exec.CommandContext(ctx, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(spec))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second // the output is read once the child is gone, even if killed
	start := time.Now()
	err = cmd.Run()
	switch {
	case ctx.Err() != nil:
		t.Fatalf("%s: the child did not exit within %v (killed); its stderr:\n%s", at, timeout, stderr.String())
	case err != nil:
		t.Fatalf("%s: the child ended %v; its stderr:\n%s", at, err, stderr.String())
	}
	rec := newRecorder(r.bus)
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		var l childLine
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&l); err != nil || l.Payload == nil || l.Succeeded == nil || dec.More() {
			t.Fatalf("%s: the child wrote %q, not a finished invocation (%v)", at, sc.Text(), err)
		}
		rec.calls = append(rec.calls, &invocation{payload: *l.Payload, done: true, ok: *l.Succeeded})
		rec.finished++
		if *l.Succeeded {
			rec.succeeded++
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("%s: reading the child's output: %v", at, err)
	}
	t.Logf("%s: the child exited after %v with %d finished invocations; its stderr: %s",
		at, time.Since(start).Round(time.Millisecond), rec.finished, strings.TrimSpace(stderr.String()))
	return rec
}

// restartBroker is restart_broker: tests/harness/brokers.sh restart <broker>, from the
// repository root, with the test's environment (the harness's port and state variables
// apply). It fails when the backend has no broker or the command fails.
func (r *runner) restartBroker(at string) {
	t := r.t
	t.Helper()
	if r.broker == "" {
		t.Fatalf("%s: the backend has no broker", at)
	}
	// A bound for a harness that hangs, far above a restart's few seconds.
	limit := time.Duration(float64(2*time.Minute) * r.scale)
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join("tests", "harness", "brokers.sh"), "restart", r.broker)
	cmd.Dir = repoRoot()
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = errors.Join(err, fmt.Errorf("still running after %v", limit))
	}
	if err != nil {
		t.Fatalf("%s: brokers.sh restart %s: %v; its output:\n%s", at, r.broker, err, out)
	}
	t.Logf("%s: restarted %s in %v", at, r.broker, time.Since(start).Round(time.Millisecond))
}
