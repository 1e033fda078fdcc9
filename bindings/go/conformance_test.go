package polybus_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	polybus "github.com/polybus/polybus/bindings/go"
)

// conformanceDir holds the scenarios every front end runs; see its SCHEMA.md.
const conformanceDir = "../../tests/conformance"

type scenario struct {
	ID          string         `json:"id"`
	Description string         `json:"description"`
	Requires    []string       `json:"requires"`
	Config      map[string]any `json:"config"`
	Slow        bool           `json:"slow"`
	Steps       []step         `json:"steps"`
	invalid     error          // what breaks SCHEMA.md's strict reading; the scenario fails with it
}

type step struct {
	Op          string            `json:"op"`
	Name        string            `json:"name"`
	Names       []string          `json:"names"`
	Pattern     *string           `json:"pattern"`
	Options     map[string]any    `json:"options"`
	Handler     handlerSpec       `json:"handler"`
	ExpectError string            `json:"expect_error"`
	Topic       *string           `json:"topic"`
	Payload     *string           `json:"payload"`
	JSON        json.RawMessage   `json:"json"`
	PayloadSize *int              `json:"payload_size"`
	Count       *int              `json:"count"`
	Succeeded   *int              `json:"succeeded"`
	Keys        []string          `json:"keys"`
	Key         json.RawMessage   `json:"key"` // a string, or null in expect
	Headers     map[string]string `json:"headers"`
	ID          *string           `json:"id"`
	Type        *string           `json:"type"`
	TimeoutMS   *int              `json:"timeout_ms"`
	Concurrent  *int              `json:"concurrent"`

	// publish
	DeadlineMS      *int `json:"deadline_ms"`
	PublishedAtMost *int `json:"published_at_most"`

	// wait
	DistinctSucceeded *int `json:"distinct_succeeded"`

	// child
	Publish   *childPublish `json:"publish"`
	ExitAfter *int          `json:"exit_after"`

	// expect and expect_total checks
	Payloads          []string `json:"payloads"`
	PayloadsUnordered []string `json:"payloads_unordered"`
	Attempts          []int    `json:"attempts"`
	Topics            []string `json:"topics"`
	KeyOrder          bool     `json:"key_order"`
	NoOverlapPerKey   bool     `json:"no_overlap_per_key"`
	MaxInFlight       *int     `json:"max_in_flight"`
	MinPeakInFlight   *int     `json:"min_peak_in_flight"`
	DistinctPayloads  bool     `json:"distinct_payloads"`
	SucceededSet      []string `json:"succeeded_set"`
	PayloadsPrefix    []string `json:"payloads_prefix"`
	SelfCloseOK       *bool    `json:"self_close_ok"`
	FinishedAtClose   *int     `json:"finished_at_close"`
	MinRetryGapsMS    []int    `json:"min_retry_gaps_ms"`

	// expect_stats counters
	Published    *uint64 `json:"published"`
	Delivered    *uint64 `json:"delivered"`
	Acked        *uint64 `json:"acked"`
	Failed       *uint64 `json:"failed"`
	Retried      *uint64 `json:"retried"`
	DeadLettered *uint64 `json:"dead_lettered"`
	Dropped      *uint64 `json:"dropped"`
}

type handlerSpec struct {
	FailTimes       int    `json:"fail_times"`
	FailAlways      bool   `json:"fail_always"`
	FailWith        string `json:"fail_with"`
	DelayMS         int    `json:"delay_ms"`
	UnsubscribeSelf bool   `json:"unsubscribe_self"`
	CloseBus        bool   `json:"close_bus"`
}

// stepFields lists, per op, the fields a step may have besides "op" (SCHEMA.md); anything
// else is an error, the same strict reading as the Rust, Python and Node runners.
var stepFields = map[string][]string{
	"subscribe": {"name", "pattern", "options", "handler", "expect_error"},
	"publish": {"topic", "payload", "json", "payload_size", "count", "keys", "key", "headers",
		"id", "type", "deadline_ms", "expect_error", "published_at_most"},
	"wait":           {"name", "names", "count", "succeeded", "distinct_succeeded", "timeout_ms"},
	"restart_broker": {},
	"child":          {"name", "pattern", "options", "handler", "publish", "exit_after", "timeout_ms"},
	"unsubscribe":    {"name", "expect_error"},
	"close":          {"concurrent", "expect_error"},
	"expect": {"name", "count", "succeeded", "payloads", "payloads_unordered", "attempts",
		"topics", "key", "id", "type", "headers", "json", "key_order", "no_overlap_per_key",
		"max_in_flight", "min_peak_in_flight", "payloads_prefix", "self_close_ok",
		"finished_at_close", "min_retry_gaps_ms"},
	"expect_total": {"names", "succeeded", "distinct_payloads", "succeeded_set"},
	"expect_stats": {"published", "delivered", "acked", "failed", "retried", "dead_lettered",
		"dropped"},
}

var (
	optionFields  = []string{"group", "concurrency", "max_attempts", "dead_letter", "start", "backoff_initial_ms", "backoff_max_ms", "queue_size", "batch_size"}
	handlerFields = []string{"fail_times", "fail_always", "fail_with", "delay_ms", "unsubscribe_self", "close_bus"}
	// A child's handler only works for a while; its publish is a plain one (SCHEMA.md, "Child
	// processes").
	childHandlerFields = []string{"delay_ms"}
	childPublishFields = []string{"topic", "payload", "count"}
)

// checkScenario applies SCHEMA.md's strict reading to a scenario file's raw JSON: the fields of
// each step by op, the subscribe options and handler fields, the capabilities in requires.
func checkScenario(data []byte, features map[string]map[string]any) error {
	var raw struct {
		Requires []string                     `json:"requires"`
		Steps    []map[string]json.RawMessage `json:"steps"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return err
	}
	for _, req := range raw.Requires {
		name := strings.TrimPrefix(req, "!")
		for _, caps := range features {
			if _, ok := caps[name].(bool); !ok {
				return fmt.Errorf("requires names %q, not a capability of features.json", req)
			}
		}
	}
	only := func(what string, fields map[string]json.RawMessage, allowed []string) error {
		for k := range fields {
			if !slices.Contains(allowed, k) {
				return fmt.Errorf("%s has an unknown field %q", what, k)
			}
		}
		return nil
	}
	for i, st := range raw.Steps {
		var op string
		if err := json.Unmarshal(st["op"], &op); err != nil {
			return fmt.Errorf("step %d: op: %v", i, err)
		}
		allowed, ok := stepFields[op]
		if !ok {
			return fmt.Errorf("step %d: unknown step op %q", i, op)
		}
		if err := only(fmt.Sprintf("step %d (%s)", i, op), st, append(slices.Clone(allowed), "op")); err != nil {
			return err
		}
		handlerAllowed := handlerFields
		if op == "child" {
			handlerAllowed = childHandlerFields
		}
		for _, sub := range []struct {
			field   string
			allowed []string
		}{{"options", optionFields}, {"handler", handlerAllowed}} {
			if v, ok := st[sub.field]; ok {
				var m map[string]json.RawMessage
				if err := json.Unmarshal(v, &m); err != nil {
					return fmt.Errorf("step %d: %s: %v", i, sub.field, err)
				}
				if err := only(fmt.Sprintf("step %d: %s", i, sub.field), m, sub.allowed); err != nil {
					return err
				}
				if sub.field == "handler" && string(m["unsubscribe_self"]) == "true" && string(m["close_bus"]) == "true" {
					return fmt.Errorf("step %d: a handler has at most one of unsubscribe_self and close_bus", i)
				}
			}
		}
		if v, ok := st["concurrent"]; ok {
			var n int
			if err := json.Unmarshal(v, &n); err != nil || n < 1 {
				return fmt.Errorf("step %d: concurrent %s is not a positive integer", i, v)
			}
		}
		if _, ok := st["published_at_most"]; ok {
			if _, ok := st["expect_error"]; !ok {
				return fmt.Errorf("step %d: published_at_most goes only with expect_error", i)
			}
		}
		if op == "wait" {
			counts := 0
			for _, k := range []string{"count", "succeeded", "distinct_succeeded"} {
				if _, ok := st[k]; ok {
					counts++
				}
			}
			_, name := st["name"]
			_, names := st["names"]
			if counts != 1 {
				return fmt.Errorf(`step %d: a wait step needs exactly one of "count", "succeeded" and "distinct_succeeded"`, i)
			}
			if name == names {
				return fmt.Errorf(`step %d: a wait step needs exactly one of "name" and "names"`, i)
			}
		}
		if op == "child" {
			if err := checkChildStep(st); err != nil {
				return fmt.Errorf("step %d (child): %v", i, err)
			}
		}
	}
	return nil
}

// checkChildStep checks what a child step must have: a string name and pattern, a publish
// object of topic, payload and count, and a non-negative integer exit_after.
func checkChildStep(st map[string]json.RawMessage) error {
	// is decodes raw into v and says whether that worked; null (which decodes into anything)
	// and an absent field do not.
	is := func(raw json.RawMessage, v any) bool {
		return raw != nil && string(raw) != "null" && json.Unmarshal(raw, v) == nil
	}
	var text string
	var n uint
	for _, k := range []string{"name", "pattern"} {
		if !is(st[k], &text) {
			return fmt.Errorf("a child step needs a string %q", k)
		}
	}
	var pub map[string]json.RawMessage
	if !is(st["publish"], &pub) {
		return errors.New(`a child step needs a "publish" object`)
	}
	for k := range pub {
		if !slices.Contains(childPublishFields, k) {
			return fmt.Errorf("publish has an unknown field %q", k)
		}
	}
	if !is(pub["topic"], &text) || !is(pub["payload"], &text) || !is(pub["count"], &n) {
		return fmt.Errorf(`a child's publish needs a string "topic" and "payload" and a non-negative integer "count" (%s)`, st["publish"])
	}
	if !is(st["exit_after"], &n) {
		return fmt.Errorf(`a child step needs a non-negative integer "exit_after" (%s)`, st["exit_after"])
	}
	return nil
}

// exclusive keeps a scenario that restarts the broker (restart_broker) from running beside
// any other: such a scenario holds it for writing, every other scenario for reading. The
// scenarios run one after another today (no t.Parallel), so it never waits; it keeps the
// rule of SCHEMA.md if they ever run side by side.
var exclusive sync.RWMutex

// restartsBroker reports whether the scenario has a restart_broker step.
func restartsBroker(sc scenario) bool {
	return slices.ContainsFunc(sc.Steps, func(s step) bool { return s.Op == "restart_broker" })
}

// TestConformance runs every scenario against every backend: subtests <backend>/<scenario id>.
func TestConformance(t *testing.T) {
	features := loadFeatures(t)
	scenarios := loadScenarios(t, features)
	backends := make([]string, 0, len(features))
	for name := range features {
		backends = append(backends, name)
	}
	slices.Sort(backends)
	if only := os.Getenv("POLYBUS_TEST_BACKENDS"); only != "" {
		wanted := strings.Split(only, ",")
		for _, w := range wanted {
			if _, ok := features[strings.TrimSpace(w)]; !ok {
				t.Fatalf("POLYBUS_TEST_BACKENDS names %q, which features.json does not list", w)
			}
		}
		backends = slices.DeleteFunc(backends, func(b string) bool {
			return !slices.ContainsFunc(wanted, func(w string) bool { return strings.TrimSpace(w) == b })
		})
	}
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			caps := features[backend]
			url, _ := caps["url"].(string)
			broker, _ := caps["broker"].(string) // "" for none (memory)
			if env := os.Getenv("POLYBUS_TEST_" + strings.ToUpper(backend) + "_URL"); env != "" {
				url = env
			}
			for _, sc := range scenarios {
				t.Run(sc.ID, func(t *testing.T) {
					if sc.invalid != nil {
						t.Fatalf("scenario %s: %v", sc.ID, sc.invalid)
					}
					for _, req := range sc.Requires {
						if name, absent := strings.CutPrefix(req, "!"); absent {
							if caps[name] == true {
								t.Skipf("backend has %q", name)
							}
						} else if caps[req] != true {
							t.Skipf("backend lacks %q", req)
						}
					}
					if sc.Slow && os.Getenv("POLYBUS_TEST_SLOW") != "1" {
						t.Skip("slow scenario (set POLYBUS_TEST_SLOW=1)")
					}
					if restartsBroker(sc) {
						exclusive.Lock()
						defer exclusive.Unlock()
					} else {
						exclusive.RLock()
						defer exclusive.RUnlock()
					}
					run(t, url, broker, sc)
				})
			}
		})
	}
}

func loadFeatures(t *testing.T) map[string]map[string]any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(conformanceDir, "features.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f map[string]map[string]any
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatalf("features.json: %v", err)
	}
	if err := checkFeatures(f); err != nil {
		t.Fatalf("features.json: %v", err)
	}
	return f
}

// checkFeatures is SCHEMA.md's reading of features.json: every backend has a string url, a
// broker that is a string or null, and booleans (its capabilities) for every other key.
func checkFeatures(f map[string]map[string]any) error {
	if len(f) == 0 {
		return errors.New("no backends")
	}
	for backend, caps := range f {
		if _, ok := caps["url"].(string); !ok {
			return fmt.Errorf("%s: url %v is not a string", backend, caps["url"])
		}
		b, ok := caps["broker"]
		if _, isString := b.(string); !ok || (b != nil && !isString) {
			return fmt.Errorf("%s: broker %v is not a string or null", backend, b)
		}
		for k, v := range caps {
			if _, ok := v.(bool); !ok && k != "url" && k != "broker" {
				return fmt.Errorf("%s: %q is %v, not a boolean capability", backend, k, v)
			}
		}
	}
	return nil
}

func loadScenarios(t *testing.T, features map[string]map[string]any) []scenario {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(conformanceDir, "scenarios", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenarios in %s (%v)", conformanceDir, err)
	}
	slices.Sort(files)
	out := make([]scenario, 0, len(files))
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		sc := readScenario(data, features)
		if sc.ID == "" {
			sc.ID = strings.TrimSuffix(filepath.Base(file), ".json")
		}
		out = append(out, sc)
	}
	return out
}

// readScenario reads a scenario file's JSON strictly; a scenario that does not read so has
// invalid set, and fails on its own: it is never skipped.
func readScenario(data []byte, features map[string]map[string]any) scenario {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var sc scenario
	sc.invalid = checkScenario(data, features)
	if err := dec.Decode(&sc); err != nil && sc.invalid == nil {
		sc.invalid = err
	}
	return sc
}

// TestConformanceStrictReading checks that the runner refuses what SCHEMA.md's strict reading
// refuses, naming it, and reads what it allows.
func TestConformanceStrictReading(t *testing.T) {
	features := map[string]map[string]any{
		"memory": {"url": "memory://", "broker": nil, "groups": true},
		"redis":  {"url": "redis://", "broker": "redis", "groups": true},
	}
	child := `{"op": "child", "name": "a", "pattern": "p", "options": {"group": "g"}, "handler": {"delay_ms": 5},
		"publish": {"topic": "p", "payload": "{i}", "count": 3}, "exit_after": 1, "timeout_ms": 100}`
	// edit is the child step with old replaced by new, which must be there.
	edit := func(old, new string) string {
		if !strings.Contains(child, old) {
			t.Fatalf("the child step has no %s", old)
		}
		return strings.Replace(child, old, new, 1)
	}
	for _, c := range []struct {
		steps string
		want  string // what the error says; "" for none
	}{
		{`{"op": "wait", "name": "a", "distinct_succeeded": 3, "timeout_ms": 5}`, ""},
		{`{"op": "wait", "name": "a", "count": 1, "distinct_succeeded": 3}`, "exactly one of"},
		{`{"op": "wait", "name": "a"}`, "exactly one of"},
		{`{"op": "publish", "topic": "t", "count": 2, "deadline_ms": 5, "expect_error": "POLYBUS_ERR_TIMEOUT", "published_at_most": 1}`, ""},
		{`{"op": "publish", "topic": "t", "published_at_most": 1}`, "published_at_most goes only with expect_error"},
		{`{"op": "wait", "name": "a", "count": 1, "deadline_ms": 5}`, `unknown field "deadline_ms"`},
		{`{"op": "restart_broker"}`, ""},
		{`{"op": "restart_broker", "name": "a"}`, `unknown field "name"`},
		{child, ""},
		{edit(`"delay_ms": 5`, `"fail_times": 1`), `unknown field "fail_times"`},
		{edit(`"count": 3`, `"count": 3, "key": "k"`), `unknown field "key"`},
		{edit(`"count": 3`, `"count": -3`), `non-negative integer "count"`},
		{edit(`, "exit_after": 1`, ``), `"exit_after"`},
		{edit(`"exit_after": 1`, `"exit_after": null`), `"exit_after"`},
		{edit(`"name": "a"`, `"name": 1`), `string "name"`},
		{edit(`"publish": {"topic": "p", "payload": "{i}", "count": 3}, `, ``), `"publish" object`},
		{`{"op": "expect_total", "names": ["a"], "succeeded_set": ["0"]}`, ""},
		{`{"op": "expect_total", "names": ["a"], "succeeded_list": ["0"]}`, `unknown field "succeeded_list"`},
	} {
		sc := readScenario([]byte(`{"id": "x", "steps": [`+c.steps+`]}`), features)
		switch {
		case c.want == "" && sc.invalid != nil:
			t.Errorf("%s: refused: %v", c.steps, sc.invalid)
		case c.want != "" && (sc.invalid == nil || !strings.Contains(sc.invalid.Error(), c.want)):
			t.Errorf("%s: want an error saying %s, got %v", c.steps, c.want, sc.invalid)
		}
	}
	// broker and url are not capabilities.
	for _, req := range []string{"broker", "!url"} {
		sc := readScenario([]byte(`{"id": "x", "requires": ["`+req+`"], "steps": []}`), features)
		if sc.invalid == nil || !strings.Contains(sc.invalid.Error(), "not a capability") {
			t.Errorf("requires %s: want an error, got %v", req, sc.invalid)
		}
	}
	// features.json: a string or null broker, booleans besides url and broker.
	for _, c := range []struct {
		caps map[string]any
		ok   bool
	}{
		{map[string]any{"url": "memory://", "broker": nil, "groups": true}, true},
		{map[string]any{"url": "nats://", "broker": "nats", "groups": false}, true},
		{map[string]any{"url": "nats://", "groups": false}, false},
		{map[string]any{"url": "nats://", "broker": 1, "groups": false}, false},
		{map[string]any{"url": "nats://", "broker": "nats", "groups": "yes"}, false},
		{map[string]any{"broker": "nats"}, false},
	} {
		if err := checkFeatures(map[string]map[string]any{"b": c.caps}); (err == nil) != c.ok {
			t.Errorf("features %v: want ok=%v, got %v", c.caps, c.ok, err)
		}
	}
}

// timeoutScale is POLYBUS_TEST_TIMEOUT_SCALE (default 1).
func timeoutScale(t *testing.T) float64 {
	s := os.Getenv("POLYBUS_TEST_TIMEOUT_SCALE")
	if s == "" {
		return 1
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f <= 0 {
		t.Fatalf("POLYBUS_TEST_TIMEOUT_SCALE=%q is not a positive number", s)
	}
	return f
}

func uniqueID(t *testing.T) string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// configMap is the scenario's bus configuration: its config merged into
// {"url": url, "prefix": "t.<unique>"} (also what a child step's child opens).
func configMap(t *testing.T, url string, extra map[string]any) map[string]any {
	m := map[string]any{"url": url, "prefix": "t." + uniqueID(t)}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

// fields reads a JSON object's fields by name, each through its own conversion, and fails
// on a field none reads, on a value of the wrong type and on what a conversion refuses.
type fields map[string]func(v any) error

func (f fields) read(what string, obj any) error {
	m, ok := obj.(map[string]any)
	if !ok {
		return fmt.Errorf("%s is %v, not an object", what, obj)
	}
	for k, v := range m {
		set, ok := f[k]
		if !ok {
			return fmt.Errorf("%s has an unknown field %q", what, k)
		}
		if err := set(v); err != nil {
			return fmt.Errorf("%s.%s: %v", what, k, err)
		}
	}
	return nil
}

// The conversions of fields: a JSON string, a whole number, a number of milliseconds.
func str(dst *string) func(any) error {
	return func(v any) error {
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("%v is not a string", v)
		}
		*dst = s
		return nil
	}
}

func integer[T int | int64](dst *T) func(any) error {
	return func(v any) error {
		f, ok := v.(float64)
		if !ok || f != float64(int64(f)) {
			return fmt.Errorf("%v is not an integer", v)
		}
		*dst = T(f)
		return nil
	}
}

func millis(dst *time.Duration) func(any) error {
	return func(v any) error {
		var n int64
		if err := integer(&n)(v); err != nil {
			return err
		}
		*dst = time.Duration(n) * time.Millisecond
		return nil
	}
}

// busConfig turns a configuration (configMap's) into a polybus.Config, with the core's names
// for its fields and those of its jetstream, redis and kafka sections.
func busConfig(m map[string]any) (polybus.Config, error) {
	var cfg polybus.Config
	js, rd, kf := &polybus.JetStreamConfig{}, &polybus.RedisConfig{}, &polybus.KafkaConfig{}
	err := fields{
		"url":                str(&cfg.URL),
		"prefix":             str(&cfg.Prefix),
		"name":               str(&cfg.Name),
		"connect_timeout_ms": millis(&cfg.ConnectTimeout),
		"publish_timeout_ms": millis(&cfg.PublishTimeout),
		"close_timeout_ms":   millis(&cfg.CloseTimeout),
		"max_payload":        integer(&cfg.MaxPayload),
		"jetstream": func(v any) error {
			cfg.JetStream = js
			return fields{
				"ack_wait_ms":     millis(&js.AckWait),
				"max_age_ms":      millis(&js.MaxAge),
				"max_ack_pending": integer(&js.MaxAckPending),
				"max_deliver":     integer(&js.MaxDeliver),
			}.read("jetstream", v)
		},
		"redis": func(v any) error {
			cfg.Redis = rd
			return fields{
				"claim_idle_ms":      millis(&rd.ClaimIdle),
				"block_ms":           millis(&rd.Block),
				"scan_interval_ms":   millis(&rd.ScanInterval),
				"command_timeout_ms": millis(&rd.CommandTimeout),
				"max_len":            integer(&rd.MaxLen),
			}.read("redis", v)
		},
		"kafka": func(v any) error {
			cfg.Kafka = kf
			return fields{
				"session_timeout_ms":  millis(&kf.SessionTimeout),
				"commit_interval_ms":  millis(&kf.CommitInterval),
				"metadata_refresh_ms": millis(&kf.MetadataRefresh),
				"partitions":          integer(&kf.Partitions),
			}.read("kafka", v)
		},
	}.read("config", m)
	return cfg, err
}

// subscribeOptions turns the core's option names into the Go options.
func subscribeOptions(m map[string]any) ([]polybus.SubscribeOption, error) {
	var opts []polybus.SubscribeOption
	with := func(conv func(any) (polybus.SubscribeOption, error)) func(any) error {
		return func(v any) error {
			o, err := conv(v)
			if err == nil {
				opts = append(opts, o)
			}
			return err
		}
	}
	num := func(opt func(int) polybus.SubscribeOption) func(any) error {
		return with(func(v any) (polybus.SubscribeOption, error) {
			var n int
			err := integer(&n)(v)
			return opt(n), err
		})
	}
	ms := func(opt func(time.Duration) polybus.SubscribeOption) func(any) error {
		return with(func(v any) (polybus.SubscribeOption, error) {
			var d time.Duration
			err := millis(&d)(v)
			return opt(d), err
		})
	}
	text := func(opt func(string) polybus.SubscribeOption) func(any) error {
		return with(func(v any) (polybus.SubscribeOption, error) {
			var s string
			err := str(&s)(v)
			return opt(s), err
		})
	}
	if m == nil {
		return nil, nil
	}
	err := fields{
		"group":        text(polybus.WithGroup),
		"concurrency":  num(polybus.WithConcurrency),
		"max_attempts": num(polybus.WithMaxAttempts),
		"dead_letter":  text(polybus.WithDeadLetter),
		"start": with(func(v any) (polybus.SubscribeOption, error) {
			switch v {
			case "new":
				return polybus.WithStart(polybus.StartNew), nil
			case "earliest":
				return polybus.WithStart(polybus.StartEarliest), nil
			}
			return nil, fmt.Errorf("unknown start %v", v)
		}),
		"backoff_initial_ms": ms(polybus.WithBackoffInitial),
		"backoff_max_ms":     ms(polybus.WithBackoffMax),
		"queue_size":         num(polybus.WithQueueSize),
		"batch_size":         num(polybus.WithBatchSize),
	}.read("options", m)
	return opts, err
}

// invocation is one recorded handler call.
type invocation struct {
	topic, payload string
	key            *string
	headers        map[string]string
	id, typ        string
	attempt        int
	json           any
	jsonErr        error
	done, ok       bool
	started        time.Time // with its monotonic reading, for min_retry_gaps_ms
}

// recorder records a handler's invocations in the order they start.
type recorder struct {
	mu         sync.Mutex
	calls      []*invocation
	finished   int
	succeeded  int
	inFlight   int
	peak       int
	keyRunning map[string]int
	overlapped bool
	changed    chan struct{} // closed and replaced on every finished invocation
	selfClose  *error        // how the unsubscribe_self / close_bus call ended, once made
	atClose    []int         // finished invocations each call of the latest close step saw
	closeSeen  bool          // a close step ran

	bus *polybus.Bus
	sub atomic.Pointer[polybus.Subscription] // the handler's own, once Subscribe returned
}

func newRecorder(bus *polybus.Bus) *recorder {
	return &recorder{keyRunning: map[string]int{}, changed: make(chan struct{}), bus: bus}
}

// closeFromHandler makes the unsubscribe_self / close_bus call of the first invocation.
func (r *recorder) closeFromHandler(spec handlerSpec) error {
	if spec.CloseBus {
		return r.bus.Close()
	}
	sub := r.sub.Load()
	if sub == nil {
		return errors.New("the handler ran before Subscribe returned")
	}
	return sub.Close()
}

func (r *recorder) handler(spec handlerSpec) polybus.Handler {
	return func(ctx context.Context, e *polybus.Event) error {
		inv := &invocation{
			topic: e.Topic, payload: string(e.Payload), headers: e.Headers,
			id: e.ID, typ: e.Type, attempt: e.Attempt,
		}
		if e.Key != "" {
			k := e.Key
			inv.key = &k
		}
		inv.jsonErr = e.Scan(&inv.json)
		r.mu.Lock()
		inv.started = time.Now()
		r.calls = append(r.calls, inv)
		first := len(r.calls) == 1
		r.inFlight++
		r.peak = max(r.peak, r.inFlight)
		if inv.key != nil {
			r.keyRunning[*inv.key]++
			if r.keyRunning[*inv.key] > 1 {
				r.overlapped = true
			}
		}
		r.mu.Unlock()

		if first && (spec.UnsubscribeSelf || spec.CloseBus) {
			err := r.closeFromHandler(spec)
			r.mu.Lock()
			r.selfClose = &err
			r.mu.Unlock()
		}
		fail := spec.FailAlways || e.Attempt <= spec.FailTimes
		defer func() {
			r.mu.Lock()
			r.inFlight--
			if inv.key != nil {
				r.keyRunning[*inv.key]--
			}
			inv.done, inv.ok = true, !fail
			r.finished++
			if !fail {
				r.succeeded++
			}
			close(r.changed)
			r.changed = make(chan struct{})
			r.mu.Unlock()
		}()
		if spec.DelayMS > 0 {
			time.Sleep(time.Duration(spec.DelayMS) * time.Millisecond) // the workload
		}
		if fail {
			if spec.FailWith == "panic" {
				panic(fmt.Sprintf("failing attempt %d on purpose", e.Attempt))
			}
			return fmt.Errorf("failing attempt %d on purpose", e.Attempt)
		}
		return nil
	}
}

// counts returns the finished and succeeded invocations and a channel closed on the next change.
func (r *recorder) counts() (finished, succeeded int, changed <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.finished, r.succeeded, r.changed
}

// started returns how many invocations have started.
func (r *recorder) started() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

type runner struct {
	t      *testing.T
	ctx    context.Context
	bus    *polybus.Bus
	config map[string]any // the bus's configuration, for a child's bus
	broker string         // the harness's name for the backend's broker; "" for none
	scale  float64
	recs   map[string]*recorder
	subs   map[string]*polybus.Subscription
}

func run(t *testing.T, url, broker string, sc scenario) {
	ctx := context.Background()
	config := configMap(t, url, sc.Config)
	cfg, err := busConfig(config)
	if err != nil {
		t.Fatalf("scenario config: %v", err)
	}
	bus, err := polybus.OpenConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { bus.Close() })
	r := &runner{
		t: t, ctx: ctx, bus: bus, config: config, broker: broker, scale: timeoutScale(t),
		recs: map[string]*recorder{}, subs: map[string]*polybus.Subscription{},
	}
	for i, s := range sc.Steps {
		r.step(i, s)
	}
}

// checkError fails unless err matches the step's expect_error (or is nil when there is none).
func (r *runner) checkError(at string, s step, err error) {
	r.t.Helper()
	if s.ExpectError == "" {
		if err != nil {
			r.t.Fatalf("%s: unexpected error: %v", at, err)
		}
		return
	}
	var pe *polybus.Error
	if !errors.As(err, &pe) {
		r.t.Fatalf("%s: want %s, got %v", at, s.ExpectError, err)
	}
	if pe.Code.String() != s.ExpectError || !errors.Is(err, &polybus.Error{Code: pe.Code}) {
		r.t.Fatalf("%s: want %s, got %s (%v)", at, s.ExpectError, pe.Code, err)
	}
}

func (r *runner) step(i int, s step) {
	t := r.t
	t.Helper()
	at := fmt.Sprintf("step %d (%s %s)", i, s.Op, s.Name)
	switch s.Op {
	case "subscribe":
		rec := newRecorder(r.bus)
		opts, err := subscribeOptions(s.Options)
		if err != nil {
			t.Fatalf("%s: %v", at, err)
		}
		sub, err := r.bus.Subscribe(r.ctx, *s.Pattern, rec.handler(s.Handler), opts...)
		r.checkError(at, s, err)
		if err == nil {
			rec.sub.Store(sub)
			r.recs[s.Name], r.subs[s.Name] = rec, sub
		}
	case "publish":
		r.publish(at, s)
	case "wait":
		r.wait(at, s)
	case "restart_broker":
		r.restartBroker(at)
	case "child":
		r.recs[s.Name] = r.child(at, s)
	case "unsubscribe":
		sub, ok := r.subs[s.Name]
		if !ok {
			t.Fatalf("%s: no subscription %q", at, s.Name)
		}
		r.checkError(at, s, sub.Unsubscribe())
	case "close":
		r.close(at, s)
	case "expect":
		r.expect(at, s)
	case "expect_total":
		r.expectTotal(at, s)
	case "expect_stats":
		r.expectStats(at, s)
	default:
		t.Fatalf("%s: unknown op %q", at, s.Op)
	}
}

// close closes the bus from s.Concurrent goroutines at once (default 1); each call notes how
// many invocations of every handler had finished as it returned.
func (r *runner) close(at string, s step) {
	n := 1
	if s.Concurrent != nil {
		n = *s.Concurrent
	}
	for _, rec := range r.recs {
		rec.mu.Lock()
		rec.atClose, rec.closeSeen = nil, true
		rec.mu.Unlock()
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = r.bus.Close()
			for _, rec := range r.recs {
				rec.mu.Lock()
				rec.atClose = append(rec.atClose, rec.finished)
				rec.mu.Unlock()
			}
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		r.checkError(fmt.Sprintf("%s, call %d", at, i), s, err)
	}
}

func (r *runner) publish(at string, s step) {
	count := 1
	if s.Count != nil {
		count = *s.Count
	}
	var key string
	if len(s.Key) > 0 {
		if err := json.Unmarshal(s.Key, &key); err != nil {
			r.t.Fatalf("%s: key: %v", at, err)
		}
	}
	// deadline_ms: one deadline for all the step's calls, from the step's start.
	ctx := r.ctx
	if s.DeadlineMS != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(*s.DeadlineMS)*time.Millisecond)
		defer cancel()
	}
	// With expect_error the step stops at the first failing call, which must fail so; the
	// calls before it may succeed (published_at_most bounds how many). Without, none fails.
	var err error
	published := 0
	for i := range count {
		m := polybus.Message{Topic: *s.Topic, Key: key, Headers: s.Headers}
		switch {
		case s.JSON != nil:
			var v any
			if err := json.Unmarshal(s.JSON, &v); err != nil {
				r.t.Fatalf("%s: json: %v", at, err)
			}
			m.Payload = v
		case s.PayloadSize != nil:
			m.Payload = strings.Repeat("x", *s.PayloadSize)
		case s.Payload != nil:
			m.Payload = strings.ReplaceAll(*s.Payload, "{i}", strconv.Itoa(i))
		}
		if len(s.Keys) > 0 {
			m.Key = s.Keys[i%len(s.Keys)]
		}
		if s.ID != nil {
			m.ID = *s.ID
		}
		if s.Type != nil {
			m.Type = *s.Type
		}
		if m.Key == "" && m.Headers == nil && m.ID == "" && m.Type == "" {
			err = r.bus.Publish(ctx, m.Topic, m.Payload)
		} else {
			err = r.bus.PublishMessage(ctx, m)
		}
		if err != nil {
			at = fmt.Sprintf("%s, event %d", at, i)
			break
		}
		published++
	}
	if err == nil && s.ExpectError != "" {
		r.t.Fatalf("%s: want %s, but all %d calls succeeded", at, s.ExpectError, published)
	}
	if s.DeadlineMS != nil {
		r.t.Logf("%s: %d calls succeeded within the deadline of %d ms, then: %v", at, published, *s.DeadlineMS, err)
	}
	r.checkError(at, s, err)
	if s.DeadlineMS != nil && errors.Is(err, polybus.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
		// The Go form of a passed deadline: the error also matches ctx.Err().
		r.t.Fatalf("%s: %v does not match context.DeadlineExceeded", at, err)
	}
	if s.PublishedAtMost != nil && published > *s.PublishedAtMost {
		r.t.Fatalf("%s: %d calls returned success before the failing one, want at most %d",
			at, published, *s.PublishedAtMost)
	}
}

func (r *runner) recorders(at string, s step) []*recorder {
	names := s.Names
	if s.Name != "" {
		names = append(names, s.Name)
	}
	out := make([]*recorder, 0, len(names))
	for _, n := range names {
		rec, ok := r.recs[n]
		if !ok {
			r.t.Fatalf("%s: no handler %q", at, n)
		}
		out = append(out, rec)
	}
	return out
}

func (r *runner) wait(at string, s step) {
	timeout := 10 * time.Second
	if s.TimeoutMS != nil {
		timeout = time.Duration(*s.TimeoutMS) * time.Millisecond
	}
	deadline := time.NewTimer(time.Duration(float64(timeout) * r.scale))
	defer deadline.Stop()
	recs := r.recorders(at, s)
	for {
		finished, succeeded := 0, 0
		changes := make([]<-chan struct{}, len(recs))
		for i, rec := range recs {
			f, ok, ch := rec.counts()
			finished, succeeded, changes[i] = finished+f, succeeded+ok, ch
		}
		distinct := 0
		if s.DistinctSucceeded != nil {
			distinct = len(succeededPayloads(recs))
		}
		switch {
		case s.Count != nil && finished >= *s.Count,
			s.Succeeded != nil && succeeded >= *s.Succeeded,
			s.DistinctSucceeded != nil && distinct >= *s.DistinctSucceeded:
			return
		case s.Count == nil && s.Succeeded == nil && s.DistinctSucceeded == nil:
			r.t.Fatalf("%s: wait needs count, succeeded or distinct_succeeded", at)
		}
		// Wake on the first change of any recorder (at most a few, so a goroutine each is fine).
		woke := make(chan struct{}, len(changes))
		stop := make(chan struct{})
		for _, ch := range changes {
			go func() {
				select {
				case <-ch:
					woke <- struct{}{}
				case <-stop:
				}
			}()
		}
		select {
		case <-woke:
			close(stop)
		case <-deadline.C:
			close(stop)
			started := 0
			for _, rec := range recs {
				started += rec.started()
			}
			r.t.Fatalf("%s: timed out after %v waiting for count=%v (finished) succeeded=%v distinct_succeeded=%v; saw %d started, %d finished, %d succeeded, %d distinct payloads succeeded",
				at, timeout, deref(s.Count), deref(s.Succeeded), deref(s.DistinctSucceeded), started, finished, succeeded, len(succeededPayloads(recs)))
		}
	}
}

// succeededPayloads is the set of payloads that succeeded at least once in any of recs.
func succeededPayloads(recs []*recorder) map[string]bool {
	set := map[string]bool{}
	for _, rec := range recs {
		rec.mu.Lock()
		for _, c := range rec.calls {
			if c.ok {
				set[c.payload] = true
			}
		}
		rec.mu.Unlock()
	}
	return set
}

func deref(p *int) any {
	if p == nil {
		return "-"
	}
	return *p
}

func (r *runner) expect(at string, s step) {
	t := r.t
	t.Helper()
	rec := r.recorders(at, s)[0]
	rec.mu.Lock()
	calls := slices.Clone(rec.calls)
	peak, overlapped, succeeded := rec.peak, rec.overlapped, rec.succeeded
	selfClose, atClose, closeSeen := rec.selfClose, slices.Clone(rec.atClose), rec.closeSeen
	rec.mu.Unlock()

	field := func(f func(*invocation) any) []any {
		out := make([]any, len(calls))
		for i, c := range calls {
			out[i] = f(c)
		}
		return out
	}
	same := func(what string, want, got any) {
		t.Helper()
		if !reflect.DeepEqual(want, got) {
			t.Errorf("%s: %s: want %v, got %v", at, what, want, got)
		}
	}
	if s.Count != nil {
		same("count", *s.Count, len(calls))
	}
	if s.Succeeded != nil {
		same("succeeded", *s.Succeeded, succeeded)
	}
	if s.Payloads != nil {
		same("payloads", toAny(s.Payloads), field(func(c *invocation) any { return c.payload }))
	}
	if s.PayloadsUnordered != nil {
		got := make([]string, len(calls))
		for i, c := range calls {
			got[i] = c.payload
		}
		want := slices.Clone(s.PayloadsUnordered)
		slices.Sort(want)
		slices.Sort(got)
		same("payloads_unordered", want, got)
	}
	if s.PayloadsPrefix != nil {
		got := make([]string, len(calls))
		for i, c := range calls {
			got[i] = c.payload
		}
		if len(got) > len(s.PayloadsPrefix) || !slices.Equal(got, s.PayloadsPrefix[:len(got)]) {
			t.Errorf("%s: payloads_prefix: payloads %q are not a prefix of %q", at, got, s.PayloadsPrefix)
		}
	}
	if s.Attempts != nil {
		same("attempts", toAny(s.Attempts), field(func(c *invocation) any { return c.attempt }))
	}
	if s.Topics != nil {
		same("topics", toAny(s.Topics), field(func(c *invocation) any { return c.topic }))
	}
	if len(s.Key) > 0 {
		var want *string
		if err := json.Unmarshal(s.Key, &want); err != nil {
			t.Fatalf("%s: key: %v", at, err)
		}
		for i, c := range calls {
			if (want == nil) != (c.key == nil) || (want != nil && *want != *c.key) {
				t.Errorf("%s: invocation %d: key: want %v, got %v", at, i, show(want), show(c.key))
			}
		}
	}
	for i, c := range calls {
		if s.ID != nil && c.id != *s.ID {
			t.Errorf("%s: invocation %d: id: want %q, got %q", at, i, *s.ID, c.id)
		}
		if s.Type != nil && c.typ != *s.Type {
			t.Errorf("%s: invocation %d: type: want %q, got %q", at, i, *s.Type, c.typ)
		}
		for name, want := range s.Headers {
			got, ok := c.headers[name]
			if !ok || (want == "*" && got == "") || (want != "*" && got != want) {
				t.Errorf("%s: invocation %d: header %q: want %q, got %q (present %v)", at, i, name, want, got, ok)
			}
		}
		if s.JSON != nil {
			var want any
			if err := json.Unmarshal(s.JSON, &want); err != nil {
				t.Fatalf("%s: json: %v", at, err)
			}
			if c.jsonErr != nil || !reflect.DeepEqual(want, c.json) {
				t.Errorf("%s: invocation %d: json: want %v, got %v (Scan error %v)", at, i, want, c.json, c.jsonErr)
			}
		}
	}
	if s.KeyOrder {
		// Unkeyed invocations are not checked (SCHEMA.md).
		last := map[string]int{}
		for i, c := range calls {
			if !c.ok || c.key == nil {
				continue
			}
			if !integerPayload.MatchString(c.payload) {
				t.Fatalf("%s: key_order: payload %q is not an integer", at, c.payload)
			}
			n, err := strconv.Atoi(c.payload)
			if err != nil {
				t.Fatalf("%s: key_order: payload %q: %v", at, c.payload, err)
			}
			k := *c.key
			if prev, seen := last[k]; seen && n <= prev {
				t.Errorf("%s: key_order: invocation %d of key %q has payload %d after %d", at, i, k, n, prev)
			}
			last[k] = n
		}
	}
	if s.NoOverlapPerKey && overlapped {
		t.Errorf("%s: two invocations with the same key were in flight at once", at)
	}
	if s.MaxInFlight != nil && peak > *s.MaxInFlight {
		t.Errorf("%s: max_in_flight: want at most %d, saw %d", at, *s.MaxInFlight, peak)
	}
	if s.MinPeakInFlight != nil && peak < *s.MinPeakInFlight {
		t.Errorf("%s: min_peak_in_flight: want at least %d, saw %d", at, *s.MinPeakInFlight, peak)
	}
	if s.SelfCloseOK != nil {
		switch {
		case selfClose == nil:
			t.Errorf("%s: self_close_ok: the handler never made its close call", at)
		case (*selfClose == nil) != *s.SelfCloseOK:
			t.Errorf("%s: self_close_ok: want ok=%v, the call returned %v", at, *s.SelfCloseOK, *selfClose)
		}
	}
	if s.MinRetryGapsMS != nil {
		checkRetryGaps(t, at, calls, s.MinRetryGapsMS)
	}
	if s.FinishedAtClose != nil {
		if !closeSeen {
			t.Errorf("%s: finished_at_close: no close step ran", at)
		}
		for i, n := range atClose {
			if n != *s.FinishedAtClose {
				t.Errorf("%s: finished_at_close: close call %d returned when %d invocations had finished, want %d (all calls: %v)",
					at, i, n, *s.FinishedAtClose, atClose)
			}
		}
	}
}

// checkRetryGaps is min_retry_gaps_ms: for every event (by payload), the k-th gap between the
// starts of its consecutive invocations is at least want[k] ms (the last entry past the list).
func checkRetryGaps(t *testing.T, at string, calls []*invocation, want []int) {
	t.Helper()
	if len(want) == 0 || slices.ContainsFunc(want, func(n int) bool { return n < 0 }) {
		t.Fatalf("%s: min_retry_gaps_ms %v is not a non-empty list of non-negative integers", at, want)
	}
	byPayload := map[string][]*invocation{}
	var order []string
	for _, c := range calls {
		if _, seen := byPayload[c.payload]; !seen {
			order = append(order, c.payload)
		}
		byPayload[c.payload] = append(byPayload[c.payload], c)
	}
	gaps := 0
	for _, p := range order {
		cs := byPayload[p]
		all := make([]time.Duration, 0, len(cs))
		for k := 1; k < len(cs); k++ {
			all = append(all, cs[k].started.Sub(cs[k-1].started))
		}
		for k, gap := range all {
			gaps++
			floor := time.Duration(want[min(k, len(want)-1)]) * time.Millisecond
			if gap < floor {
				t.Errorf("%s: min_retry_gaps_ms: payload %q: attempt %d started %v after attempt %d, want at least %v (gaps %v)",
					at, p, cs[k+1].attempt, gap, cs[k].attempt, floor, all)
			}
		}
	}
	if gaps == 0 {
		t.Errorf("%s: min_retry_gaps_ms: no event had a second invocation", at)
	}
}

// integerPayload is what key_order reads as an integer (SCHEMA.md).
var integerPayload = regexp.MustCompile(`^-?[0-9]+$`)

func (r *runner) expectTotal(at string, s step) {
	t := r.t
	t.Helper()
	total := 0
	seen := map[string]bool{}
	for _, rec := range r.recorders(at, s) {
		rec.mu.Lock()
		for _, c := range rec.calls {
			if !c.ok {
				continue
			}
			total++
			if s.DistinctPayloads && seen[c.payload] {
				t.Errorf("%s: payload %q succeeded more than once", at, c.payload)
			}
			seen[c.payload] = true
		}
		rec.mu.Unlock()
	}
	if s.Succeeded != nil && total != *s.Succeeded {
		t.Errorf("%s: succeeded: want %d, got %d", at, *s.Succeeded, total)
	}
	if s.SucceededSet != nil {
		want := map[string]bool{}
		for _, p := range s.SucceededSet {
			want[p] = true
		}
		var missing, extra []string
		for p := range want {
			if !seen[p] {
				missing = append(missing, p)
			}
		}
		for p := range seen {
			if !want[p] {
				extra = append(extra, p)
			}
		}
		if len(missing) > 0 || len(extra) > 0 {
			slices.Sort(missing)
			slices.Sort(extra)
			t.Errorf("%s: succeeded_set: missing %q, not expected %q", at, missing, extra)
		}
	}
}

func (r *runner) expectStats(at string, s step) {
	t := r.t
	t.Helper()
	st, err := r.bus.Stats()
	if err != nil {
		t.Fatalf("%s: %v", at, err)
	}
	for _, c := range []struct {
		name string
		want *uint64
		got  uint64
	}{
		{"published", s.Published, st.Published},
		{"delivered", s.Delivered, st.Delivered},
		{"acked", s.Acked, st.Acked},
		{"failed", s.Failed, st.Failed},
		{"retried", s.Retried, st.Retried},
		{"dead_lettered", s.DeadLettered, st.DeadLettered},
		{"dropped", s.Dropped, st.Dropped},
	} {
		if c.want != nil && *c.want != c.got {
			t.Errorf("%s: %s: want %d, got %d (all: %+v)", at, c.name, *c.want, c.got, st)
		}
	}
}

func toAny[T any](s []T) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

func show(p *string) string {
	if p == nil {
		return "null"
	}
	return strconv.Quote(*p)
}
