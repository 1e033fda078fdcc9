/* Opens, uses and releases buses and subscriptions many times; valgrind must find no leak. */
#include "polybus.h"

#include <stdio.h>
#include <string.h>

static int32_t ack(const polybus_event_t *e, void *ctx) {
  (void)e;
  (*(int *)ctx)++;
  return 0;
}

int main(void) {
  int handled = 0;
  for (int round = 0; round < 20; round++) {
    polybus_t *bus = NULL;
    polybus_error_t err;
    if (polybus_open("memory://", NULL, &bus, &err) != POLYBUS_OK) {
      fprintf(stderr, "open: %s\n", err.message);
      return 1;
    }
    polybus_handler_t h = {&handled, ack, NULL};
    polybus_subscription_t *cb = NULL, *pull = NULL;
    polybus_subscribe(bus, "leak.*", NULL, h, &cb, &err);
    polybus_subscribe_pull(bus, "leak.>", NULL, &pull, &err);
    polybus_message_t m;
    memset(&m, 0, sizeof m);
    m.topic = polybus_str_from_cstr("leak.test");
    m.payload.ptr = (const uint8_t *)"payload";
    m.payload.len = 7;
    for (int i = 0; i < 10; i++) polybus_publish(bus, &m, NULL, &err);
    polybus_event_batch_t b;
    int pulled = 0;
    while (pulled < 10 && polybus_subscription_next_batch(pull, 5000, &b, &err) == POLYBUS_OK) {
      pulled += (int)b.len;
      polybus_batch_complete(b.batch, SIZE_MAX, NULL, &err);
    }
    /* error paths allocate messages too */
    polybus_message_t bad = m;
    bad.topic = polybus_str_from_cstr("bad..topic");
    polybus_publish(bus, &bad, NULL, &err);
    polybus_subscription_free(cb);
    polybus_subscription_free(pull);
    polybus_free(bus);
    if (pulled != 10) {
      fprintf(stderr, "round %d: pulled %d of 10\n", round, pulled);
      return 1;
    }
  }
  if (handled != 200) {
    fprintf(stderr, "handled %d of 200\n", handled);
    return 1;
  }
  printf("leak_cycles: 20 rounds\n");
  return 0;
}
