/* Stream arenas: aligned allocations, big requests, blocks recycled per worker. */
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "lariat.h"

int main(void) {
  lr_worker_t w;
  memset(&w, 0, sizeof w);
  lr_pool_t p = {0};
  char *a = lr_pool_alloc(&w, &p, 3);
  char *b = lr_pool_alloc(&w, &p, 5);
  CHECK(a && b && b - a == 8); /* 8-byte aligned, same block */
  CHECK(((uintptr_t)b & 7) == 0);
  char *big = lr_pool_alloc(&w, &p, 100000); /* larger than a block: its own allocation */
  CHECK(big != NULL);
  memset(big, 1, 100000);
  char *s = lr_pool_strdup(&w, &p, "hello", 5);
  CHECK(strcmp(s, "hello") == 0);
  lr_pool_clear(&w, &p);
  CHECK(p.head == NULL);
  CHECK(w.n_free_blocks == 2); /* standard blocks are kept, the big one freed */
  char *again = lr_pool_alloc(&w, &p, 16);
  CHECK(again != NULL && w.n_free_blocks == 1); /* reused, not malloc'ed */
  lr_pool_clear(&w, &p);
  while (w.free_blocks) {
    lr_block_t *n = w.free_blocks->next;
    free(w.free_blocks);
    w.free_blocks = n;
  }

  lr_buf_t buf = {0};
  CHECK(lr_buf_append(&buf, "abcdef", 6) == 0);
  lr_buf_consume(&buf, 2);
  CHECK(buf.len == 4 && memcmp(buf.base, "cdef", 4) == 0);
  lr_buf_free(&buf);
  return CHECK_DONE();
}
