/* The HTTP/1.1 client's response parser (core/http1_client.c), bytes in,
 * fields out: every response is also fed split at every byte, the way a
 * slow server's segments arrive, and must parse the same. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "lariat.h"

typedef struct {
  int rc;          /* 0 done, -1 failed, 1 still waiting */
  size_t used;     /* bytes of the input that belong to the response */
  lr_buf_t body;   /* all the body bytes, as the owner would take them */
} outcome_t;

/* feed resp in pieces of `step` bytes (0: all at once) as a connection's
 * buffer does: what the parser leaves unused comes again first */
static outcome_t run(lr_h1c_t *h, const char *resp, size_t len, size_t step, int eof, int take_body) {
  outcome_t o = {1, 0, {0}};
  size_t arrived = 0;
  lr_buf_t in = {0};
  while (!h->done && !h->failed) {
    size_t n = step && len - arrived > step ? step : len - arrived;
    lr_buf_append(&in, resp + arrived, n);
    arrived += n;
    for (;;) {
      size_t used;
      int r = lr_h1c_feed(h, in.base, in.len, &used);
      o.used += used;
      lr_buf_consume(&in, used);
      if (take_body && h->body.len) {
        lr_buf_append(&o.body, h->body.base, h->body.len);
        h->body.len = 0;
        continue;
      }
      if (r < 0 || used == 0 || in.len == 0) break;
    }
    if (arrived == len) break;
  }
  if (!h->done && !h->failed && eof) lr_h1c_eof(h);
  if (h->body.len) lr_buf_append(&o.body, h->body.base, h->body.len);
  o.rc = h->done ? 0 : h->failed ? -1 : 1;
  lr_buf_free(&in);
  return o;
}

static int field_is(const lr_h1c_t *h, unsigned i, const char *name, const char *value) {
  lr_str_t n = lr_h1c_header_name(h, i), v = lr_h1c_header_value(h, i);
  return i < h->n_headers && n.len == strlen(name) && memcmp(n.base, name, n.len) == 0 && v.len == strlen(value) &&
         (v.len == 0 || memcmp(v.base, value, v.len) == 0);
}

static int body_is(const outcome_t *o, const char *s) {
  return o->body.len == strlen(s) && (o->body.len == 0 || memcmp(o->body.base, s, o->body.len) == 0);
}

#define S(x) x, sizeof x - 1

/* each response at every split, plus at once */
static void every_split(const char *resp, size_t len, void (*check)(lr_h1c_t *, outcome_t *), int head_req, int eof) {
  for (size_t step = 0; step <= len; step++) {
    lr_h1c_t *h = calloc(1, sizeof *h);
    lr_h1c_init(h, head_req, 0, 0);
    outcome_t o = run(h, resp, len, step, eof, 1);
    check(h, &o);
    lr_buf_free(&o.body);
    lr_h1c_free(h);
    free(h);
  }
}

static const char plain[] = "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\n"
                            "Content-Length: 12\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n"
                            "X-Empty:\r\nX-Pad: \t v  \t\r\n\r\nHello world!EXTRA";
static void check_plain(lr_h1c_t *h, outcome_t *o) {
  CHECK(o->rc == 0);
  CHECK(o->used == sizeof plain - 1 - 5); /* EXTRA is not the response's */
  CHECK(h->status == 200 && h->version == 11 && h->keep_alive);
  CHECK(h->n_headers == 7 && h->n_trailers == 0);
  CHECK(field_is(h, 0, "server", "nginx"));
  CHECK(field_is(h, 1, "content-type", "text/plain"));
  CHECK(field_is(h, 3, "set-cookie", "a=1"));
  CHECK(field_is(h, 4, "set-cookie", "b=2"));
  CHECK(field_is(h, 5, "x-empty", ""));
  CHECK(field_is(h, 6, "x-pad", "v"));
  CHECK(body_is(o, "Hello world!"));
}

static const char chunked[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                              "5;name=value;other\r\nHello\r\n"
                              "7 ; ext\r\n world!\r\n"
                              "0\r\nX-Trail: done\r\nX-Sum: 1\r\n\r\n";
static void check_chunked(lr_h1c_t *h, outcome_t *o) {
  CHECK(o->rc == 0 && o->used == sizeof chunked - 1);
  CHECK(h->keep_alive && h->n_headers == 3 && h->n_trailers == 2);
  CHECK(field_is(h, 1, "x-trail", "done") && field_is(h, 2, "x-sum", "1"));
  CHECK(body_is(o, "Hello world!"));
}

static const char until_close[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close";
static void check_until_close(lr_h1c_t *h, outcome_t *o) {
  CHECK(o->rc == 0 && !h->keep_alive && body_is(o, "until the close"));
}

static const char http10[] = "HTTP/1.0 200 OK\n"
                             "Content-Length: 2\n\nok"; /* bare LF line ends too */
static void check_http10(lr_h1c_t *h, outcome_t *o) {
  CHECK(o->rc == 0 && h->version == 10 && !h->keep_alive && body_is(o, "ok"));
}

static const char http10_ka[] = "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok";
static void check_http10_ka(lr_h1c_t *h, outcome_t *o) {
  CHECK(o->rc == 0 && h->version == 10 && h->keep_alive && body_is(o, "ok"));
}

static const char interim[] = "HTTP/1.1 100 Continue\r\n\r\n"
                              "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                              "HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx";
static void check_interim(lr_h1c_t *h, outcome_t *o) {
  CHECK(o->rc == 0 && h->status == 201 && !h->keep_alive);
  CHECK(h->n_headers == 2 && field_is(h, 0, "connection", "close"));
  CHECK(body_is(o, "x"));
}

static const char head_resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n";
static void check_head(lr_h1c_t *h, outcome_t *o) {
  CHECK(o->rc == 0 && h->keep_alive && o->body.len == 0 && o->used == sizeof head_resp - 1);
}

static const char no_content[] = "HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n"; /* none follows */
static const char not_modified[] = "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n";
static void check_bodiless(lr_h1c_t *h, outcome_t *o) {
  CHECK(o->rc == 0 && h->keep_alive && o->body.len == 0);
}

static const char upgrade[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi";
static void check_upgrade(lr_h1c_t *h, outcome_t *o) {
  CHECK(o->rc == 0 && h->status == 101 && !h->keep_alive);
  CHECK(o->used == sizeof upgrade - 1 - 4); /* the frames stay for the tunnel */
}

static const char status_variants[][40] = {
    "HTTP/1.1 200\r\n\r\n", "HTTP/1.1 200 \r\n\r\n", "HTTP/1.1 599 Whatever It Is\r\n\r\n",
    "HTTP/1.1 200 caf\xc3\xa9\r\n\r\n", "\r\nHTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 200 OK\n\n",
};

static const char *invalid[] = {
    "HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",          /* obs-fold */
    "HTTP/1.1 200 OK\r\nX-A : 1\r\n\r\n",                     /* space before the colon */
    "HTTP/1.1 200 OK\r\n X-A: 1\r\n\r\n",                     /* space before the first field */
    "HTTP/1.1 200 OK\r\nX\x80" "A: 1\r\n\r\n",                  /* not visible ASCII */
    "HTTP/1.1 200 OK\r\nX\x01" "A: 1\r\n\r\n",                  /* a CTL in a name */
    "HTTP/1.1 200 OK\r\nX-Long-Name-Here\x7f: 1\r\n\r\n",     /* DEL past the first 8 bytes */
    "HTTP/1.1 200 OK\r\nX-A: 1\r2\r\n\r\n",                   /* CR inside a value */
    "HTTP/1.1 200 OK\r\nX-A: 1\x01\r\n\r\n",                  /* CTL inside a value */
    "HTTP/1.1 200 OK\r\nX-A: 12345678\x7f" "9\r\n\r\n",       /* DEL, past the first 8 bytes */
    "HTTP/1.1 200 OK\r\nX-A\r\n\r\n",                         /* no colon */
    "HTTP/1.1 200 OK\r\n: 1\r\n\r\n",                         /* no name */
    "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\nx",
    "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1 x\r\nx\r\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy\r\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T : 1\r\n\r\n",
    "HTTP/2 200\r\n\r\n", "HTTP/1.1 20\r\n\r\n", "HTTP/1.1 200OK\r\n\r\n", "HTTP/1.1 099 Low\r\n\r\n",
    "ICY 200 OK\r\n\r\n", "HTTP/1.1  200 OK\r\n\r\n", "HTTP/1.1 200 O\x01K\r\n\r\n", "<html>\r\n",
};

static void test_invalid(void) {
  for (size_t i = 0; i < sizeof invalid / sizeof *invalid; i++) {
    size_t len = strlen(invalid[i]);
    for (size_t step = 0; step <= len; step++) {
      lr_h1c_t *h = calloc(1, sizeof *h);
      lr_h1c_init(h, 0, 0, 0);
      outcome_t o = run(h, invalid[i], len, step, 1, 1);
      if (o.rc != -1) fprintf(stderr, "accepted invalid response %zu at step %zu\n", i, step);
      CHECK(o.rc == -1);
      lr_buf_free(&o.body);
      lr_h1c_free(h);
      free(h);
    }
  }
}

/* a head past 64 KiB fails once it is past, however it arrives: memory stays bounded */
static void test_huge_head(void) {
  size_t len = 70 * 1024;
  char *resp = malloc(len);
  memcpy(resp, "HTTP/1.1 200 OK\r\nX-Big: ", 24);
  memset(resp + 24, 'a', len - 24);
  size_t steps[] = {0, 1, 1000};
  for (size_t k = 0; k < 3; k++) {
    lr_h1c_t *h = calloc(1, sizeof *h);
    lr_h1c_init(h, 0, 0, 0);
    outcome_t o = run(h, resp, len, steps[k], 0, 1);
    CHECK(o.rc == -1);
    CHECK(h->head.cap <= 2 * LR_H1C_HEAD_MAX);
    lr_h1c_free(h);
    free(h);
  }
  /* many small fields: the same bound */
  size_t n = 0;
  memcpy(resp, "HTTP/1.1 200 OK\r\n", 17);
  n = 17;
  while (n + 12 < len) {
    memcpy(resp + n, "X-Ab: cdef\r\n", 12);
    n += 12;
  }
  lr_h1c_t *h = calloc(1, sizeof *h);
  lr_h1c_init(h, 0, 0, 0);
  outcome_t o = run(h, resp, n, 0, 0, 1);
  CHECK(o.rc == -1); /* past LR_H1C_MAX_HEADERS long before 64 KiB */
  lr_h1c_free(h);
  free(h);
  free(resp);
}

static void test_bodies(void) {
  size_t sizes[] = {0, 1, 2 * 1024 * 1024};
  for (size_t k = 0; k < 3; k++) {
    size_t bl = sizes[k];
    char head[128];
    int hl = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", bl);
    char *resp = malloc((size_t)hl + bl);
    memcpy(resp, head, (size_t)hl);
    for (size_t i = 0; i < bl; i++) resp[hl + (int)i] = (char)('a' + i % 26);
    for (int stream = 0; stream < 2; stream++) {
      lr_h1c_t *h = calloc(1, sizeof *h);
      lr_h1c_init(h, 0, stream, 0);
      outcome_t o = run(h, resp, (size_t)hl + bl, 65536, 0, stream);
      CHECK(o.rc == 0 && o.body.len == bl && (bl == 0 || memcmp(o.body.base, resp + hl, bl) == 0));
      CHECK(h->body_total == bl);
      lr_buf_free(&o.body);
      lr_h1c_free(h);
      free(h);
    }
    /* stream mode holds at most 256 KiB ahead of the owner: the rest stays unused */
    lr_h1c_t *h = calloc(1, sizeof *h);
    lr_h1c_init(h, 0, 1, 0);
    size_t used;
    CHECK(lr_h1c_feed(h, resp, (size_t)hl + bl, &used) == 0);
    CHECK(h->headers_done && h->body.len <= 256 * 1024 && used == (size_t)hl + h->body.len);
    lr_h1c_free(h);
    free(h);
    free(resp);
  }
  /* max_body: past it, too big */
  lr_h1c_t *h = calloc(1, sizeof *h);
  lr_h1c_init(h, 0, 0, 10);
  outcome_t o = run(h, S("HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"), 3, 0, 1);
  CHECK(o.rc == -1 && h->too_big);
  lr_buf_free(&o.body);
  lr_h1c_init(h, 0, 0, 11); /* reused: the same buffers, a clean state */
  o = run(h, S("HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"), 3, 0, 1);
  CHECK(o.rc == 0 && !h->too_big && body_is(&o, "hello world"));
  lr_buf_free(&o.body);
  /* truncated: the close before the end is no response */
  lr_h1c_init(h, 0, 0, 0);
  o = run(h, S("HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello"), 0, 1, 1);
  CHECK(o.rc == 1 && lr_h1c_eof(h) < 0);
  lr_buf_free(&o.body);
  lr_h1c_free(h);
  free(h);
}

int main(void) {
  every_split(S(plain), check_plain, 0, 0);
  every_split(S(chunked), check_chunked, 0, 0);
  every_split(S(until_close), check_until_close, 0, 1);
  every_split(S(http10), check_http10, 0, 0);
  every_split(S(http10_ka), check_http10_ka, 0, 0);
  every_split(S(interim), check_interim, 0, 0);
  every_split(S(head_resp), check_head, 1, 0);
  every_split(S(no_content), check_bodiless, 0, 0);
  every_split(S(not_modified), check_bodiless, 0, 0);
  every_split(S(upgrade), check_upgrade, 0, 0);
  for (size_t i = 0; i < sizeof status_variants / sizeof *status_variants; i++) {
    lr_h1c_t *h = calloc(1, sizeof *h);
    lr_h1c_init(h, 1, 0, 0);
    outcome_t o = run(h, status_variants[i], strlen(status_variants[i]), 0, 0, 1);
    if (o.rc != 0) fprintf(stderr, "refused status line %zu\n", i);
    CHECK(o.rc == 0 && h->status >= 200);
    lr_h1c_free(h);
    free(h);
  }
  test_invalid();
  test_huge_head();
  test_bodies();
  return CHECK_DONE();
}
