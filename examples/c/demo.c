/* The C demo: a callback subscriber and a publisher on one bus (POLYBUS_URL, default memory://). */
#define _POSIX_C_SOURCE 200809L
#include "polybus.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int seen;
} demo_t;

static int32_t on_message(const polybus_event_t *evt, void *ctx) {
  demo_t *d = (demo_t *)ctx;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  /* The payload is {"message":"..."}: print the message the way the other demos do. */
  const char *p = (const char *)evt->payload.ptr;
  const char *key = "\"message\":\"";
  const char *start = NULL;
  for (size_t i = 0; i + strlen(key) <= evt->payload.len; i++)
    if (memcmp(p + i, key, strlen(key)) == 0) { start = p + i + strlen(key); break; }
  int mlen = 0;
  while (start && start + mlen < p + evt->payload.len && start[mlen] != '"') mlen++;
  printf("INFO[%02d:%02d:%02d.%06ld] c      evt id: %.*s, topic: %.*s, payload message: %.*s\n",
         tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000, (int)evt->id.len, evt->id.ptr,
         (int)evt->topic.len, evt->topic.ptr, mlen, start ? start : "");
  fflush(stdout);
  pthread_mutex_lock(&d->mu);
  d->seen++;
  pthread_cond_signal(&d->cv);
  pthread_mutex_unlock(&d->mu);
  return 0;
}

int main(void) {
  const char *url = getenv("POLYBUS_URL") ? getenv("POLYBUS_URL") : "memory://";
  polybus_error_t err;
  polybus_t *bus = NULL;
  if (polybus_open(url, NULL, &bus, &err) != POLYBUS_OK) {
    fprintf(stderr, "open %s: %s\n", url, err.message);
    return 1;
  }
  demo_t d = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
  polybus_handler_t handler = {&d, on_message, NULL};
  polybus_subscription_t *sub = NULL;
  if (polybus_subscribe(bus, "message", NULL, handler, &sub, &err) != POLYBUS_OK) {
    fprintf(stderr, "subscribe: %s\n", err.message);
    polybus_free(bus);
    return 1;
  }
  const char *payload = "{\"message\":\"hello world\"}";
  polybus_message_t m = {0};
  m.topic = polybus_str_from_cstr("message");
  m.payload.ptr = (const uint8_t *)payload;
  m.payload.len = strlen(payload);
  for (int i = 0; i < 3; i++) {
    if (polybus_publish(bus, &m, NULL, &err) != POLYBUS_OK) {
      fprintf(stderr, "publish: %s\n", err.message);
      break;
    }
  }
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 10;
  pthread_mutex_lock(&d.mu);
  while (d.seen < 3 && pthread_cond_timedwait(&d.cv, &d.mu, &deadline) == 0) {
  }
  int seen = d.seen;
  pthread_mutex_unlock(&d.mu);
  polybus_subscription_free(sub);
  polybus_free(bus);
  return seen == 3 ? 0 : 1;
}
