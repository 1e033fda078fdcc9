/* Events per second from publish to a C callback on memory://, 64-byte payloads, one publisher
 * and one subscriber. Prints one JSON line per case. POLYBUS_BENCH_EVENTS sets the count. */
#define _POSIX_C_SOURCE 200809L
#include "polybus.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static atomic_long seen;
static long target;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

static int32_t count(const polybus_event_t *e, void *ctx) {
  (void)e;
  (void)ctx;
  if (atomic_fetch_add(&seen, 1) + 1 == target) {
    pthread_mutex_lock(&mu);
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
  }
  return 0;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void run(const char *name, long n, int batch) {
  polybus_t *bus = NULL;
  polybus_error_t err;
  if (polybus_open("memory://", NULL, &bus, &err) != POLYBUS_OK) {
    fprintf(stderr, "%s\n", err.message);
    exit(1);
  }
  atomic_store(&seen, 0);
  target = n;
  polybus_handler_t h = {NULL, count, NULL};
  polybus_subscription_t *sub = NULL;
  polybus_subscribe(bus, "bench.events", NULL, h, &sub, &err);
  static uint8_t payload[64];
  polybus_message_t m = {0};
  m.topic = polybus_str_from_cstr("bench.events");
  m.payload.ptr = payload;
  m.payload.len = sizeof payload;
  enum { CHUNK = 1024 };
  static polybus_message_t many[CHUNK];
  for (int i = 0; i < CHUNK; i++) many[i] = m;
  double start = now();
  if (batch) {
    for (long sent = 0; sent < n; sent += CHUNK) {
      size_t k = (size_t)(n - sent < CHUNK ? n - sent : CHUNK);
      polybus_publish_batch(bus, many, k, NULL, NULL, &err);
    }
  } else {
    for (long i = 0; i < n; i++) polybus_publish(bus, &m, NULL, &err);
  }
  pthread_mutex_lock(&mu);
  while (atomic_load(&seen) < n) pthread_cond_wait(&cv, &mu);
  pthread_mutex_unlock(&mu);
  double secs = now() - start;
  printf("{\"lang\":\"c\",\"case\":\"%s\",\"events\":%ld,\"seconds\":%.4f,\"events_per_sec\":%.0f}\n",
         name, n, secs, (double)n / secs);
  polybus_subscription_free(sub);
  polybus_free(bus);
}

int main(void) {
  long n = getenv("POLYBUS_BENCH_EVENTS") ? atol(getenv("POLYBUS_BENCH_EVENTS")) : 2000000;
  run("c polybus_publish", n, 0);
  run("c polybus_publish_batch", n, 1);
  return 0;
}
