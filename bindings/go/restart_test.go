package polybus_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	polybus "github.com/polybus/polybus/bindings/go"
)

// natsServer is a nats-server with JetStream that a test owns: started on a free loopback
// port with its storage in a temporary directory, killed and started again on the same port
// and storage. The shared brokers of the harness are never restarted by the Go tests (other
// suites use them at the same time).
type natsServer struct {
	t      *testing.T
	bin    string
	port   int
	store  string
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed once the running process has been reaped
	log    *serverLog
	logs   []string // the logs of the processes that ended, for failure messages
}

// serverLog collects a server's output and closes ready once it says it is ready.
type serverLog struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	ready chan struct{}
	once  sync.Once
}

func (l *serverLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	if bytes.Contains(l.buf.Bytes(), []byte("Server is ready")) {
		l.once.Do(func() { close(l.ready) })
	}
	return len(p), nil
}

func (l *serverLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// natsServerBinary is POLYBUS_TEST_NATS_SERVER, else nats-server on PATH, else
// /usr/sbin/nats-server.
func natsServerBinary(t *testing.T) string {
	if v := os.Getenv("POLYBUS_TEST_NATS_SERVER"); v != "" {
		return v
	}
	if p, err := exec.LookPath("nats-server"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/nats-server"); err == nil {
		return "/usr/sbin/nats-server"
	}
	t.Fatal("nats-server is not installed (not on PATH nor /usr/sbin/nats-server; set POLYBUS_TEST_NATS_SERVER)")
	return ""
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startNATSServer starts a server of the test's own, killed when the test ends.
func startNATSServer(t *testing.T) *natsServer {
	t.Helper()
	s := &natsServer{t: t, bin: natsServerBinary(t), port: freePort(t), store: t.TempDir()}
	// Registered after TempDir, so it runs before the directory is removed.
	t.Cleanup(func() {
		s.kill()
		if t.Failed() {
			s.dumpLogs()
		}
	})
	s.start()
	return s
}

func (s *natsServer) addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// start runs the server and waits until it says it is ready (JetStream included).
func (s *natsServer) start() {
	s.t.Helper()
	log := &serverLog{ready: make(chan struct{})}
	cmd := exec.Command(s.bin, "-a", "127.0.0.1", "-p", strconv.Itoa(s.port), "-js", "-sd", s.store)
	cmd.Stdout = log
	cmd.Stderr = log
	// Killed with the test binary, should it die before the cleanup runs. The signal is tied
	// to the OS thread that forked, so the goroutine below holds its thread locked for as long
	// as the server runs (it waits for the server), and only then lets it go.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	exited := make(chan struct{})
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(exited)
	}()
	if err := <-started; err != nil {
		s.t.Fatalf("starting %s: %v", s.bin, err)
	}
	s.mu.Lock()
	s.cmd, s.exited, s.log = cmd, exited, log
	s.mu.Unlock()
	select {
	case <-log.ready:
	case <-exited:
		s.t.Fatalf("nats-server on %s exited before it was ready:\n%s", s.addr(), log)
	case <-time.After(waitTimeout(s.t)):
		s.t.Fatalf("nats-server on %s was not ready in time:\n%s", s.addr(), log)
	}
}

// kill sends SIGKILL to the running server (if any) and waits until it is reaped.
func (s *natsServer) kill() {
	s.mu.Lock()
	cmd, exited, log := s.cmd, s.exited, s.log
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-exited:
	case <-time.After(waitTimeout(s.t)):
		s.t.Errorf("nats-server (pid %d) did not exit after SIGKILL", cmd.Process.Pid)
	}
	s.mu.Lock()
	s.logs = append(s.logs, log.String())
	s.mu.Unlock()
}

func (s *natsServer) dumpLogs() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, l := range s.logs {
		s.t.Logf("nats-server run %d log:\n%s", i+1, l)
	}
}

// awaitState reads a watch channel until it reports want, failing on a timeout, on
// StateClosed (unless wanted) or when the channel ends. It returns the states seen on the way.
func awaitState(t *testing.T, what string, ch <-chan polybus.ConnectionState, want polybus.ConnectionState, timeout time.Duration) []polybus.ConnectionState {
	t.Helper()
	var seen []polybus.ConnectionState
	deadline := time.After(timeout)
	for {
		select {
		case s, ok := <-ch:
			if !ok {
				t.Fatalf("%s: the watch channel ended before %v (seen %v)", what, want, seen)
			}
			seen = append(seen, s)
			if s == want {
				return seen
			}
			if s == polybus.StateClosed {
				t.Fatalf("%s: closed while waiting for %v (seen %v)", what, want, seen)
			}
		case <-deadline:
			t.Fatalf("%s: no %v within %v (seen %v)", what, want, timeout, seen)
		}
	}
}

// A nats-server of the test's own is killed with SIGKILL and started again on the same port
// and storage: a nats:// and a jetstream:// bus report Disconnected, then Connected again; their
// subscriptions (made before the kill) receive events published after the restart; and the
// JetStream events published before the kill, held by a blocked handler when the server died,
// are all handled after the restart (at least once: duplicates are allowed, loss is not).
func TestANatsRestartIsObservedAndSubscriptionsResume(t *testing.T) {
	srv := startNATSServer(t)
	ctx := context.Background()
	// Generous: reconnection backs off up to 2 s between attempts, a JetStream pull notices a
	// dead connection by missing heartbeats (5 s), and the runner may be loaded.
	long := 6 * waitTimeout(t)

	natsBus := openBroker(t, polybus.Config{URL: "nats://" + srv.addr(), Name: "go-restart"})
	jsBus := openBroker(t, polybus.Config{
		URL: "jetstream://" + srv.addr(), Name: "go-restart",
		// File storage (the default) so that the stream and its consumer survive the kill; a
		// short ack wait so that an acknowledgement lost with the connection is redelivered
		// soon.
		JetStream: &polybus.JetStreamConfig{Storage: "file", AckWait: 3 * time.Second},
	})
	watchCtx, stopWatching := context.WithCancel(ctx)
	t.Cleanup(stopWatching)
	natsStates := natsBus.WatchConnectionState(watchCtx)
	jsStates := jsBus.WatchConnectionState(watchCtx)
	if s := nextState(t, natsStates); s != polybus.StateConnected {
		t.Fatalf("nats: first state %v", s)
	}
	if s := nextState(t, jsStates); s != polybus.StateConnected {
		t.Fatalf("jetstream: first state %v", s)
	}

	// NATS core: one subscription, checked before the kill.
	natsGot := make(chan string, 1000)
	if _, err := natsBus.Subscribe(ctx, "orders.*", func(_ context.Context, e *polybus.Event) error {
		select {
		case natsGot <- string(e.Payload):
		default:
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := natsBus.Publish(ctx, "orders.created", "before"); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-natsGot:
		if p != "before" {
			t.Fatalf("nats: got %q before the kill", p)
		}
	case <-time.After(waitTimeout(t)):
		t.Fatal("nats: no event before the kill")
	}

	// JetStream: a subscription whose handler blocks on the events published before the kill
	// until the server is back.
	gate := make(chan struct{})
	var openGate sync.Once
	release := func() { openGate.Do(func() { close(gate) }) }
	t.Cleanup(release) // before the bus closes (cleanups run last-in first-out)
	blocked := make(chan struct{}, 1)
	progress := make(chan struct{}, 1)
	var mu sync.Mutex
	handled := map[string]int{}
	if _, err := jsBus.Subscribe(ctx, "jobs.>", func(hctx context.Context, e *polybus.Event) error {
		p := string(e.Payload)
		if strings.HasPrefix(p, "before-") {
			select {
			case blocked <- struct{}{}:
			default:
			}
			select {
			case <-gate:
			case <-hctx.Done():
				return hctx.Err()
			}
		}
		mu.Lock()
		handled[p]++
		mu.Unlock()
		select {
		case progress <- struct{}{}:
		default:
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	const before = 5
	for i := 0; i < before; i++ {
		// Returns once the broker stored the event (its PubAck).
		if err := jsBus.Publish(ctx, "jobs.run", fmt.Sprintf("before-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-blocked:
	case <-time.After(waitTimeout(t)):
		t.Fatal("jetstream: the handler did not receive an event before the kill")
	}

	// Kill: both buses report Disconnected.
	srv.kill()
	awaitState(t, "nats after the kill", natsStates, polybus.StateDisconnected, long)
	awaitState(t, "jetstream after the kill", jsStates, polybus.StateDisconnected, long)
	// The server is dead, so nothing can reconnect meanwhile.
	if s := natsBus.ConnectionState(); s != polybus.StateDisconnected {
		t.Errorf("nats: ConnectionState %v while the server is down", s)
	}
	if s := jsBus.ConnectionState(); s != polybus.StateDisconnected {
		t.Errorf("jetstream: ConnectionState %v while the server is down", s)
	}

	// Restart on the same port and storage: both buses report Connected again.
	srv.start()
	awaitState(t, "nats after the restart", natsStates, polybus.StateConnected, long)
	awaitState(t, "jetstream after the restart", jsStates, polybus.StateConnected, long)
	release()

	// NATS core is at most once: an event published while the subscription is not yet
	// registered again on the server would be lost by design, so publish until one arrives
	// (paced, not a synchronisation: the first one normally arrives).
	deadline := time.After(long)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	published := 0
	for resumed := false; !resumed; {
		published++
		if err := natsBus.Publish(ctx, "orders.created", fmt.Sprintf("after-%d", published)); err != nil {
			t.Logf("nats: publish after the restart: %v", err)
		}
		select {
		case p := <-natsGot:
			if !strings.HasPrefix(p, "after-") {
				t.Fatalf("nats: got %q after the restart", p)
			}
			resumed = true
		case <-tick.C:
		case <-deadline:
			t.Fatalf("nats: the subscription did not resume (%d events published after the restart)", published)
		}
	}
	t.Logf("nats: resumed, %d publish(es) after the restart", published)

	// JetStream: an event published after the restart is stored (the publish may be refused
	// while JetStream recovers: retried, paced), then reaches the subscription made before the
	// kill, and every event published before the kill is handled.
	deadline = time.After(long)
	attempts := 0
	for {
		attempts++
		err := jsBus.Publish(ctx, "jobs.run", "after")
		if err == nil {
			break
		}
		t.Logf("jetstream: publish after the restart, attempt %d: %v", attempts, err)
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("jetstream: no publish accepted after the restart: %v", err)
		}
	}
	want := []string{"after"}
	for i := 0; i < before; i++ {
		want = append(want, fmt.Sprintf("before-%d", i))
	}
	missing := func() []string {
		mu.Lock()
		defer mu.Unlock()
		var out []string
		for _, p := range want {
			if handled[p] == 0 {
				out = append(out, p)
			}
		}
		return out
	}
	deadline = time.After(long)
	for len(missing()) > 0 {
		select {
		case <-progress:
		case <-deadline:
			lost := missing()
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("jetstream: lost across the restart: %v (handled %v)", lost, handled)
		}
	}
	mu.Lock()
	t.Logf("jetstream: handled %v (a count above 1 is a redelivery)", handled)
	mu.Unlock()
	if s := natsBus.ConnectionState(); s != polybus.StateConnected {
		t.Errorf("nats: ConnectionState %v after the restart", s)
	}
	if s := jsBus.ConnectionState(); s != polybus.StateConnected {
		t.Errorf("jetstream: ConnectionState %v after the restart", s)
	}
}
