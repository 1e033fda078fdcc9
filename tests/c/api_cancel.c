/* Cancel handles on the memory backend: a publish held back by a full queue, a batch, a close
 * waiting for a handler, each stopped by a fired handle or its deadline. */
#include "polybus.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"

static polybus_message_t message(const char *topic, const char *payload) {
  polybus_message_t m;
  memset(&m, 0, sizeof m);
  m.topic = polybus_str_from_cstr(topic);
  m.payload.ptr = (const uint8_t *)payload;
  m.payload.len = strlen(payload);
  return m;
}

/* A bus whose only subscriber holds one event and is never pulled: the second publish waits. */
static polybus_t *full_bus(polybus_subscription_t **sub) {
  polybus_t *bus = NULL;
  polybus_error_t err;
  CHECK_STATUS(polybus_open("{\"url\":\"memory://\",\"publish_timeout_ms\":60000}", NULL, &bus, &err),
               POLYBUS_OK);
  polybus_subscribe_options_t opts;
  polybus_subscribe_options_default(&opts);
  opts.queue_size = 1;
  opts.batch_size = 1;
  CHECK_STATUS(polybus_subscribe_pull(bus, "full.>", &opts, sub, &err), POLYBUS_OK);
  return bus;
}

/* Fills the subscriber's queue: publishes with a short deadline until one has to wait; `err`
 * holds that publish's error. */
static int fill(polybus_t *bus, polybus_error_t *err) {
  polybus_message_t m = message("full.x", "fill");
  for (int i = 0; i < 64; i++) {
    polybus_cancel_t *c = NULL;
    CHECK_STATUS(polybus_cancel_new(50, &c, err), POLYBUS_OK);
    polybus_status_t st = polybus_publish(bus, &m, c, err);
    polybus_cancel_free(c);
    if (st == POLYBUS_ERR_TIMEOUT) return i;
    if (st != POLYBUS_OK) {
      fprintf(stderr, "fill: %s\n", err->message);
      return -1;
    }
  }
  return -1;
}

typedef struct {
  polybus_cancel_t *cancel;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int started;
} firer_t;

/* Fires the handle once the main thread says it is about to block. */
static void *fire_later(void *arg) {
  firer_t *f = (firer_t *)arg;
  pthread_mutex_lock(&f->mu);
  while (!f->started) pthread_cond_wait(&f->cv, &f->mu);
  pthread_mutex_unlock(&f->mu);
  polybus_cancel(f->cancel);
  return NULL;
}

static void test_deadline_stops_a_publish_held_by_backpressure(void) {
  polybus_subscription_t *sub = NULL;
  polybus_t *bus = full_bus(&sub);
  polybus_error_t err;
  int accepted = fill(bus, &err);
  CHECK(accepted >= 1);
  /* The last fill attempt failed on its deadline, naming it; the event may still arrive. */
  CHECK(strstr(err.message, "deadline") != NULL);
  CHECK(strstr(err.message, "may still be published") != NULL);
  CHECK(err.code == POLYBUS_ERR_TIMEOUT);
  polybus_subscription_free(sub);
  polybus_free(bus);
}

static void test_fired_handle_stops_a_waiting_publish(void) {
  polybus_subscription_t *sub = NULL;
  polybus_t *bus = full_bus(&sub);
  polybus_error_t err;
  CHECK(fill(bus, &err) >= 1);
  firer_t f;
  memset(&f, 0, sizeof f);
  pthread_mutex_init(&f.mu, NULL);
  pthread_cond_init(&f.cv, NULL);
  CHECK_STATUS(polybus_cancel_new(-1, &f.cancel, &err), POLYBUS_OK);
  pthread_t t;
  pthread_create(&t, NULL, fire_later, &f);
  pthread_mutex_lock(&f.mu);
  f.started = 1;
  pthread_cond_signal(&f.cv);
  pthread_mutex_unlock(&f.mu);
  /* Without the handle this would wait out publish_timeout_ms (60 s). */
  polybus_message_t m = message("full.x", "held");
  CHECK_STATUS(polybus_publish(bus, &m, f.cancel, &err), POLYBUS_ERR_CANCELLED);
  CHECK(strstr(err.message, "cancelled: publish") == err.message);
  pthread_join(t, NULL);
  /* A fired handle fails later calls at once, and firing twice is harmless. */
  polybus_cancel(f.cancel);
  CHECK_STATUS(polybus_publish(bus, &m, f.cancel, &err), POLYBUS_ERR_CANCELLED);
  polybus_cancel(NULL);
  polybus_cancel_free(f.cancel);
  polybus_cancel_free(NULL);
  pthread_mutex_destroy(&f.mu);
  pthread_cond_destroy(&f.cv);
  polybus_subscription_free(sub);
  polybus_free(bus);
}

/* A handle fired as a passed deadline (a caller's own clock) stops a waiting publish with
 * POLYBUS_ERR_TIMEOUT; a handle already fired keeps its first firing. */
static void test_expired_handle_stops_a_waiting_publish_as_a_timeout(void) {
  polybus_subscription_t *sub = NULL;
  polybus_t *bus = full_bus(&sub);
  polybus_error_t err;
  CHECK(fill(bus, &err) >= 1);
  polybus_cancel_t *c = NULL;
  CHECK_STATUS(polybus_cancel_new(-1, &c, &err), POLYBUS_OK);
  polybus_cancel_expire(c);
  polybus_message_t m = message("full.x", "held");
  /* Without the handle this would wait out publish_timeout_ms (60 s). */
  CHECK_STATUS(polybus_publish(bus, &m, c, &err), POLYBUS_ERR_TIMEOUT);
  CHECK(strstr(err.message, "deadline") != NULL);
  polybus_cancel(c); /* the first firing decides */
  CHECK_STATUS(polybus_publish(bus, &m, c, &err), POLYBUS_ERR_TIMEOUT);
  polybus_cancel_free(c);
  polybus_cancel_expire(NULL);
  /* The other way round: cancelled first, expire changes nothing. */
  CHECK_STATUS(polybus_cancel_new(-1, &c, &err), POLYBUS_OK);
  polybus_cancel(c);
  polybus_cancel_expire(c);
  CHECK_STATUS(polybus_publish(bus, &m, c, &err), POLYBUS_ERR_CANCELLED);
  polybus_cancel_free(c);
  polybus_subscription_free(sub);
  polybus_free(bus);
}

static void test_cancelled_batch_reports_what_was_published(void) {
  polybus_subscription_t *sub = NULL;
  polybus_t *bus = full_bus(&sub);
  polybus_error_t err;
  polybus_message_t batch[8];
  char payload[8][4];
  for (int i = 0; i < 8; i++) {
    snprintf(payload[i], sizeof payload[i], "%d", i);
    batch[i] = message("full.x", payload[i]);
  }
  polybus_cancel_t *c = NULL;
  CHECK_STATUS(polybus_cancel_new(100, &c, &err), POLYBUS_OK);
  size_t published = 99;
  CHECK_STATUS(polybus_publish_batch(bus, batch, 8, c, &published, &err), POLYBUS_ERR_TIMEOUT);
  CHECK(published < 8);
  CHECK(strstr(err.message, "deadline") != NULL);
  polybus_cancel_free(c);
  /* What was confirmed arrives, in order, first. */
  for (size_t i = 0; i < published; i++) {
    polybus_event_batch_t b;
    CHECK_STATUS(polybus_subscription_next_batch(sub, 5000, &b, &err), POLYBUS_OK);
    CHECK(b.len == 1 && b.events[0].payload.len == 1 && b.events[0].payload.ptr[0] == '0' + (int)i);
    CHECK_STATUS(polybus_batch_complete(b.batch, SIZE_MAX, NULL, &err), POLYBUS_OK);
  }
  polybus_subscription_free(sub);
  polybus_free(bus);
}

/* A handler that waits until released. */
typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int entered;
  int released;
} gate_t;

static int32_t wait_at_gate(const polybus_event_t *e, void *ctx) {
  (void)e;
  gate_t *g = (gate_t *)ctx;
  pthread_mutex_lock(&g->mu);
  g->entered = 1;
  pthread_cond_broadcast(&g->cv);
  while (!g->released) pthread_cond_wait(&g->cv, &g->mu);
  pthread_mutex_unlock(&g->mu);
  return 0;
}

static void test_cancelled_close_leaves_the_drain_running(void) {
  polybus_t *bus = NULL;
  polybus_error_t err;
  CHECK_STATUS(polybus_open("memory://", NULL, &bus, &err), POLYBUS_OK);
  gate_t g;
  memset(&g, 0, sizeof g);
  pthread_mutex_init(&g.mu, NULL);
  pthread_cond_init(&g.cv, NULL);
  polybus_handler_t h = {&g, wait_at_gate, NULL};
  polybus_subscription_t *sub = NULL;
  CHECK_STATUS(polybus_subscribe(bus, "gate.x", NULL, h, &sub, &err), POLYBUS_OK);
  polybus_message_t m = message("gate.x", "in");
  CHECK_STATUS(polybus_publish(bus, &m, NULL, &err), POLYBUS_OK);
  pthread_mutex_lock(&g.mu);
  while (!g.entered) pthread_cond_wait(&g.cv, &g.mu);
  pthread_mutex_unlock(&g.mu);

  /* The subscription's close gives up on its deadline, but the subscription is closed. */
  polybus_cancel_t *c = NULL;
  CHECK_STATUS(polybus_cancel_new(50, &c, &err), POLYBUS_OK);
  CHECK_STATUS(polybus_subscription_close(sub, c, &err), POLYBUS_ERR_TIMEOUT);
  CHECK(strstr(err.message, "drain goes on in the background") != NULL);
  /* So does the bus's close; the bus refuses publishes from then on. */
  CHECK_STATUS(polybus_close(bus, c, &err), POLYBUS_ERR_TIMEOUT);
  CHECK_STATUS(polybus_publish(bus, &m, NULL, &err), POLYBUS_ERR_CLOSED);
  polybus_cancel_free(c);

  /* Released, the handler finishes and a close without a handle completes. */
  pthread_mutex_lock(&g.mu);
  g.released = 1;
  pthread_cond_broadcast(&g.cv);
  pthread_mutex_unlock(&g.mu);
  CHECK_STATUS(polybus_subscription_close(sub, NULL, &err), POLYBUS_OK);
  int32_t state = -1;
  CHECK_STATUS(polybus_connection_state_wait(bus, POLYBUS_STATE_CONNECTED, 10000, &state, &err),
               POLYBUS_OK);
  CHECK(state == POLYBUS_STATE_CLOSED);
  polybus_stats_t s;
  CHECK_STATUS(polybus_stats(bus, &s, &err), POLYBUS_OK);
  CHECK(s.acked == 1 && s.dropped == 0);
  polybus_subscription_free(sub);
  polybus_free(bus);
  pthread_mutex_destroy(&g.mu);
  pthread_cond_destroy(&g.cv);
}

int main(void) {
  polybus_error_t err;
  CHECK_STATUS(polybus_cancel_new(0, NULL, &err), POLYBUS_ERR_INVALID_ARGUMENT);
  test_deadline_stops_a_publish_held_by_backpressure();
  test_fired_handle_stops_a_waiting_publish();
  test_expired_handle_stops_a_waiting_publish_as_a_timeout();
  test_cancelled_batch_reports_what_was_published();
  test_cancelled_close_leaves_the_drain_running();
  if (failures) {
    fprintf(stderr, "api_cancel: %d failures\n", failures);
    return 1;
  }
  printf("api_cancel: ok\n");
  return 0;
}
