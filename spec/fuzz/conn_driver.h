/* The connection driver shared by the protocol fuzzers: one real worker (uv
 * loop, access log on), one connection per input over a socketpair, and an app
 * that answers at once. See conn_driver.c. */
#ifndef LR_FUZZ_CONN_DRIVER_H
#define LR_FUZZ_CONN_DRIVER_H

#include <stddef.h>
#include <stdint.h>

/* Feed prefix then data to a fresh connection, in pieces whose sizes the
 * data's first byte picks, then hang up; returns once the connection and every
 * stream of it are gone (aborts if they never go: a leak of the core). */
void lr_fuzz_conn_run(const char *prefix, size_t plen, const uint8_t *data, size_t size);

#endif
