/* The checks the C tests share: a failed check is reported and counted, never fatal. */
#ifndef POLYBUS_TEST_CHECK_H
#define POLYBUS_TEST_CHECK_H

#include <stdio.h>

#include "polybus.h"

static int failures = 0;
#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                              \
    }                                                                          \
  } while (0)
#define CHECK_STATUS(call, want)                                                 \
  do {                                                                           \
    polybus_status_t got_ = (call);                                              \
    if (got_ != (want)) {                                                        \
      fprintf(stderr, "%s:%d: %s returned %s, want %s\n", __FILE__, __LINE__,    \
              #call, polybus_status_name(got_), polybus_status_name(want));      \
      failures++;                                                                \
    }                                                                            \
  } while (0)

#endif /* POLYBUS_TEST_CHECK_H */
