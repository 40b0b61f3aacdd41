/* A minimal test harness: CHECK records a failure and goes on; main returns
 * the failure count so ctest sees it. */
#ifndef LR_CHECK_H
#define LR_CHECK_H
#include <stdio.h>

static int check_failures;
#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      check_failures++;                                                    \
    }                                                                      \
  } while (0)
#define CHECK_DONE() (check_failures ? (fprintf(stderr, "%d checks failed\n", check_failures), 1) : 0)
#endif
