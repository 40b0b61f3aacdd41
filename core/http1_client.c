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

/* the request head; body_len < 0: chunked body follows (lr_h1c_write_chunk) */
int lr_h1c_write_head(lr_client_t *cl, const char *method, const char *target, const char *host,
                      const lr_header_t *hd, size_t n, int64_t body_len) {
  lr_buf_t b = {0};
  char line[64];
  int has_host = 0;
  lr_buf_append(&b, method, strlen(method));
  lr_buf_append(&b, " ", 1);
  lr_buf_append(&b, target, strlen(target));
  lr_buf_append(&b, " HTTP/1.1\r\n", 11);
  for (size_t i = 0; i < n; i++) {
    const lr_header_t *x = &hd[i];
    if (x->name.len == 4 && strncasecmp(x->name.base, "host", 4) == 0) has_host = 1;
    /* framing is ours */
    if ((x->name.len == 14 && strncasecmp(x->name.base, "content-length", 14) == 0) ||
        (x->name.len == 17 && strncasecmp(x->name.base, "transfer-encoding", 17) == 0))
      continue;
    lr_buf_append(&b, x->name.base, x->name.len);
    lr_buf_append(&b, ": ", 2);
    lr_buf_append(&b, x->value.base, x->value.len);
    lr_buf_append(&b, "\r\n", 2);
  }
  if (!has_host) {
    lr_buf_append(&b, "host: ", 6);
    lr_buf_append(&b, host, strlen(host));
    lr_buf_append(&b, "\r\n", 2);
  }
  if (body_len < 0)
    lr_buf_append(&b, "transfer-encoding: chunked\r\n", 28);
  else if (body_len > 0 || (strcmp(method, "GET") && strcmp(method, "HEAD") && strcmp(method, "DELETE") &&
                            strcmp(method, "OPTIONS")))
    lr_buf_append(&b, line, (size_t)snprintf(line, sizeof line, "content-length: %lld\r\n", (long long)body_len));
  int r = lr_buf_append(&b, "\r\n", 2);
  if (r == 0) r = lr_client_write(cl, b.base, b.len);
  lr_buf_free(&b);
  return r;
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
