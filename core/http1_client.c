/* HTTP/1.1, client side: the request head out, the response in through
 * llhttp in response mode (the server side's parser, the other way round).
 * The exchange's owner feeds it what the connection read and takes body
 * bytes as they come: at most LR_H1C_BODY_MAX wait here, the rest stays in
 * the connection's buffer, whose reading pauses in turn (back-pressure). */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lariat.h"

#define BODY_MAX (256 * 1024)

static lr_h1c_t *H(llhttp_t *p) { return LR_CONTAINER_OF(p, lr_h1c_t, parser); }

static int on_status_complete(llhttp_t *p) {
  H(p)->status = p->status_code;
  return 0;
}

/* names and values arrive in pieces: they are appended to head; a header
 * starts when a name piece follows a value piece */
static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  lr_h1c_t *h = H(p);
  if (h->n_headers == 0 || h->in_value) {
    if (h->n_headers == LR_H1C_MAX_HEADERS) return -1;
    h->hdr[h->n_headers++] = (lr_h1c_header_t){h->head.len, 0, 0, 0};
    h->in_value = 0;
    if (h->headers_done) h->n_trailers++; /* after the body: the chunked trailer section */
  }
  if (lr_buf_append(&h->head, at, len)) return -1;
  h->hdr[h->n_headers - 1].name_len += len;
  if (h->head.len > LR_H1C_HEAD_MAX) return -1;
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  lr_h1c_t *h = H(p);
  if (h->n_headers == 0) return -1;
  lr_h1c_header_t *x = &h->hdr[h->n_headers - 1];
  if (!h->in_value) {
    x->value_off = h->head.len;
    h->in_value = 1;
  }
  if (lr_buf_append(&h->head, at, len)) return -1;
  x->value_len += len;
  if (h->head.len > LR_H1C_HEAD_MAX) return -1;
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  lr_h1c_t *h = H(p);
  h->status = p->status_code;
  if (h->status >= 100 && h->status < 200 && h->status != 101) return 0; /* interim: more follows */
  h->headers_done = 1;
  h->version = p->http_major * 10 + p->http_minor;
  /* a response to HEAD has no body whatever its headers say (RFC 9110 §9.3.2); nor a 101 here */
  return h->head_req || h->status == 101 ? 1 : 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  lr_h1c_t *h = H(p);
  h->body_total += len;
  if (h->max_body && h->body_total > h->max_body) {
    h->too_big = 1;
    return -1;
  }
  return lr_buf_append(&h->body, at, len) ? -1 : 0;
}

static int on_message_complete(llhttp_t *p) {
  lr_h1c_t *h = H(p);
  if (!h->headers_done) { /* an interim response (100 Continue, 103): forget it */
    h->n_headers = 0;
    h->head.len = 0;
    h->in_value = 0;
    return 0;
  }
  h->done = 1;
  h->keep_alive = llhttp_should_keep_alive(p);
  return HPE_PAUSED; /* anything after the response is not ours */
}

static const llhttp_settings_t settings = {
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_status_complete = on_status_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void lr_h1c_init(lr_h1c_t *h, int head_req, int stream, uint64_t max_body) {
  lr_buf_t head = h->head, body = h->body;
  memset(h, 0, offsetof(lr_h1c_t, hdr)); /* hdr: 3 KiB nobody reads past n_headers */
  h->head = head;
  h->body = body;
  h->head.len = h->body.len = 0;
  h->head_req = head_req;
  h->stream = stream;
  h->max_body = max_body;
  llhttp_init(&h->parser, HTTP_RESPONSE, &settings);
}

void lr_h1c_free(lr_h1c_t *h) {
  lr_buf_free(&h->head);
  lr_buf_free(&h->body);
}

int lr_h1c_feed(lr_h1c_t *h, const char *data, size_t len, size_t *used) {
  *used = 0;
  if (h->done || h->failed) return h->failed ? -1 : 0;
  if (h->stream) {
    if (h->body.len >= BODY_MAX) return 0; /* the owner takes body bytes first */
    size_t room = BODY_MAX - h->body.len;
    if (len > room) len = room;
  }
  llhttp_errno_t e = llhttp_execute(&h->parser, data, len);
  if (e == HPE_OK) {
    *used = len;
    return 0;
  }
  if ((e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) && h->done) {
    *used = (size_t)(llhttp_get_error_pos(&h->parser) - data);
    return 0;
  }
  h->failed = 1;
  return -1;
}

int lr_h1c_eof(lr_h1c_t *h) {
  if (h->done) return 0;
  if (!h->failed && h->headers_done && llhttp_message_needs_eof(&h->parser) && llhttp_finish(&h->parser) == HPE_OK) {
    h->done = 1;
    h->keep_alive = 0;
    return 0;
  }
  if (h->done) return 0;
  return -1;
}

int lr_h1c_add_header(lr_h1c_t *h, const char *name, size_t nlen, const char *value, size_t vlen) {
  if (h->n_headers == LR_H1C_MAX_HEADERS || h->head.len + nlen + vlen > LR_H1C_HEAD_MAX) return -1;
  lr_h1c_header_t *x = &h->hdr[h->n_headers];
  x->name_off = h->head.len;
  x->name_len = nlen;
  if (lr_buf_append(&h->head, name, nlen)) return -1;
  x->value_off = h->head.len;
  x->value_len = vlen;
  if (lr_buf_append(&h->head, value, vlen)) return -1;
  h->n_headers++;
  return 0;
}

lr_str_t lr_h1c_header_name(const lr_h1c_t *h, unsigned i) {
  return (lr_str_t){h->head.base + h->hdr[i].name_off, h->hdr[i].name_len};
}

lr_str_t lr_h1c_header_value(const lr_h1c_t *h, unsigned i) {
  return (lr_str_t){h->head.base + h->hdr[i].value_off, h->hdr[i].value_len};
}

static int framing(const lr_header_t *x) {
  return (x->name.len == 14 && strncasecmp(x->name.base, "content-length", 14) == 0) ||
         (x->name.len == 17 && strncasecmp(x->name.base, "transfer-encoding", 17) == 0);
}

static char *put(char *p, const char *s, size_t n) {
  if (n) memcpy(p, s, n); /* an empty value may have no base */
  return p + n;
}

/* the request head, written straight into the connection's output queue
 * (measured first: no buffer of its own, no second copy); body_len < 0:
 * a chunked body follows (lr_h1c_write_chunk) */
int lr_h1c_write_head(lr_client_t *cl, const char *method, const char *target, const char *host,
                      const lr_header_t *hd, size_t n, int64_t body_len) {
  if (cl->state != LR_CL_OPEN || (cl->conn.flags & LR_CF_CLOSING)) return LR_ECLOSED;
  size_t ml = strlen(method), tl = strlen(target), hl = strlen(host);
  size_t total = ml + 1 + tl + 11 + 2;
  int has_host = 0;
  for (size_t i = 0; i < n; i++) {
    const lr_header_t *x = &hd[i];
    if (x->name.len == 4 && strncasecmp(x->name.base, "host", 4) == 0) has_host = 1;
    if (!framing(x)) total += x->name.len + 2 + x->value.len + 2;
  }
  if (!has_host) total += 6 + hl + 2;
  char cl_line[48];
  size_t cll = 0;
  if (body_len < 0) {
    memcpy(cl_line, "transfer-encoding: chunked\r\n", cll = 28);
  } else if (body_len > 0 || (strcmp(method, "GET") && strcmp(method, "HEAD") && strcmp(method, "DELETE") &&
                              strcmp(method, "OPTIONS"))) {
    char d[24];
    size_t k = 0;
    uint64_t v = (uint64_t)body_len;
    do d[sizeof d - 1 - k++] = (char)('0' + v % 10); while ((v /= 10) && k < sizeof d);
    memcpy(cl_line, "content-length: ", 16);
    memcpy(cl_line + 16, d + sizeof d - k, k);
    memcpy(cl_line + 16 + k, "\r\n", 2);
    cll = 16 + k + 2;
  }
  total += cll;
  char *p0 = lr_conn_reserve(&cl->conn, total), *p = p0;
  if (p == NULL) return UV_ENOMEM;
  p = put(p, method, ml);
  *p++ = ' ';
  p = put(p, target, tl);
  p = put(p, " HTTP/1.1\r\n", 11);
  for (size_t i = 0; i < n; i++) {
    const lr_header_t *x = &hd[i];
    if (framing(x)) continue; /* framing is ours */
    p = put(p, x->name.base, x->name.len);
    p = put(p, ": ", 2);
    p = put(p, x->value.base, x->value.len);
    p = put(p, "\r\n", 2);
  }
  if (!has_host) {
    p = put(p, "host: ", 6);
    p = put(p, host, hl);
    p = put(p, "\r\n", 2);
  }
  p = put(p, cl_line, cll);
  p = put(p, "\r\n", 2);
  lr_conn_commit(&cl->conn, (size_t)(p - p0));
  return 0;
}

int lr_h1c_write_chunk(lr_client_t *cl, const char *p, size_t n) {
  char line[32];
  int k = snprintf(line, sizeof line, n ? "%zx\r\n" : "0\r\n\r\n", n);
  int r = lr_client_write(cl, line, (size_t)k);
  if (r == 0 && n) {
    r = lr_client_write(cl, p, n);
    if (r == 0) r = lr_client_write(cl, "\r\n", 2);
  }
  return r;
}
