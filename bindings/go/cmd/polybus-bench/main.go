// Command polybus-bench measures events per second from publish to handler on memory://: one
// publisher, one subscriber, 64-byte payloads, the handler counting events. It prints one JSON
// line per case, as bench/run.sh expects, beside an in-process peer (a buffered Go channel).
//
//	POLYBUS_BENCH_EVENTS=2000000 go run ./cmd/polybus-bench
//
// Broker rows: with POLYBUS_BENCH_URL (one URL or several, comma-separated, for example
// nats://127.0.0.1:4222,jetstream://127.0.0.1:4222) it measures PublishBatch on each broker
// instead, as the Rust core's, Python's and Node's broker cases do: chunks of 4096, one
// subscriber, from the first publish to the last event handled, on a fresh prefix, after an
// unreported warm-up round of a quarter; POLYBUS_BENCH_BROKER_EVENTS events (default 200,000)
// of POLYBUS_BENCH_SIZE bytes (default 64).
//
// Every throughput line also gives "size" (the payload bytes), "cpu_us_per_event" (this
// process's user and system CPU time over the measured run, per event) and "rss_mb" (the
// process's peak resident set over the measured run, Linux only; 0 elsewhere).
//
// POLYBUS_BENCH_CASE picks other cases, each run on every URL of POLYBUS_BENCH_URL:
//
//   - latency: Publish awaited per event (a durable broker's confirmation included), one
//     subscriber, at POLYBUS_BENCH_LATENCY_RATE events a second (default 5,000) for
//     POLYBUS_BENCH_LATENCY_SECONDS (default 4) after a second of warm-up; it prints the
//     percentiles of publish-to-handler latency ("<scheme> latency go").
//   - single: on the durable brokers (jetstream://, redis://, kafka://), Publish awaited per
//     event, one subscriber, POLYBUS_BENCH_SINGLE_EVENTS events (default 3,000)
//     ("<scheme> publish one at a time").
//   - fanout: PublishBatch to 10 subscriptions each receiving every event ("<scheme> fan-out
//     to 10", events counting deliveries), and to 4 subscriptions in one group sharing them
//     ("<scheme> group of 4"); POLYBUS_BENCH_BROKER_EVENTS deliveries.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	polybus "github.com/polybus/polybus/bindings/go"
)

const (
	batchSize = 1024 // the in-process PublishBatch's chunk
	chunk     = 4096 // the broker cases' PublishBatch chunk
	topic     = "bench.events"
)

// result is one throughput case's line.
type result struct {
	Lang         string  `json:"lang"`
	Case         string  `json:"case"`
	Events       int     `json:"events"` // handled: deliveries, where an event goes to several
	Seconds      float64 `json:"seconds"`
	EventsPerSec int64   `json:"events_per_sec"`
	Size         int     `json:"size"`             // payload bytes
	CPUPerEvent  float64 `json:"cpu_us_per_event"` // the process's CPU time per event, µs
	RSSMB        float64 `json:"rss_mb"`           // the process's peak resident set
}

// count reads a positive count from the environment variable name, or gives def.
func count(name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil || v <= 0 {
		fail(fmt.Errorf("%s=%q is not a positive count", name, s))
	}
	return v
}

// urls gives the URLs of POLYBUS_BENCH_URL.
func urls() []string {
	var out []string
	for _, url := range strings.Split(os.Getenv("POLYBUS_BENCH_URL"), ",") {
		if url = strings.TrimSpace(url); url != "" {
			out = append(out, url)
		}
	}
	return out
}

// scheme gives url's scheme with its "://", as the case names carry it.
func scheme(url string) string {
	return url[:strings.Index(url, "://")+3]
}

func main() {
	mode := os.Getenv("POLYBUS_BENCH_CASE")
	if mode != "" && len(urls()) == 0 {
		fail(fmt.Errorf("POLYBUS_BENCH_CASE=%s runs on the URLs of POLYBUS_BENCH_URL, which is empty", mode))
	}
	size := count("POLYBUS_BENCH_SIZE", 64)
	switch mode {
	case "":
		if len(urls()) == 0 {
			n := count("POLYBUS_BENCH_EVENTS", 2_000_000)
			emit("go Bus.Publish", n, 64, runBus(n, false))
			emit("go Bus.PublishBatch", n, 64, runBus(n, true))
			emit("go chan (peer)", n, 64, runChan(n))
			return
		}
		n := count("POLYBUS_BENCH_BROKER_EVENTS", 200_000)
		for _, url := range urls() {
			batched.measure("go "+scheme(url)+" PublishBatch", url, n, size)
		}
	case "latency":
		rate := count("POLYBUS_BENCH_LATENCY_RATE", 5000)
		seconds := count("POLYBUS_BENCH_LATENCY_SECONDS", 4)
		for _, url := range urls() {
			latencyCase(url, rate, seconds)
		}
	case "single":
		n := count("POLYBUS_BENCH_SINGLE_EVENTS", 3000)
		for _, url := range urls() {
			if durable(url) {
				oneAtATime.measure(scheme(url)+" publish one at a time", url, n, size)
			}
		}
	case "fanout":
		n := count("POLYBUS_BENCH_BROKER_EVENTS", 200_000)
		for _, url := range urls() {
			fanOut.measure(scheme(url)+" fan-out to 10", url, max(1, n/fanOut.subs), size)
			group.measure(scheme(url)+" group of 4", url, n, size)
		}
	default:
		fail(fmt.Errorf("POLYBUS_BENCH_CASE=%q: expected latency, single or fanout (or none)", mode))
	}
}

// durable tells the URLs of the brokers that confirm what they store.
func durable(url string) bool {
	for _, s := range []string{"jetstream://", "redis://", "kafka://"} {
		if strings.HasPrefix(url, s) {
			return true
		}
	}
	return false
}

// run is what one measured run took: its wall time, and the CPU time and the peak memory the
// process spent on it.
type run struct {
	elapsed     time.Duration
	cpuPerEvent float64 // µs of CPU time per event
	rssMB       float64 // the peak resident set
}

// usage measures a run from start to stop.
type usage struct {
	began time.Time
	cpu   time.Duration
}

// start resets the process's peak resident set (VmHWM, by writing 5 to /proc/self/clear_refs;
// best effort) and notes the clock and the CPU time spent so far.
func start() usage {
	if f, err := os.OpenFile("/proc/self/clear_refs", os.O_WRONLY, 0); err == nil {
		_, _ = f.WriteString("5")
		_ = f.Close()
	}
	return usage{began: time.Now(), cpu: cpuTime()}
}

// stop ends a run of events events (deliveries, where one event goes to several handlers).
func (u usage) stop(events int) run {
	elapsed := time.Since(u.began)
	cpu := cpuTime() - u.cpu
	perEvent := float64(cpu.Microseconds()) / float64(max(1, events))
	return run{elapsed: elapsed, cpuPerEvent: math.Round(perEvent*100) / 100, rssMB: peakRSS()}
}

// cpuTime is the user and system CPU time the process has spent.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// peakRSS is the process's peak resident set (VmHWM in /proc/self/status) in MB, 1 decimal, or
// 0 where there is no /proc.
func peakRSS() float64 {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return math.Round(float64(kb)/1024*10) / 10
		}
	}
	return 0
}

// runBus publishes n events, one at a time or in batches, and measures the run until the
// handler has seen the last one.
func runBus(n int, batched bool) run {
	ctx := context.Background()
	bus, err := polybus.Open(ctx, "memory://")
	if err != nil {
		fail(err)
	}
	defer bus.Close()
	done := subscribe(bus, 1, false, n)
	payload := make([]byte, 64)
	batch := make([]polybus.Message, batchSize)
	for i := range batch {
		batch[i] = polybus.Message{Topic: topic, Payload: payload}
	}
	u := start()
	if batched {
		for sent := 0; sent < n; sent += batchSize {
			if err := bus.PublishBatch(ctx, batch[:min(batchSize, n-sent)]); err != nil {
				fail(err)
			}
		}
	} else {
		for range n {
			if err := bus.Publish(ctx, topic, payload); err != nil {
				fail(err)
			}
		}
	}
	<-done
	return u.stop(n)
}

// subscribe makes subs subscriptions to topic on bus, all in one group when grouped, and gives
// a channel closed once each has handled n events, or, grouped, once they have handled n
// between them.
func subscribe(bus *polybus.Bus, subs int, grouped bool, n int) <-chan struct{} {
	var opts []polybus.SubscribeOption
	counters := subs
	if grouped {
		// A new group per run: a Kafka group left behind by an earlier run cannot delay it.
		var id [8]byte
		_, _ = rand.Read(id[:])
		group := polybus.WithGroup("bench" + hex.EncodeToString(id[:]))
		opts, counters = []polybus.SubscribeOption{group}, 1
	}
	done := make(chan struct{})
	seen := make([]atomic.Int64, counters)
	var left atomic.Int64
	left.Store(int64(counters))
	for i := range subs {
		c := &seen[i%counters]
		_, err := bus.Subscribe(context.Background(), topic, func(context.Context, *polybus.Event) error {
			if c.Add(1) == int64(n) && left.Add(-1) == 0 {
				close(done)
			}
			return nil
		}, opts...)
		if err != nil {
			fail(err)
		}
	}
	return done
}

// openBroker opens a bus on url with a fresh prefix, so that no earlier run's events are
// there.
func openBroker(url string) *polybus.Bus {
	var id [16]byte
	_, _ = rand.Read(id[:])
	cfg := map[string]any{"url": url, "prefix": "bench" + hex.EncodeToString(id[:])}
	if strings.HasPrefix(url, "redis") {
		// Streams untrimmed, so a lagging reader loses none.
		cfg["redis"] = map[string]any{"max_len": 0}
	}
	text, _ := json.Marshal(cfg)
	bus, err := polybus.OpenJSON(context.Background(), string(text))
	if err != nil {
		fail(err)
	}
	return bus
}

// workload is a broker case: its subscriptions and how it publishes.
type workload struct {
	subs    int  // subscriptions to topic
	grouped bool // in one group, sharing the events (else each gets every event)
	// publish publishes n events of payload to topic.
	publish func(bus *polybus.Bus, payload []byte, n int)
}

var (
	// batched is the broker rows' case: PublishBatch in chunks of 4096 to one subscriber.
	batched = workload{subs: 1, publish: publishBatch}
	// oneAtATime is Publish awaited per event (confirmed, on a durable broker) to one
	// subscriber: what a service publishing as it goes gets.
	oneAtATime = workload{subs: 1, publish: publishEach}
	// fanOut is PublishBatch to 10 subscriptions each receiving every event.
	fanOut = workload{subs: 10, publish: publishBatch}
	// group is PublishBatch to 4 subscriptions of one group, each event handled by one.
	group = workload{subs: 4, grouped: true, publish: publishBatch}
)

func publishBatch(bus *polybus.Bus, payload []byte, n int) {
	batch := make([]polybus.Message, min(chunk, n))
	for i := range batch {
		batch[i] = polybus.Message{Topic: topic, Payload: payload}
	}
	for sent := 0; sent < n; sent += chunk {
		if err := bus.PublishBatch(context.Background(), batch[:min(chunk, n-sent)]); err != nil {
			fail(err)
		}
	}
}

func publishEach(bus *polybus.Bus, payload []byte, n int) {
	for range n {
		if err := bus.Publish(context.Background(), topic, payload); err != nil {
			fail(err)
		}
	}
}

// deliveries is how many events the handlers of w see between them when n are published.
func (w workload) deliveries(n int) int {
	if w.grouped {
		return n
	}
	return n * w.subs
}

// measure runs an unreported warm-up round of a quarter of n published events, then n, and
// emits the second round as case name, its events counting deliveries.
func (w workload) measure(name, url string, n, size int) {
	w.round(url, max(1, n/4), size)
	emit(name, w.deliveries(n), size, w.round(url, n, size))
}

// round publishes n events of size bytes on a fresh bus on url and measures the run from the
// first publish until the handlers have seen them all.
func (w workload) round(url string, n, size int) run {
	bus := openBroker(url)
	defer bus.Close()
	done := subscribe(bus, w.subs, w.grouped, n)
	payload := make([]byte, size)
	u := start()
	w.publish(bus, payload, n)
	<-done
	return u.stop(w.deliveries(n))
}

// runChan is the peer: the same workload through a buffered channel to one goroutine.
func runChan(n int) run {
	ch := make(chan []byte, 1024)
	done := make(chan struct{})
	go func() {
		seen := 0
		for range ch {
			if seen++; seen == n {
				close(done)
			}
		}
	}()
	u := start()
	for range n {
		ch <- make([]byte, 64)
	}
	<-done
	close(ch)
	return u.stop(n)
}

func emit(name string, n, size int, r run) {
	line, _ := json.Marshal(result{
		Lang: "go", Case: name, Events: n, Seconds: r.elapsed.Seconds(),
		EventsPerSec: int64(float64(n) / r.elapsed.Seconds()),
		Size:         size, CPUPerEvent: r.cpuPerEvent, RSSMB: r.rssMB,
	})
	fmt.Println(string(line))
}

// latency records publish-to-handler latencies: each payload carries its send time, in
// nanoseconds since base (monotonic), in its first 8 bytes (little-endian).
type latency struct {
	base    time.Time
	expect  int
	mu      sync.Mutex
	samples []int64 // nanoseconds, in arrival order
	done    chan struct{}
}

func newLatency(expect int) *latency {
	return &latency{
		base: time.Now(), expect: expect, samples: make([]int64, 0, expect),
		done: make(chan struct{}),
	}
}

// payload is a 64-byte payload stamped with the time now.
func (l *latency) payload() []byte {
	p := make([]byte, 64)
	binary.LittleEndian.PutUint64(p, uint64(time.Since(l.base)))
	return p
}

// arrived records the latency of a received payload.
func (l *latency) arrived(p []byte) {
	now := int64(time.Since(l.base))
	sent := int64(binary.LittleEndian.Uint64(p))
	l.mu.Lock()
	defer l.mu.Unlock()
	l.samples = append(l.samples, max(0, now-sent))
	if len(l.samples) == l.expect {
		close(l.done)
	}
}

// run sends l.expect events at rate a second with send (each call returning before the next
// starts), the i-th at start+i/rate so that no drift builds up, waits for them all (30 s at
// most) and prints the percentiles of those after the first warm as case name.
func (l *latency) run(name string, rate, warm int, send func([]byte)) {
	gap := time.Second / time.Duration(rate)
	begin := time.Now()
	for i := range l.expect {
		time.Sleep(time.Until(begin.Add(time.Duration(i) * gap)))
		send(l.payload())
	}
	select {
	case <-l.done:
	case <-time.After(30 * time.Second):
		l.mu.Lock()
		fmt.Fprintf(os.Stderr, "%s: only %d of %d events arrived\n", name, len(l.samples), l.expect)
		l.mu.Unlock()
		return
	}
	// Arrival order is publish order here; the warm-up is left out.
	l.mu.Lock()
	v := slices.Clone(l.samples[warm:])
	l.mu.Unlock()
	slices.Sort(v)
	at := func(q float64) float64 {
		return micros(v[min(int(float64(len(v))*q), len(v)-1)])
	}
	line, _ := json.Marshal(struct {
		Lang   string  `json:"lang"`
		Case   string  `json:"case"`
		Events int     `json:"events"`
		Rate   int     `json:"rate"`
		P50    float64 `json:"p50_us"`
		P99    float64 `json:"p99_us"`
		P999   float64 `json:"p999_us"`
		Max    float64 `json:"max_us"`
	}{"go", name, len(v), rate, at(0.5), at(0.99), at(0.999), micros(v[len(v)-1])})
	fmt.Println(string(line))
}

// micros gives nanoseconds ns in microseconds, 1 decimal.
func micros(ns int64) float64 {
	return math.Round(float64(ns)/100) / 10
}

// latencyCase measures Publish awaited per event (a durable broker's confirmation included)
// to one subscriber on a fresh bus on url, at rate events a second for seconds, after a
// second of warm-up.
func latencyCase(url string, rate, seconds int) {
	warm := rate
	l := newLatency(warm + rate*seconds)
	bus := openBroker(url)
	defer bus.Close()
	_, err := bus.Subscribe(context.Background(), "bench.latency", func(_ context.Context, e *polybus.Event) error {
		l.arrived(e.Payload)
		return nil
	})
	if err != nil {
		fail(err)
	}
	l.run(scheme(url)+" latency go", rate, warm, func(p []byte) {
		if err := bus.Publish(context.Background(), "bench.latency", p); err != nil {
			fail(err)
		}
	})
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "polybus-bench:", err)
	os.Exit(1)
}
