/* Buffers: growable byte buffers, per-stream arenas built from recycled blocks,
 * and the output queue of a connection. */
#include <stdlib.h>
#include <string.h>

#include "lariat.h"

int lr_buf_reserve(lr_buf_t *b, size_t extra) {
  if (b->cap - b->len >= extra) return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap - b->len < extra) cap *= 2;
  char *p = realloc(b->base, cap);
  if (p == NULL) return UV_ENOMEM;
  b->base = p;
  b->cap = cap;
  return 0;
}

int lr_buf_append(lr_buf_t *b, const void *p, size_t n) {
  if (n == 0) return 0;
  int r = lr_buf_reserve(b, n);
  if (r) return r;
  memcpy(b->base + b->len, p, n);
  b->len += n;
  return 0;
}

void lr_buf_consume(lr_buf_t *b, size_t n) {
  if (n >= b->len) {
    b->len = 0;
    return;
  }
  memmove(b->base, b->base + n, b->len - n);
  b->len -= n;
}

void lr_buf_free(lr_buf_t *b) {
  free(b->base);
  b->base = NULL;
  b->len = b->cap = 0;
}

/* ---- arena ---- */

#define LR_MAX_FREE_BLOCKS 1024 /* one per request in flight: an h2 worker has hundreds */

static lr_block_t *block_get(lr_worker_t *w, size_t need) {
  if (need <= LR_BLOCK_SIZE - sizeof(lr_block_t) && w->free_blocks) {
    lr_block_t *b = w->free_blocks;
    w->free_blocks = b->next;
    w->n_free_blocks--;
    return b;
  }
  size_t size = LR_BLOCK_SIZE - sizeof(lr_block_t);
  if (need > size) size = need;
  lr_block_t *b = malloc(sizeof(lr_block_t) + size);
  if (b) b->size = size;
  return b;
}

void *lr_pool_alloc(lr_worker_t *w, lr_pool_t *p, size_t n) {
  n = (n + 7) & ~(size_t)7;
  if (p->head == NULL || p->head->size - p->used < n) {
    lr_block_t *b = block_get(w, n);
    if (b == NULL) return NULL;
    b->next = p->head;
    p->head = b;
    p->used = 0;
  }
  void *r = (char *)(p->head + 1) + p->used;
  p->used += n;
  return r;
}

char *lr_pool_strdup(lr_worker_t *w, lr_pool_t *p, const char *s, size_t n) {
  char *d = lr_pool_alloc(w, p, n + 1);
  if (d == NULL) return NULL;
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}

void lr_pool_clear(lr_worker_t *w, lr_pool_t *p) {
  lr_block_t *b = p->head;
  while (b) {
    lr_block_t *next = b->next;
    if (b->size == LR_BLOCK_SIZE - sizeof(lr_block_t) && w && w->n_free_blocks < LR_MAX_FREE_BLOCKS) {
      b->next = w->free_blocks;
      w->free_blocks = b;
      w->n_free_blocks++;
    } else {
      free(b);
    }
    b = next;
  }
  p->head = NULL;
  p->used = 0;
}
