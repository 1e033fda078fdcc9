package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// run is what one measured round took: its wall time, and the CPU time and the peak memory
// the process spent on it.
type run struct {
	elapsed     time.Duration
	cpuPerEvent float64 // µs of CPU time per event
	rssMB       float64 // the peak resident set
}

// usage measures a round from start to stop.
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

// stop ends a round of events events.
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

// latency records publish-to-handler latencies: each payload carries its send time, in
// nanoseconds since base (monotonic), in its first 8 bytes (little-endian). It is
// polybus-bench's, which is the Rust core's (core/benches/pubsub.rs).
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
