/* The C API against NATS: round trips over nats:// and jetstream://, connection state, a wrong
 * password and an unreachable server. Needs the brokers of tests/harness/setup.sh; a missing
 * broker fails the test.
 *
 *   POLYBUS_TEST_NATS_URL       default nats://127.0.0.1:4222
 *   POLYBUS_TEST_JETSTREAM_URL  default jetstream://127.0.0.1:4222
 *   POLYBUS_TEST_NATS_AUTH_URL  default nats://127.0.0.1:4223 (user polybus, password secret)
 */
#include "polybus.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
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
  printf("int_nats: round trip over %s\n", url);
}

/* The authenticating server: the right password connects, a wrong one is POLYBUS_ERR_AUTH. */
static void test_auth(const char *url) {
  char config[512];
  polybus_t *bus = NULL;
  polybus_error_t err;
  snprintf(config, sizeof config,
           "{\"url\":\"%s\",\"connect_timeout_ms\":5000,"
           "\"nats\":{\"user\":\"polybus\",\"password\":\"secret\"}}",
           url);
  polybus_status_t st = polybus_open(config, NULL, &bus, &err);
  if (st != POLYBUS_OK)
    fprintf(stderr, "%s: polybus_open with the right password: %s: %s\n", url,
            polybus_status_name(st), err.message);
  CHECK(st == POLYBUS_OK);
  polybus_free(bus);

  bus = (polybus_t *)1;
  memset(&err, 0, sizeof err);
  snprintf(config, sizeof config,
           "{\"url\":\"%s\",\"connect_timeout_ms\":5000,"
           "\"nats\":{\"user\":\"polybus\",\"password\":\"wrong\"}}",
           url);
  CHECK_STATUS(polybus_open(config, NULL, &bus, &err), POLYBUS_ERR_AUTH);
  CHECK(bus == NULL);
  CHECK(err.code == POLYBUS_ERR_AUTH);
  CHECK(strlen(err.message) > 0);
  printf("int_nats: wrong password on %s: %s\n", url, err.message);
}

/* A closed loopback port: the open fails with a connection error or a timeout, and returns. */
static void test_unreachable(const char *url) {
  char config[256];
  snprintf(config, sizeof config, "{\"url\":\"%s\",\"connect_timeout_ms\":2000}", url);
  polybus_t *bus = (polybus_t *)1;
  polybus_error_t err;
  memset(&err, 0, sizeof err);
  polybus_status_t st = polybus_open(config, NULL, &bus, &err);
  CHECK(st == POLYBUS_ERR_CONNECTION || st == POLYBUS_ERR_TIMEOUT);
  CHECK(bus == NULL);
  CHECK(err.code == st);
  CHECK(strlen(err.message) > 0);
  printf("int_nats: %s unreachable: %s: %s\n", url, polybus_status_name(st), err.message);
}

typedef struct {
  polybus_cancel_t *cancel;
  int fd;
  int accepted;
} silent_t;

/* Fires the handle once the bus has connected to the silent server. The accepted connection
 * stays open (closing it would fail the open by itself) until the open has returned. */
static void *cancel_when_connected(void *arg) {
  silent_t *s = (silent_t *)arg;
  s->accepted = accept(s->fd, NULL, NULL);
  polybus_cancel(s->cancel);
  return NULL;
}

/* A server that accepts and never speaks: the open waits for its greeting until cancelled,
 * not for the 60 s connect timeout. */
static void test_open_cancelled(void) {
  silent_t s;
  s.accepted = -1;
  s.fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(s.fd, (struct sockaddr *)&addr, sizeof addr) == 0);
  CHECK(listen(s.fd, 4) == 0);
  socklen_t len = sizeof addr;
  CHECK(getsockname(s.fd, (struct sockaddr *)&addr, &len) == 0);
  char config[160];
  snprintf(config, sizeof config,
           "{\"url\":\"nats://127.0.0.1:%d\",\"connect_timeout_ms\":60000}", ntohs(addr.sin_port));
  polybus_error_t err;
  CHECK_STATUS(polybus_cancel_new(-1, &s.cancel, &err), POLYBUS_OK);
  pthread_t t;
  pthread_create(&t, NULL, cancel_when_connected, &s);
  polybus_t *bus = (polybus_t *)&s; /* set to NULL by the failed open */
  CHECK_STATUS(polybus_open(config, s.cancel, &bus, &err), POLYBUS_ERR_CANCELLED);
  CHECK(bus == NULL);
  CHECK(strcmp(err.message, "cancelled: connect") == 0);
  pthread_join(t, NULL);
  polybus_cancel_free(s.cancel);
  if (s.accepted >= 0) close(s.accepted);
  close(s.fd);
}

int main(void) {
  test_round_trip(env_or("POLYBUS_TEST_NATS_URL", "nats://127.0.0.1:4222"));
  test_round_trip(env_or("POLYBUS_TEST_JETSTREAM_URL", "jetstream://127.0.0.1:4222"));
  test_auth(env_or("POLYBUS_TEST_NATS_AUTH_URL", "nats://127.0.0.1:4223"));
  test_unreachable("nats://127.0.0.1:1");
  test_unreachable("jetstream://127.0.0.1:1");
  test_open_cancelled();
  if (failures) {
    fprintf(stderr, "int_nats: %d check(s) failed\n", failures);
    return 1;
  }
  printf("int_nats: all checks passed\n");
  return 0;
}
