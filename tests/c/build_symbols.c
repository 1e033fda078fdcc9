/* References every exported function, so a dropped export breaks the link. */
#include "polybus.h"

#include <stdio.h>

int main(void) {
  typedef void (*fn_t)(void);
  const fn_t symbols[] = {
    (fn_t)&polybus_abi_version,
    (fn_t)&polybus_batch_complete,
    (fn_t)&polybus_queue_new,
    (fn_t)&polybus_queue_next_batch,
    (fn_t)&polybus_queue_close,
    (fn_t)&polybus_queue_free,
    (fn_t)&polybus_subscribe_queue,
    (fn_t)&polybus_subscription_stop,
    (fn_t)&polybus_batch_free,
    (fn_t)&polybus_cancel,
    (fn_t)&polybus_cancel_expire,
    (fn_t)&polybus_cancel_free,
    (fn_t)&polybus_cancel_new,
    (fn_t)&polybus_close,
    (fn_t)&polybus_connection_state,
    (fn_t)&polybus_connection_state_wait,
    (fn_t)&polybus_free,
    (fn_t)&polybus_open,
    (fn_t)&polybus_publish,
    (fn_t)&polybus_publish_batch,
    (fn_t)&polybus_stats,
    (fn_t)&polybus_status_name,
    (fn_t)&polybus_status_str,
    (fn_t)&polybus_str_from_cstr,
    (fn_t)&polybus_subscribe,
    (fn_t)&polybus_subscribe_options_default,
    (fn_t)&polybus_subscribe_pull,
    (fn_t)&polybus_subscription_close,
    (fn_t)&polybus_subscription_free,
    (fn_t)&polybus_subscription_next_batch,
    (fn_t)&polybus_version,
  };
  printf("build_symbols: %zu exports linked\n", sizeof symbols / sizeof symbols[0]);
  return 0;
}
