/* The C API on the memory backend: publish, callback and pull subscriptions, misuse. */
#include "polybus.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"

/* A recording handler: counts calls, keeps payloads, fails the first N attempts. */
typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int calls;
  int acked;
  int drops;
  int fail_first;
  char payloads[64][32];
  uint32_t attempts[64];
  char key[32];
  char header_tenant[32];
} recorder_t;

static void recorder_init(recorder_t *r, int fail_first) {
  memset(r, 0, sizeof *r);
  pthread_mutex_init(&r->mu, NULL);
  pthread_cond_init(&r->cv, NULL);
  r->fail_first = fail_first;
}

static void recorder_destroy(recorder_t *r) {
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cv);
}

static void copy_str(char *dst, size_t cap, polybus_str_t s) {
  size_t n = s.len < cap - 1 ? s.len : cap - 1;
  if (s.ptr) memcpy(dst, s.ptr, n);
  dst[n] = 0;
}

static int32_t on_event(const polybus_event_t *e, void *ctx) {
  recorder_t *r = (recorder_t *)ctx;
  pthread_mutex_lock(&r->mu);
  int i = r->calls++;
  if (i < 64) {
    size_t n = e->payload.len < 31 ? e->payload.len : 31;
    memcpy(r->payloads[i], e->payload.ptr, n);
    r->payloads[i][n] = 0;
    r->attempts[i] = e->attempt;
  }
  copy_str(r->key, sizeof r->key, e->key);
  for (size_t h = 0; h < e->headers_len; h++) {
    if (e->headers[h].name.len == 6 && memcmp(e->headers[h].name.ptr, "tenant", 6) == 0)
      copy_str(r->header_tenant, sizeof r->header_tenant, e->headers[h].value);
  }
  int fail = (int)e->attempt <= r->fail_first;
  if (!fail) r->acked++;
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
  return fail ? 7 : 0;
}

static void on_drop(void *ctx) {
  recorder_t *r = (recorder_t *)ctx;
  pthread_mutex_lock(&r->mu);
  r->drops++;
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
}

/* Waits until r->acked >= n, at most 10 s. */
static int wait_acked(recorder_t *r, int n) {
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 10;
  pthread_mutex_lock(&r->mu);
  int rc = 0;
  while (r->acked < n && rc == 0) rc = pthread_cond_timedwait(&r->cv, &r->mu, &deadline);
  int ok = r->acked >= n;
  pthread_mutex_unlock(&r->mu);
  return ok;
}

static polybus_message_t message(const char *topic, const char *payload) {
  polybus_message_t m;
  memset(&m, 0, sizeof m);
  m.topic = polybus_str_from_cstr(topic);
  m.payload.ptr = (const uint8_t *)payload;
  m.payload.len = strlen(payload);
  return m;
}

static void test_versions(void) {
  CHECK(polybus_abi_version() == POLYBUS_ABI_VERSION);
  CHECK(strlen(polybus_version()) > 0);
  CHECK(strcmp(polybus_status_name(POLYBUS_ERR_CLOSED), "POLYBUS_ERR_CLOSED") == 0);
  CHECK(strcmp(polybus_status_str(POLYBUS_ERR_CLOSED), "closed") == 0);
  CHECK(strcmp(polybus_status_name(12345), "POLYBUS_UNKNOWN_STATUS") == 0);
  CHECK(strcmp(polybus_status_name(POLYBUS_OK), "POLYBUS_OK") == 0);
}

static void test_callback_subscription(void) {
  polybus_t *bus = NULL;
  polybus_error_t err;
  CHECK_STATUS(polybus_open("{\"url\":\"memory://\",\"name\":\"c-test\"}", NULL, &bus, &err), POLYBUS_OK);

  recorder_t rec;
  recorder_init(&rec, 1); /* every event fails its first attempt */
  polybus_subscribe_options_t opts;
  polybus_subscribe_options_default(&opts);
  opts.backoff_initial_ms = 1;
  opts.backoff_max_ms = 2;
  polybus_handler_t h = {&rec, on_event, on_drop};
  polybus_subscription_t *sub = NULL;
  CHECK_STATUS(polybus_subscribe(bus, "orders.*", &opts, h, &sub, &err), POLYBUS_OK);
  CHECK(sub != NULL);

  polybus_header_t hdr = {polybus_str_from_cstr("tenant"), polybus_str_from_cstr("acme")};
  polybus_message_t m = message("orders.created", "first");
  m.key = polybus_str_from_cstr("order-1");
  m.headers = &hdr;
  m.headers_len = 1;
  CHECK_STATUS(polybus_publish(bus, &m, NULL, &err), POLYBUS_OK);

  polybus_message_t batch[3] = {message("orders.created", "b0"), message("orders.updated", "b1"),
                                message("orders.created", "b2")};
  size_t published = 0;
  CHECK_STATUS(polybus_publish_batch(bus, batch, 3, NULL, &published, &err), POLYBUS_OK);
  CHECK(published == 3);
  CHECK(wait_acked(&rec, 4));

  pthread_mutex_lock(&rec.mu);
  CHECK(rec.calls == 8); /* each of the four failed once, then succeeded */
  CHECK(strcmp(rec.payloads[0], "first") == 0 && rec.attempts[0] == 1);
  CHECK(strcmp(rec.payloads[1], "first") == 0 && rec.attempts[1] == 2);
  CHECK(strcmp(rec.payloads[7], "b2") == 0 && rec.attempts[7] == 2);
  CHECK(strcmp(rec.header_tenant, "acme") == 0);
  pthread_mutex_unlock(&rec.mu);

  CHECK_STATUS(polybus_subscription_close(sub, NULL, &err), POLYBUS_OK);
  CHECK(rec.drops == 1); /* drop ran once, after the last call */
  polybus_stats_t stats; /* final once the subscription has drained */
  CHECK_STATUS(polybus_stats(bus, &stats, &err), POLYBUS_OK);
  CHECK(stats.published == 4 && stats.acked == 4 && stats.failed == 4 && stats.retried == 4);
  CHECK_STATUS(polybus_subscription_close(sub, NULL, &err), POLYBUS_OK);
  polybus_subscription_free(sub);
  CHECK(rec.drops == 1);

  CHECK_STATUS(polybus_close(bus, NULL, &err), POLYBUS_OK);
  CHECK_STATUS(polybus_close(bus, NULL, &err), POLYBUS_OK);
  memset(&err, 0, sizeof err);
  CHECK_STATUS(polybus_publish(bus, &m, NULL, &err), POLYBUS_ERR_CLOSED);
  CHECK(err.code == POLYBUS_ERR_CLOSED);
  CHECK(strstr(err.message, "closed") != NULL);
  recorder_t rec2;
  recorder_init(&rec2, 0);
  polybus_handler_t h2 = {&rec2, on_event, on_drop};
  CHECK_STATUS(polybus_subscribe(bus, "orders.*", NULL, h2, &sub, &err), POLYBUS_ERR_CLOSED);
  CHECK(sub == NULL);
  CHECK(rec2.drops == 1); /* consumed even on failure */
  polybus_free(bus);
  recorder_destroy(&rec);
  recorder_destroy(&rec2);
}

static void test_pull_subscription(void) {
  polybus_t *bus = NULL;
  polybus_error_t err;
  CHECK_STATUS(polybus_open("memory://", NULL, &bus, &err), POLYBUS_OK);
  polybus_subscribe_options_t opts;
  polybus_subscribe_options_default(&opts);
  opts.backoff_initial_ms = 1;
  opts.backoff_max_ms = 1;
  polybus_subscription_t *sub = NULL;
  CHECK_STATUS(polybus_subscribe_pull(bus, "jobs.>", &opts, &sub, &err), POLYBUS_OK);

  polybus_event_batch_t b;
  CHECK_STATUS(polybus_subscription_next_batch(sub, 0, &b, &err), POLYBUS_NO_EVENTS);
  polybus_message_t m = message("jobs.run.now", "work");
  CHECK_STATUS(polybus_publish(bus, &m, NULL, &err), POLYBUS_OK);
  CHECK_STATUS(polybus_subscription_next_batch(sub, 5000, &b, &err), POLYBUS_OK);
  CHECK(b.len == 1 && b.events[0].attempt == 1);
  CHECK(b.events[0].topic.len == 12 && memcmp(b.events[0].topic.ptr, "jobs.run.now", 12) == 0);
  CHECK(b.events[0].key.ptr == NULL);
  CHECK(b.events[0].id.len == 36);
  CHECK(b.events[0].time_unix_ns > 0);
  CHECK_STATUS(polybus_batch_complete(b.batch, 0, "try again", &err), POLYBUS_OK);
  CHECK_STATUS(polybus_subscription_next_batch(sub, 5000, &b, &err), POLYBUS_OK);
  CHECK(b.len == 1 && b.events[0].attempt == 2);
  CHECK_STATUS(polybus_batch_complete(b.batch, SIZE_MAX, NULL, &err), POLYBUS_OK);

  /* A batch freed without results is redelivered. */
  CHECK_STATUS(polybus_publish(bus, &m, NULL, &err), POLYBUS_OK);
  CHECK_STATUS(polybus_subscription_next_batch(sub, 5000, &b, &err), POLYBUS_OK);
  polybus_batch_free(b.batch);
  CHECK_STATUS(polybus_subscription_next_batch(sub, 5000, &b, &err), POLYBUS_OK);
  CHECK(b.events[0].attempt == 2);
  CHECK_STATUS(polybus_batch_complete(b.batch, 0, "again", &err), POLYBUS_OK);
  CHECK_STATUS(polybus_subscription_next_batch(sub, 5000, &b, &err), POLYBUS_OK);
  CHECK(b.events[0].attempt == 3);
  CHECK_STATUS(polybus_batch_complete(b.batch, SIZE_MAX, NULL, &err), POLYBUS_OK);

  /* A publisher-set time travels with the event; one before 1970 is refused. */
  polybus_message_t timed = message("jobs.timed", "t");
  timed.time_unix_ns = INT64_C(1700000000123456789);
  CHECK_STATUS(polybus_publish(bus, &timed, NULL, &err), POLYBUS_OK);
  CHECK_STATUS(polybus_subscription_next_batch(sub, 5000, &b, &err), POLYBUS_OK);
  CHECK(b.events[0].time_unix_ns == INT64_C(1700000000123456789));
  CHECK_STATUS(polybus_batch_complete(b.batch, SIZE_MAX, NULL, &err), POLYBUS_OK);
  timed.time_unix_ns = -1;
  CHECK_STATUS(polybus_publish(bus, &timed, NULL, &err), POLYBUS_ERR_INVALID_ARGUMENT);

  polybus_subscription_t *s2 = sub;
  CHECK_STATUS(polybus_subscription_close(s2, NULL, &err), POLYBUS_OK);
  CHECK_STATUS(polybus_subscription_next_batch(sub, 1000, &b, &err), POLYBUS_ERR_CLOSED);
  polybus_subscription_free(sub);
  polybus_free(bus);
}

static void test_connection_state(void) {
  polybus_t *bus = NULL;
  polybus_error_t err;
  CHECK_STATUS(polybus_open("memory://", NULL, &bus, &err), POLYBUS_OK);
  int32_t state = -1;
  CHECK_STATUS(polybus_connection_state(bus, &state, &err), POLYBUS_OK);
  CHECK(state == POLYBUS_STATE_CONNECTED);
  /* Nothing changes on memory://: the wait times out, at once or after the timeout. */
  state = -1;
  CHECK_STATUS(polybus_connection_state_wait(bus, POLYBUS_STATE_CONNECTED, 0, &state, &err),
               POLYBUS_NO_EVENTS);
  CHECK_STATUS(polybus_connection_state_wait(bus, POLYBUS_STATE_CONNECTED, 50, &state, &err),
               POLYBUS_NO_EVENTS);
  CHECK(state == -1);
  /* A state other than the current one returns at once. */
  CHECK_STATUS(polybus_connection_state_wait(bus, POLYBUS_STATE_DISCONNECTED, -1, &state, &err),
               POLYBUS_OK);
  CHECK(state == POLYBUS_STATE_CONNECTED);

  CHECK_STATUS(polybus_close(bus, NULL, &err), POLYBUS_OK);
  CHECK_STATUS(polybus_connection_state(bus, &state, &err), POLYBUS_OK);
  CHECK(state == POLYBUS_STATE_CLOSED);
  CHECK_STATUS(polybus_connection_state_wait(bus, POLYBUS_STATE_CONNECTED, 5000, &state, &err),
               POLYBUS_OK);
  CHECK(state == POLYBUS_STATE_CLOSED);
  /* Closed is final: waiting on it returns at once, even without a timeout. */
  CHECK_STATUS(polybus_connection_state_wait(bus, POLYBUS_STATE_CLOSED, -1, &state, &err),
               POLYBUS_NO_EVENTS);
  polybus_free(bus);
}

/* A waiter blocked on "connected" is woken by polybus_close() on another thread. */
typedef struct {
  const polybus_t *bus;
  polybus_status_t status;
  int32_t state;
} waiter_t;

static void *wait_for_change(void *arg) {
  waiter_t *w = (waiter_t *)arg;
  w->status = polybus_connection_state_wait(w->bus, POLYBUS_STATE_CONNECTED, 10000, &w->state, NULL);
  return NULL;
}

static void test_connection_state_wakes_on_close(void) {
  polybus_t *bus = NULL;
  polybus_error_t err;
  CHECK_STATUS(polybus_open("memory://", NULL, &bus, &err), POLYBUS_OK);
  waiter_t w = {bus, POLYBUS_ERR_INTERNAL, -1};
  pthread_t t;
  CHECK(pthread_create(&t, NULL, wait_for_change, &w) == 0);
  CHECK_STATUS(polybus_close(bus, NULL, &err), POLYBUS_OK);
  pthread_join(t, NULL);
  CHECK(w.status == POLYBUS_OK);
  CHECK(w.state == POLYBUS_STATE_CLOSED);
  polybus_free(bus);
}

static void test_misuse(void) {
  polybus_error_t err;
  polybus_t *bus = (polybus_t *)1;
  CHECK_STATUS(polybus_open(NULL, NULL, &bus, &err), POLYBUS_ERR_INVALID_ARGUMENT);
  CHECK(bus == NULL);
  CHECK(strstr(err.message, "config is NULL") != NULL);
  CHECK_STATUS(polybus_open("memory://", NULL, NULL, NULL), POLYBUS_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(polybus_open("{\"url\":\"memory://\",\"colour\":1}", NULL, &bus, &err), POLYBUS_ERR_INVALID_CONFIG);
  CHECK(strstr(err.message, "colour") != NULL);
  CHECK_STATUS(polybus_open("nats//nope", NULL, &bus, &err), POLYBUS_ERR_INVALID_CONFIG);
  CHECK_STATUS(polybus_open("{not json", NULL, &bus, &err), POLYBUS_ERR_INVALID_CONFIG);

  polybus_message_t m = message("a.b", "x");
  CHECK_STATUS(polybus_publish(NULL, &m, NULL, &err), POLYBUS_ERR_INVALID_ARGUMENT);
  CHECK(strstr(err.message, "bus is NULL") != NULL);
  CHECK_STATUS(polybus_stats(NULL, NULL, NULL), POLYBUS_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(polybus_close(NULL, NULL, NULL), POLYBUS_ERR_INVALID_ARGUMENT);
  int32_t state = -1;
  CHECK_STATUS(polybus_connection_state(NULL, &state, &err), POLYBUS_ERR_INVALID_ARGUMENT);
  CHECK(strstr(err.message, "bus is NULL") != NULL);
  CHECK_STATUS(polybus_connection_state_wait(NULL, POLYBUS_STATE_CONNECTED, 0, &state, &err),
               POLYBUS_ERR_INVALID_ARGUMENT);
  CHECK(state == -1);

  CHECK_STATUS(polybus_open("{\"url\":\"memory://\",\"max_payload\":4}", NULL, &bus, &err), POLYBUS_OK);
  CHECK_STATUS(polybus_publish(bus, NULL, NULL, &err), POLYBUS_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(polybus_connection_state(bus, NULL, &err), POLYBUS_ERR_INVALID_ARGUMENT);
  CHECK(strstr(err.message, "out is NULL") != NULL);
  CHECK_STATUS(polybus_connection_state_wait(bus, POLYBUS_STATE_CONNECTED, 0, NULL, NULL),
               POLYBUS_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(polybus_connection_state_wait(bus, 3, 0, &state, &err), POLYBUS_ERR_INVALID_ARGUMENT);
  CHECK(strstr(err.message, "POLYBUS_STATE_") != NULL);
  polybus_message_t bad = message("a..b", "x");
  CHECK_STATUS(polybus_publish(bus, &bad, NULL, &err), POLYBUS_ERR_INVALID_TOPIC);
  CHECK(strstr(err.message, "empty token") != NULL);
  polybus_message_t big = message("a.b", "12345");
  CHECK_STATUS(polybus_publish(bus, &big, NULL, &err), POLYBUS_ERR_TOO_LARGE);
  polybus_message_t notutf8 = message("a.b", "x");
  notutf8.topic.ptr = "\xff\xfe";
  notutf8.topic.len = 2;
  CHECK_STATUS(polybus_publish(bus, &notutf8, NULL, &err), POLYBUS_ERR_INVALID_ARGUMENT);
  CHECK(strstr(err.message, "UTF-8") != NULL);
  polybus_message_t nullpayload = message("a.b", "x");
  nullpayload.payload.ptr = NULL;
  CHECK_STATUS(polybus_publish(bus, &nullpayload, NULL, &err), POLYBUS_ERR_INVALID_ARGUMENT);
  polybus_message_t batch[2] = {message("a.b", "ok"), message("a b", "no")};
  size_t published = 99;
  CHECK_STATUS(polybus_publish_batch(bus, batch, 2, NULL, &published, &err), POLYBUS_ERR_INVALID_TOPIC);
  CHECK(published == 1);
  CHECK(strstr(err.message, "event 1 of the batch") != NULL);

  recorder_t rec;
  recorder_init(&rec, 0);
  polybus_handler_t h = {&rec, on_event, on_drop};
  polybus_subscription_t *sub = (polybus_subscription_t *)1;
  CHECK_STATUS(polybus_subscribe(bus, "a.>.b", NULL, h, &sub, &err), POLYBUS_ERR_INVALID_PATTERN);
  CHECK(sub == NULL && rec.drops == 1);
  polybus_handler_t no_call = {&rec, NULL, on_drop};
  CHECK_STATUS(polybus_subscribe(bus, "a.b", NULL, no_call, &sub, &err), POLYBUS_ERR_INVALID_ARGUMENT);
  CHECK(rec.drops == 2);
  polybus_subscribe_options_t opts;
  polybus_subscribe_options_default(&opts);
  opts.concurrency = 0;
  CHECK_STATUS(polybus_subscribe(bus, "a.b", &opts, h, &sub, &err), POLYBUS_ERR_INVALID_ARGUMENT);
  CHECK(strstr(err.message, "concurrency") != NULL);
  polybus_subscribe_options_default(&opts);
  opts.start = 7;
  CHECK_STATUS(polybus_subscribe_pull(bus, "a.b", &opts, &sub, &err), POLYBUS_ERR_INVALID_ARGUMENT);
  opts.start = POLYBUS_START_EARLIEST;
  CHECK_STATUS(polybus_subscribe_pull(bus, "a.b", &opts, &sub, &err), POLYBUS_ERR_UNSUPPORTED);
  CHECK_STATUS(polybus_subscription_next_batch(NULL, 0, NULL, &err), POLYBUS_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(polybus_batch_complete(NULL, 0, NULL, &err), POLYBUS_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(polybus_subscription_close(NULL, NULL, &err), POLYBUS_ERR_INVALID_ARGUMENT);

  /* A callback subscription cannot be pulled. */
  recorder_t rec3;
  recorder_init(&rec3, 0);
  polybus_handler_t h3 = {&rec3, on_event, on_drop};
  CHECK_STATUS(polybus_subscribe(bus, "a.b", NULL, h3, &sub, &err), POLYBUS_OK);
  polybus_event_batch_t b;
  CHECK_STATUS(polybus_subscription_next_batch(sub, 0, &b, &err), POLYBUS_ERR_INVALID_ARGUMENT);
  polybus_subscription_free(sub); /* closes, joins, runs drop */
  CHECK(rec3.drops == 1);

  polybus_free(NULL);
  polybus_subscription_free(NULL);
  polybus_batch_free(NULL);
  polybus_subscribe_options_default(NULL);
  CHECK(polybus_str_from_cstr(NULL).ptr == NULL);
  polybus_free(bus); /* closes first */
  recorder_destroy(&rec);
  recorder_destroy(&rec3);
}

/* Many pull subscriptions feed one delivery queue; batches carry their subscription's token,
 * and a partial completion redelivers the rest with the same attempt. */
static void test_delivery_queue(void) {
  polybus_error_t err;
  polybus_t *bus = NULL;
  CHECK_STATUS(polybus_open("memory://", NULL, &bus, &err), POLYBUS_OK);
  polybus_queue_t *q = NULL;
  CHECK_STATUS(polybus_queue_new(&q, &err), POLYBUS_OK);
  enum { N = 50 };
  polybus_subscription_t *subs[N];
  char topic[32];
  for (int i = 0; i < N; i++) {
    snprintf(topic, sizeof topic, "q.s%d", i);
    CHECK_STATUS(polybus_subscribe_queue(bus, topic, NULL, q, (uint64_t)(1000 + i), &subs[i], &err),
                 POLYBUS_OK);
  }
  for (int i = 0; i < N; i++) {
    snprintf(topic, sizeof topic, "q.s%d", i);
    polybus_message_t m = message(topic, topic);
    CHECK_STATUS(polybus_publish(bus, &m, NULL, &err), POLYBUS_OK);
  }
  int seen[N] = {0};
  for (int i = 0; i < N; i++) {
    polybus_event_batch_t b;
    CHECK_STATUS(polybus_queue_next_batch(q, 5000, &b, &err), POLYBUS_OK);
    CHECK(b.token >= 1000 && b.token < 1000 + N);
    int idx = (int)(b.token - 1000);
    snprintf(topic, sizeof topic, "q.s%d", idx);
    CHECK(b.events[0].payload.len == strlen(topic) &&
          memcmp(b.events[0].payload.ptr, topic, strlen(topic)) == 0);
    seen[idx]++;
    CHECK_STATUS(polybus_batch_complete(b.batch, b.len, NULL, &err), POLYBUS_OK);
  }
  for (int i = 0; i < N; i++) CHECK(seen[i] == 1);
  polybus_event_batch_t none;
  CHECK_STATUS(polybus_queue_next_batch(q, 0, &none, &err), POLYBUS_NO_EVENTS);

  /* Handled 1 of 3, then stopped without a failure: the other two come again, attempt 1. */
  polybus_subscription_t *held = NULL;
  CHECK_STATUS(polybus_subscribe_queue(bus, "q.part", NULL, q, 7, &held, &err), POLYBUS_OK);
  polybus_message_t first = message("q.part", "0");
  CHECK_STATUS(polybus_publish(bus, &first, NULL, &err), POLYBUS_OK);
  polybus_event_batch_t b;
  CHECK_STATUS(polybus_queue_next_batch(q, 5000, &b, &err), POLYBUS_OK);
  polybus_message_t more[3] = {message("q.part", "1"), message("q.part", "2"), message("q.part", "3")};
  size_t published = 0;
  CHECK_STATUS(polybus_publish_batch(bus, more, 3, NULL, &published, &err), POLYBUS_OK);
  CHECK(published == 3);
  CHECK_STATUS(polybus_batch_complete(b.batch, b.len, NULL, &err), POLYBUS_OK);
  CHECK_STATUS(polybus_queue_next_batch(q, 5000, &b, &err), POLYBUS_OK);
  CHECK(b.len == 3 && b.token == 7);
  CHECK_STATUS(polybus_batch_complete(b.batch, 1, NULL, &err), POLYBUS_OK);
  CHECK_STATUS(polybus_queue_next_batch(q, 5000, &b, &err), POLYBUS_OK);
  CHECK(b.len == 2 && b.events[0].attempt == 1 && b.events[1].attempt == 1);
  CHECK(b.events[0].payload.len == 1 && b.events[0].payload.ptr[0] == '2');
  /* The second fails: it comes back alone with attempt 2, the third with attempt 1. */
  CHECK_STATUS(polybus_batch_complete(b.batch, 0, "no", &err), POLYBUS_OK);
  CHECK_STATUS(polybus_queue_next_batch(q, 5000, &b, &err), POLYBUS_OK);
  CHECK(b.events[0].attempt == 2);
  CHECK_STATUS(polybus_batch_complete(b.batch, SIZE_MAX, NULL, &err), POLYBUS_OK);

  /* The queue ends once closed and every subscription feeding it has ended. */
  polybus_queue_close(q);
  polybus_subscription_t *late = NULL;
  CHECK_STATUS(polybus_subscribe_queue(bus, "q.late", NULL, q, 9, &late, &err), POLYBUS_ERR_CLOSED);
  CHECK(late == NULL);
  CHECK_STATUS(polybus_close(bus, NULL, &err), POLYBUS_OK);
  for (int i = 0; i < N; i++) polybus_subscription_free(subs[i]);
  polybus_subscription_free(held);
  CHECK_STATUS(polybus_queue_next_batch(q, 5000, &none, &err), POLYBUS_ERR_CLOSED);
  polybus_queue_free(q);
  polybus_queue_free(NULL);
  polybus_queue_close(NULL);
  CHECK_STATUS(polybus_queue_next_batch(NULL, 0, &none, &err), POLYBUS_ERR_INVALID_ARGUMENT);
  polybus_free(bus);
}

/* A callback that closes its own subscription: the close returns at once, `drop` runs once. */
typedef struct {
  recorder_t rec;
  polybus_subscription_t *self;
  int close_status;
} closer_t;

static int32_t close_self(const polybus_event_t *e, void *ctx) {
  closer_t *c = (closer_t *)ctx;
  (void)e;
  polybus_subscription_t *self;
  pthread_mutex_lock(&c->rec.mu);
  self = c->self;
  pthread_mutex_unlock(&c->rec.mu);
  int st = polybus_subscription_close(self, NULL, NULL);
  pthread_mutex_lock(&c->rec.mu);
  c->close_status = st;
  c->rec.acked++;
  pthread_cond_broadcast(&c->rec.cv);
  pthread_mutex_unlock(&c->rec.mu);
  return 0;
}

static void closer_drop(void *ctx) { on_drop(&((closer_t *)ctx)->rec); }

static void test_close_from_own_callback(void) {
  polybus_error_t err;
  polybus_t *bus = NULL;
  CHECK_STATUS(polybus_open("memory://", NULL, &bus, &err), POLYBUS_OK);
  closer_t c;
  memset(&c, 0, sizeof c);
  recorder_init(&c.rec, 0);
  c.close_status = -1;
  /* Held until `self` is set, so the callback never sees NULL. */
  pthread_mutex_lock(&c.rec.mu);
  polybus_handler_t h = {&c, close_self, closer_drop};
  polybus_subscription_t *sub = NULL;
  CHECK_STATUS(polybus_subscribe(bus, "self.close", NULL, h, &sub, &err), POLYBUS_OK);
  c.self = sub;
  pthread_mutex_unlock(&c.rec.mu);
  polybus_message_t m = message("self.close", "x");
  CHECK_STATUS(polybus_publish(bus, &m, NULL, &err), POLYBUS_OK);
  CHECK(wait_acked(&c.rec, 1));
  CHECK(c.close_status == POLYBUS_OK);
  /* Closed: a later publish reaches nobody, and free waits for the drop. */
  CHECK_STATUS(polybus_publish(bus, &m, NULL, &err), POLYBUS_OK);
  polybus_subscription_free(sub);
  CHECK_STATUS(polybus_close(bus, NULL, &err), POLYBUS_OK);
  pthread_mutex_lock(&c.rec.mu);
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 10;
  while (c.rec.drops == 0) {
    if (pthread_cond_timedwait(&c.rec.cv, &c.rec.mu, &deadline) != 0) break;
  }
  CHECK(c.rec.drops == 1);
  CHECK(c.rec.acked == 1);
  pthread_mutex_unlock(&c.rec.mu);
  polybus_free(bus);
  recorder_destroy(&c.rec);
}

int main(void) {
  test_versions();
  test_callback_subscription();
  test_pull_subscription();
  test_connection_state();
  test_connection_state_wakes_on_close();
  test_misuse();
  test_delivery_queue();
  test_close_from_own_callback();
  if (failures) {
    fprintf(stderr, "api_pubsub: %d check(s) failed\n", failures);
    return 1;
  }
  printf("api_pubsub: all checks passed\n");
  return 0;
}
