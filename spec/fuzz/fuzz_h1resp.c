/* The HTTP/1.1 client's response parser (core/http1_client.c) on its own:
 * input byte 0 picks the piece size, byte 1 the mode (HEAD request, stream,
 * a max_body), the rest is what an upstream sends. Fed as a connection's
 * buffer feeds it (what it leaves unused comes again first), then the close.
 * Checks the bounds the owner relies on, besides ASan/UBSan's. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lariat.h"

#define CHECK(c) \
  do {           \
    if (!(c)) abort(); \
  } while (0)

static void check_fields(const lr_h1c_t *h) {
  CHECK(h->n_headers <= LR_H1C_MAX_HEADERS && h->n_trailers <= h->n_headers);
  for (unsigned i = 0; i < h->n_headers; i++) {
    lr_str_t n = lr_h1c_header_name(h, i), v = lr_h1c_header_value(h, i);
    CHECK(n.len > 0 && n.base + n.len <= h->head.base + h->head.len);
    CHECK(v.base + v.len <= h->head.base + h->head.len);
    for (size_t j = 0; j < n.len; j++) CHECK(n.base[j] > ' ' && n.base[j] != ':' && !(n.base[j] >= 'A' && n.base[j] <= 'Z'));
    for (size_t j = 0; j < v.len; j++) CHECK(v.base[j] != '\r' && v.base[j] != '\n' && v.base[j] != 0);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  size_t step = data[0] ? data[0] : 1;
  int mode = data[1];
  data += 2;
  size -= 2;
  static lr_h1c_t h; /* reused like an exchange's: buffers kept, state reset */
  lr_h1c_init(&h, mode & 1, (mode >> 1) & 1, (mode & 4) ? (uint64_t)(mode >> 3) * 97 : 0);
  lr_buf_t in = {0};
  size_t arrived = 0;
  while (arrived < size && !h.done && !h.failed) {
    size_t n = size - arrived < step ? size - arrived : step;
    lr_buf_append(&in, data + arrived, n);
    arrived += n;
    for (;;) {
      size_t used;
      int r = lr_h1c_feed(&h, in.base, in.len, &used);
      CHECK(used <= in.len);
      CHECK(r == 0 || h.failed);
      lr_buf_consume(&in, used);
      CHECK(!h.stream || h.body.len <= 256 * 1024);
      CHECK(h.head.len <= LR_H1C_HEAD_MAX);
      if (h.body.len && (mode & 2)) { /* the owner takes body bytes as they come */
        h.body.len = 0;
        continue;
      }
      if (r < 0 || used == 0 || in.len == 0) break;
    }
  }
  if (!h.done && !h.failed) lr_h1c_eof(&h);
  check_fields(&h);
  CHECK(!h.done || h.headers_done);
  CHECK(!h.max_body || h.body_total <= h.max_body || h.too_big);
  lr_buf_free(&in);
  return 0;
}
