/* The C API against Apache Kafka: a round trip over kafka:// (through a wildcard, so over
 * topics created after the subscription), SASL with the right and a wrong password, and an
 * unreachable broker. Needs the broker of tests/harness/setup.sh; a missing broker fails the test.
 *
 *   POLYBUS_TEST_KAFKA_URL       default kafka://127.0.0.1:9092
 *   POLYBUS_TEST_KAFKA_SASL_URL  default kafka://127.0.0.1:9093 (user polybus, password secret)
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
  printf("int_kafka: round trip over %s\n", url);
}

/* The SASL listener: the right password connects (PLAIN and SCRAM), a wrong one is
 * POLYBUS_ERR_AUTH with the broker's reason. */
static void test_sasl(const char *url, const char *mechanism) {
  char config[512];
  polybus_t *bus = NULL;
  polybus_error_t err;
  snprintf(config, sizeof config,
           "{\"url\":\"%s\",\"connect_timeout_ms\":5000,\"kafka\":{\"sasl_mechanism\":\"%s\","
           "\"username\":\"polybus\",\"password\":\"secret\"}}",
           url, mechanism);
  polybus_status_t st = polybus_open(config, NULL, &bus, &err);
  if (st != POLYBUS_OK)
    fprintf(stderr, "%s: polybus_open with the right password: %s: %s\n", url,
            polybus_status_name(st), err.message);
  CHECK(st == POLYBUS_OK);
  CHECK_STATUS(polybus_close(bus, NULL, &err), POLYBUS_OK);
  polybus_free(bus);

  bus = (polybus_t *)1;
  memset(&err, 0, sizeof err);
  snprintf(config, sizeof config,
           "{\"url\":\"%s\",\"connect_timeout_ms\":5000,\"kafka\":{\"sasl_mechanism\":\"%s\","
           "\"username\":\"polybus\",\"password\":\"wrong\"}}",
           url, mechanism);
  CHECK_STATUS(polybus_open(config, NULL, &bus, &err), POLYBUS_ERR_AUTH);
  CHECK(bus == NULL);
  CHECK(err.code == POLYBUS_ERR_AUTH);
  CHECK(strstr(err.message, "uthentication") != NULL);
  CHECK(strstr(err.message, "wrong") == NULL);
  printf("int_kafka: wrong %s password on %s: %s\n", mechanism, url, err.message);
}

/* A closed loopback port: the open fails with a connection error or a timeout, in bounded time. */
static void test_unreachable(void) {
  polybus_t *bus = (polybus_t *)1;
  polybus_error_t err;
  memset(&err, 0, sizeof err);
  time_t started = time(NULL);
  polybus_status_t st =
      polybus_open("{\"url\":\"kafka://127.0.0.1:1\",\"connect_timeout_ms\":2000}", NULL, &bus, &err);
  CHECK(st == POLYBUS_ERR_CONNECTION || st == POLYBUS_ERR_TIMEOUT);
  CHECK(bus == NULL);
  CHECK(err.code == st);
  CHECK(strstr(err.message, "127.0.0.1:1") != NULL);
  CHECK(time(NULL) - started < 6);
  printf("int_kafka: unreachable: %s: %s\n", polybus_status_name(st), err.message);
}

int main(void) {
  test_round_trip(env_or("POLYBUS_TEST_KAFKA_URL", "kafka://127.0.0.1:9092"));
  const char *sasl = env_or("POLYBUS_TEST_KAFKA_SASL_URL", "kafka://127.0.0.1:9093");
  test_sasl(sasl, "PLAIN");
  test_sasl(sasl, "SCRAM-SHA-256");
  test_unreachable();
  if (failures) {
    fprintf(stderr, "int_kafka: %d check(s) failed\n", failures);
    return 1;
  }
  printf("int_kafka: all checks passed\n");
  return 0;
}
