/* The C API against Redis: round trips over redis:// (Streams) and redis+pubsub://, the ACL
 * server with the right credentials, a wrong password and none, and an unreachable server.
 * Needs the brokers of tests/harness/setup.sh; a missing broker fails the test.
 *
 *   POLYBUS_TEST_REDIS_URL         default redis://127.0.0.1:6390
 *   POLYBUS_TEST_REDIS_PUBSUB_URL  default redis+pubsub://127.0.0.1:6390
 *   POLYBUS_TEST_REDIS_ACL_URL     default redis://127.0.0.1:6391 (user polybus, password secret)
 */
#include "polybus.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

static const char *env_or(const char *name, const char *fallback) {
  const char *v = getenv(name);
  return v && *v ? v : fallback;
}

/* Waits for events are bounded by 10 s times POLYBUS_TEST_TIMEOUT_SCALE. */
static int32_t wait_ms(void) {
  const char *s = getenv("POLYBUS_TEST_TIMEOUT_SCALE");
  double scale = s && *s ? atof(s) : 1.0;
  if (scale <= 0) scale = 1.0;
  return (int32_t)(10000 * scale);
}

/* A fresh topic prefix per bus, "t.c<pid><time><n>", so runs never see each other's events. */
static void unique_prefix(char *out, size_t cap) {
  static unsigned n = 0;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  snprintf(out, cap, "t.c%ld%lx%lx%u", (long)getpid(), (unsigned long)ts.tv_sec,
           (unsigned long)ts.tv_nsec, n++);
}

static polybus_message_t message(const char *topic, const char *payload) {
  polybus_message_t m;
  memset(&m, 0, sizeof m);
  m.topic = polybus_str_from_cstr(topic);
  m.payload.ptr = (const uint8_t *)payload;
  m.payload.len = strlen(payload);
  return m;
}

static int str_is(polybus_str_t s, const char *want) {
  return s.ptr != NULL && s.len == strlen(want) && memcmp(s.ptr, want, s.len) == 0;
}

/* Publishes two events (one keyed, with a header) and pulls them back through a pattern. */
static void test_round_trip(const char *url) {
  char prefix[64], config[512];
  unique_prefix(prefix, sizeof prefix);
  snprintf(config, sizeof config, "{\"url\":\"%s\",\"prefix\":\"%s\",\"name\":\"c-int\"}", url,
           prefix);
  polybus_t *bus = NULL;
  polybus_error_t err;
  polybus_status_t st = polybus_open(config, NULL, &bus, &err);
  if (st != POLYBUS_OK) {
    fprintf(stderr, "%s: polybus_open: %s: %s (is the broker up? bash tests/harness/setup.sh)\n",
            url, polybus_status_name(st), err.message);
    failures++;
    return;
  }
  int32_t state = -1;
  CHECK_STATUS(polybus_connection_state(bus, &state, &err), POLYBUS_OK);
  CHECK(state == POLYBUS_STATE_CONNECTED);

  polybus_subscription_t *sub = NULL;
  CHECK_STATUS(polybus_subscribe_pull(bus, "orders.*", NULL, &sub, &err), POLYBUS_OK);
  polybus_header_t hdr = {polybus_str_from_cstr("tenant"), polybus_str_from_cstr("acme")};
  polybus_message_t m = message("orders.created", "{\"id\":1}");
  m.key = polybus_str_from_cstr("order-1");
  m.headers = &hdr;
  m.headers_len = 1;
  CHECK_STATUS(polybus_publish(bus, &m, NULL, &err), POLYBUS_OK);
  polybus_message_t other = message("orders.updated", "second");
  CHECK_STATUS(polybus_publish(bus, &other, NULL, &err), POLYBUS_OK);

  const char *want[2] = {"{\"id\":1}", "second"};
  int got = 0;
  while (got < 2) {
    polybus_event_batch_t b;
    st = polybus_subscription_next_batch(sub, wait_ms(), &b, &err);
    if (st != POLYBUS_OK) {
      fprintf(stderr, "%s: waiting for event %d: %s\n", url, got, polybus_status_name(st));
      failures++;
      break;
    }
    for (size_t i = 0; i < b.len && got < 2; i++, got++) {
      const polybus_event_t *e = &b.events[i];
      CHECK(e->payload.len == strlen(want[got]) &&
            memcmp(e->payload.ptr, want[got], e->payload.len) == 0);
      CHECK(e->attempt == 1);
      CHECK(str_is(e->source, "c-int"));
      CHECK(e->id.len == 36);
      if (got == 0) {
        CHECK(str_is(e->topic, "orders.created"));
        CHECK(str_is(e->key, "order-1"));
        int tenant = 0;
        for (size_t h = 0; h < e->headers_len; h++)
          tenant |= str_is(e->headers[h].name, "tenant") && str_is(e->headers[h].value, "acme");
        CHECK(tenant);
      } else {
        CHECK(str_is(e->topic, "orders.updated"));
        CHECK(e->key.ptr == NULL);
      }
    }
    CHECK_STATUS(polybus_batch_complete(b.batch, SIZE_MAX, NULL, &err), POLYBUS_OK);
  }
  CHECK(got == 2);

  CHECK_STATUS(polybus_subscription_close(sub, NULL, &err), POLYBUS_OK);
  polybus_subscription_free(sub);
  CHECK_STATUS(polybus_close(bus, NULL, &err), POLYBUS_OK);
  CHECK_STATUS(polybus_connection_state(bus, &state, &err), POLYBUS_OK);
  CHECK(state == POLYBUS_STATE_CLOSED);
  polybus_free(bus);
  printf("int_redis: round trip over %s\n", url);
}

/* Opens `url` with a redis section; the status, with the error in `err`. */
static polybus_status_t open_with(const char *url, const char *section, polybus_t **bus,
                                  polybus_error_t *err) {
  char config[512];
  snprintf(config, sizeof config, "{\"url\":\"%s\",\"connect_timeout_ms\":5000,\"redis\":%s}",
           url, section);
  *bus = (polybus_t *)1;
  memset(err, 0, sizeof *err);
  return polybus_open(config, NULL, bus, err);
}

/* The ACL server: the right credentials in the redis section connect; a wrong password and no
 * credentials at all (the default user is off) are POLYBUS_ERR_AUTH. */
static void test_acl(const char *url) {
  polybus_t *bus = NULL;
  polybus_error_t err;
  polybus_status_t st =
      open_with(url, "{\"username\":\"polybus\",\"password\":\"secret\"}", &bus, &err);
  if (st != POLYBUS_OK)
    fprintf(stderr, "%s: the right credentials: %s: %s\n", url, polybus_status_name(st),
            err.message);
  CHECK(st == POLYBUS_OK);
  if (st == POLYBUS_OK) {
    CHECK_STATUS(polybus_close(bus, NULL, &err), POLYBUS_OK);
    polybus_free(bus);
  }
  const char *refused[2] = {"{\"username\":\"polybus\",\"password\":\"wrong\"}", "{}"};
  for (int i = 0; i < 2; i++) {
    CHECK_STATUS(open_with(url, refused[i], &bus, &err), POLYBUS_ERR_AUTH);
    CHECK(bus == NULL);
    CHECK(err.code == POLYBUS_ERR_AUTH);
    CHECK(strlen(err.message) > 0);
    CHECK(strstr(err.message, "wrong") == NULL);
    printf("int_redis: refused on %s: %s\n", url, err.message);
  }
}

/* A closed loopback port: the open fails with a connection error or a timeout. */
static void test_unreachable(void) {
  polybus_t *bus = (polybus_t *)1;
  polybus_error_t err;
  memset(&err, 0, sizeof err);
  polybus_status_t st =
      polybus_open("{\"url\":\"redis://127.0.0.1:1\",\"connect_timeout_ms\":2000}", NULL, &bus, &err);
  CHECK(st == POLYBUS_ERR_CONNECTION || st == POLYBUS_ERR_TIMEOUT);
  CHECK(bus == NULL);
  CHECK(err.code == st);
  CHECK(strlen(err.message) > 0);
}

int main(void) {
  test_round_trip(env_or("POLYBUS_TEST_REDIS_URL", "redis://127.0.0.1:6390"));
  test_round_trip(env_or("POLYBUS_TEST_REDIS_PUBSUB_URL", "redis+pubsub://127.0.0.1:6390"));
  test_acl(env_or("POLYBUS_TEST_REDIS_ACL_URL", "redis://127.0.0.1:6391"));
  test_unreachable();
  if (failures) {
    fprintf(stderr, "int_redis: %d check(s) failed\n", failures);
    return 1;
  }
  printf("int_redis: all checks passed\n");
  return 0;
}
