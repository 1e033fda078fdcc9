// Command polybus-scale measures what many subscriptions cost a Go service: for 10, 1,000 and
// 10,000 subscriptions (each on its own topic, concurrency 1) on one bus, it reports the OS
// threads and resident memory of the process once they are idle, the CPU the idle process
// uses over about 2 s, the time to subscribe them all, to deliver one event to each, and to
// close the bus. Each count runs in a fresh child process, so that one does not inherit the
// threads and memory of the one before. It prints one JSON line per count:
//
//	go run ./cmd/polybus-scale                      # memory://, 10, 1000 and 10000
//	go run ./cmd/polybus-scale -counts 1000 -url nats://127.0.0.1:4222
//
// It reads /proc/self/status and /proc/self/stat, so it runs on Linux only. It measures and
// reports; it asserts nothing.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	polybus "github.com/polybus/polybus/bindings/go"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/self/stat (100 on Linux).
const clockTicks = 100

// result is one count's measurements.
type result struct {
	Lang          string  `json:"lang"`
	Case          string  `json:"case"`
	URL           string  `json:"url"`
	Subscriptions int     `json:"subscriptions"`
	ThreadsOpen   int     `json:"threads_open"` // OS threads with the bus open, before subscribing
	Threads       int     `json:"threads"`      // OS threads with every subscription idle
	RSSOpenMB     float64 `json:"rss_open_mb"`  // resident memory before subscribing
	RSSMB         float64 `json:"rss_mb"`       // resident memory with every subscription idle
	IdleCPU       float64 `json:"idle_cpu"`     // cores busy while idle (0.01 is 1% of a core)
	IdleSeconds   float64 `json:"idle_seconds"` // how long the idle CPU was measured
	SubscribeS    float64 `json:"subscribe_s"`  // to subscribe them all
	PublishS      float64 `json:"publish_s"`    // to publish one event to each (one PublishBatch)
	DeliverS      float64 `json:"deliver_s"`    // from the publish until every event was handled
	CloseS        float64 `json:"close_s"`      // Bus.Close
}

func main() {
	counts := flag.String("counts", "10,1000,10000", "subscription counts, comma-separated")
	url := flag.String("url", "memory://", "the bus URL")
	idle := flag.Duration("idle", 2*time.Second, "how long to measure the idle CPU")
	one := flag.Int("one", 0, "measure this count in this process (used by the parent)")
	flag.Parse()

	if *one > 0 {
		r, err := measure(*url, *one, *idle)
		if err != nil {
			fail(err)
		}
		line, _ := json.Marshal(r)
		fmt.Println(string(line))
		return
	}
	self, err := os.Executable()
	if err != nil {
		fail(err)
	}
	for _, s := range strings.Split(*counts, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			fail(fmt.Errorf("-counts: %q is not a positive count", s))
		}
		cmd := exec.Command(self, "-one", strconv.Itoa(n), "-url", *url, "-idle", idle.String())
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fail(fmt.Errorf("%d subscriptions: %w", n, err))
		}
	}
}

// measure opens a bus, subscribes n handlers, lets them idle and closes the bus.
func measure(url string, n int, idle time.Duration) (result, error) {
	r := result{Lang: "go", Case: "subscriptions", URL: url, Subscriptions: n}
	ctx := context.Background()
	bus, err := polybus.OpenConfig(ctx, polybus.Config{URL: url, Prefix: fmt.Sprintf("scale%d", os.Getpid())})
	if err != nil {
		return r, err
	}
	defer bus.Close()
	r.ThreadsOpen, r.RSSOpenMB = threadsAndRSS()

	var handled atomic.Int64
	all := make(chan struct{})
	handler := func(context.Context, *polybus.Event) error {
		if handled.Add(1) == int64(n) {
			close(all)
		}
		return nil
	}
	start := time.Now()
	for i := range n {
		if _, err := bus.Subscribe(ctx, "scale.t"+strconv.Itoa(i), handler); err != nil {
			return r, fmt.Errorf("subscription %d: %w", i, err)
		}
	}
	r.SubscribeS = time.Since(start).Seconds()

	start = time.Now()
	batch := make([]polybus.Message, n)
	for i := range batch {
		batch[i] = polybus.Message{Topic: "scale.t" + strconv.Itoa(i), Payload: []byte("x")}
	}
	if err := bus.PublishBatch(ctx, batch); err != nil {
		return r, err
	}
	r.PublishS = time.Since(start).Seconds()
	<-all
	r.DeliverS = time.Since(start).Seconds()

	// Idle: nothing published, every subscription waiting.
	time.Sleep(200 * time.Millisecond)
	before, start := cpuTicks(), time.Now()
	time.Sleep(idle)
	after, took := cpuTicks(), time.Since(start)
	r.IdleSeconds = took.Seconds()
	r.IdleCPU = float64(after-before) / clockTicks / took.Seconds()
	r.Threads, r.RSSMB = threadsAndRSS()

	start = time.Now()
	if err := bus.Close(); err != nil {
		return r, err
	}
	r.CloseS = time.Since(start).Seconds()
	return r, nil
}

// threadsAndRSS reads the process's thread count and resident memory (MB) from
// /proc/self/status.
func threadsAndRSS() (threads int, rssMB float64) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		fail(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fields := strings.Fields(value)
		if len(fields) == 0 {
			continue
		}
		switch name {
		case "Threads":
			threads, _ = strconv.Atoi(fields[0])
		case "VmRSS":
			kb, _ := strconv.ParseFloat(fields[0], 64)
			rssMB = kb / 1024
		}
	}
	return threads, rssMB
}

// cpuTicks returns utime+stime of the process from /proc/self/stat, in clock ticks.
func cpuTicks() int64 {
	data, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		fail(err)
	}
	// The command name, in parentheses, may hold spaces: the fields start after the last ')'.
	rest := data[bytes.LastIndexByte(data, ')')+2:]
	fields := strings.Fields(string(rest))
	// After the name: state is field 3 of the whole line, utime 14 and stime 15.
	utime, _ := strconv.ParseInt(fields[14-3], 10, 64)
	stime, _ := strconv.ParseInt(fields[15-3], 10, 64)
	return utime + stime
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "polybus-scale:", err)
	os.Exit(1)
}
