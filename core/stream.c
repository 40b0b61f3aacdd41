/* Streams: the protocol-neutral request/response object. The protocol creates
 * it and fills the request; the application replies through these calls,
 * which check the state and hand the work to the protocol.
 *
 * A stream lives until both sides let go of it: the connection (response
 * complete or connection gone) and the application (its coroutine ended), so
 * a handler can still read req fields after it replied. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lariat.h"

#ifdef __SANITIZE_ADDRESS__
#define LR_MAX_FREE_STREAMS 0 /* let AddressSanitizer see a stream used after its end */
#else
#define LR_MAX_FREE_STREAMS 1024 /* an h2 worker has hundreds in flight (-c50 -m10: 500) */
#endif
#define LR_MAX_FREE_BODIES 256

/* streams are recycled per worker with their body buffer (which also holds
 * the raw request head while it is parsed): no malloc per request. Past
 * LR_MAX_FREE_BODIES recycled streams keep no buffer (an h2 GET has none). */
lr_stream_t *lr__stream_new(lr_conn_t *c) {
  lr_worker_t *w = c->worker;
  lr_stream_t *s = w->free_streams;
  if (s) {
    w->free_streams = (lr_stream_t *)s->app_data;
    w->n_free_streams--;
    lr_buf_t body = s->body;
    memset(s, 0, sizeof *s);
    s->body = body;
  } else {
    s = calloc(1, sizeof *s);
  }
  if (s == NULL) return NULL;
  s->conn = c;
  s->worker = c->worker;
  s->content_length = -1;
  return s;
}

static void stream_free(lr_stream_t *s) {
  lr_worker_t *w = s->worker;
  lr_link_unlink(&s->conn_link);
  lr_pool_clear(w, &s->pool);
  static const unsigned max_free = LR_MAX_FREE_STREAMS;
  if (w->n_free_streams < max_free && s->body.cap <= 16384) {
    if (w->n_free_streams >= LR_MAX_FREE_BODIES) lr_buf_free(&s->body);
    s->body.len = 0;
    s->app_data = w->free_streams; /* the free list's link */
    w->free_streams = s;
    w->n_free_streams++;
    return;
  }
  lr_buf_free(&s->body);
  free(s);
}

void lr__streams_free_all(lr_worker_t *w) {
  while (w->free_streams) {
    lr_stream_t *s = w->free_streams;
    w->free_streams = (lr_stream_t *)s->app_data;
    lr_buf_free(&s->body);
    free(s);
  }
  w->n_free_streams = 0;
}

/* the connection side is done with the stream */
void lr__stream_conn_release(lr_stream_t *s) {
  if (s->flags & LR_SF_CONN_GONE) return;
  s->flags |= LR_SF_CONN_GONE;
  s->conn = NULL;
  /* a stream the application never started (bad request) has no other owner */
  if ((s->flags & LR_SF_APP_GONE) || s->app_data == NULL) {
    stream_free(s);
    return;
  }
  /* a handler still runs: let it notice (a pending wait returns "closed") */
  if (s->app_data && s->worker->app->conn_gone) s->worker->app->conn_gone(s);
}

void lr_stream_app_release(lr_stream_t *s) {
  s->flags |= LR_SF_APP_GONE;
  s->app_data = NULL;
  if (s->flags & LR_SF_CONN_GONE) stream_free(s);
}

int lr__stream_add_header(lr_stream_t *s, const char *name, size_t nlen, const char *value, size_t vlen) {
  if (s->n_headers == s->cap_headers) {
    unsigned cap = s->cap_headers ? s->cap_headers * 2 : 16;
    lr_header_t *h = lr_pool_alloc(s->worker, &s->pool, cap * sizeof *h);
    if (h == NULL) return UV_ENOMEM;
    if (s->n_headers) memcpy(h, s->headers, s->n_headers * sizeof *h);
    s->headers = h;
    s->cap_headers = cap;
  }
  s->headers[s->n_headers++] = (lr_header_t){{name, nlen}, {value, vlen}};
  return 0;
}

const lr_str_t *lr_stream_header(const lr_stream_t *s, const char *name, size_t len) {
  for (unsigned i = 0; i < s->n_headers; i++)
    if (s->headers[i].name.len == len && memcmp(s->headers[i].name.base, name, len) == 0) return &s->headers[i].value;
  return NULL;
}

/* dotted quad by hand: uv_ip4_name goes through snprintf, ~1,800 instructions
 * for what a proxied request's x-forwarded-for needs every time */
static void ip4_name(const struct sockaddr_in *a, char *out, size_t outlen) {
  const unsigned char *b = (const unsigned char *)&a->sin_addr.s_addr;
  char t[16];
  size_t n = 0;
  for (int i = 0; i < 4; i++) {
    unsigned v = b[i];
    if (v >= 100) t[n++] = (char)('0' + v / 100);
    if (v >= 10) t[n++] = (char)('0' + v / 10 % 10);
    t[n++] = (char)('0' + v % 10);
    if (i < 3) t[n++] = '.';
  }
  if (outlen == 0) return;
  if (n >= outlen) n = outlen - 1;
  memcpy(out, t, n);
  out[n] = 0;
}

/* one getpeername per connection: a keep-alive client asks once, not per request */
static int conn_peer(lr_conn_t *c) {
  if (c->peer_family) return 0;
  struct sockaddr_storage ss;
  int sl = sizeof ss;
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl)) return LR_ECLOSED;
  if (ss.ss_family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    memcpy(c->peer_addr, &a->sin_addr, 4);
    c->peer_port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    memcpy(c->peer_addr, &a->sin6_addr, 16);
    c->peer_port = ntohs(a->sin6_port);
  }
  c->peer_family = (uint8_t)ss.ss_family;
  return 0;
}

int lr_stream_peer(const lr_stream_t *s, char *out, size_t outlen, int *port) {
  lr_conn_t *c = s->conn;
  if (c == NULL) return LR_ECLOSED;
  if (c->proxy && lr__proxy_peer(c, out, outlen, port) == 0) return 0;
  if (conn_peer(c)) return LR_ECLOSED;
  *port = c->peer_port;
  if (c->peer_family == AF_INET) {
    struct sockaddr_in a = {.sin_family = AF_INET};
    memcpy(&a.sin_addr, c->peer_addr, 4);
    ip4_name(&a, out, outlen);
  } else if (c->peer_family == AF_INET6) {
    struct sockaddr_in6 a = {.sin6_family = AF_INET6};
    memcpy(&a.sin6_addr, c->peer_addr, 16);
    uv_ip6_name(&a, out, outlen);
  } else {
    snprintf(out, outlen, "unix:"); /* as nginx's $remote_addr */
    *port = 0;
  }
  return 0;
}

int lr_stream_local_port(const lr_stream_t *s) {
  if (s->conn == NULL) return 0;
  return s->conn->listener->addr->port;
}

const char *lr_stream_scheme(const lr_stream_t *s) {
  return s->conn && s->conn->listener->addr->tls ? "https" : "http";
}

/* ---- response ---- */

static int usable(lr_stream_t *s) {
  if (s->conn == NULL || (s->flags & LR_SF_RESET)) return LR_ECLOSED;
  return 0;
}

int lr_stream_send_head(lr_stream_t *s, int status, const lr_header_t *h, size_t n, const char *body, size_t len,
                        lr_release_cb release, void *arg, int fin) {
  int r = (s->flags & LR_SF_REPLIED) ? LR_ESTATE : usable(s);
  if (r) {
    if (release) release(arg);
    return r;
  }
  s->flags |= LR_SF_REPLIED;
  if (!(fin & LR_FIN)) s->flags |= LR_SF_STREAMING;
  if (fin & LR_CHECKED) s->flags |= LR_SF_CHECKED;
  s->status = status;
  return s->conn->proto->send_head(s, status, h, n, body, len, release, arg, fin & LR_FIN);
}

int lr_stream_send_data(lr_stream_t *s, const char *data, size_t len, lr_release_cb release, void *arg) {
  int r = (s->flags & LR_SF_STREAMING) && !(s->flags & LR_SF_FINISHED) ? usable(s) : LR_ESTATE;
  if (r) {
    if (release) release(arg);
    return r;
  }
  if (len == 0) {
    if (release) release(arg);
    return 0;
  }
  return s->conn->proto->send_data(s, data, len, release, arg, 0);
}

int lr_stream_send_trailers(lr_stream_t *s, const lr_header_t *h, size_t n) {
  if (!(s->flags & LR_SF_STREAMING) || (s->flags & LR_SF_FINISHED)) return LR_ESTATE;
  int r = usable(s);
  if (r) return r;
  return s->conn->proto->send_trailers(s, h, n);
}

int lr_stream_finish(lr_stream_t *s) {
  if (!(s->flags & LR_SF_STREAMING) || (s->flags & LR_SF_FINISHED)) return LR_ESTATE;
  int r = usable(s);
  if (r) return r;
  return s->conn->proto->send_data(s, NULL, 0, NULL, NULL, LR_FIN);
}

void lr_stream_abort(lr_stream_t *s) {
  if (s->conn == NULL || (s->flags & LR_SF_FINISHED)) return;
  s->conn->proto->abort(s);
}

int lr_stream_write_blocked(lr_stream_t *s) {
  if (s->conn == NULL) return 0;
  if (s->conn->proto->write_blocked) return s->conn->proto->write_blocked(s);
  return lr_conn_queued(s->conn) > LR_OUT_HIGH;
}

int lr_stream_queue_blocked(lr_stream_t *s) {
  return s->conn && s->conn->proto->queue_blocked && s->conn->proto->queue_blocked(s);
}

int lr_stream_read_body(lr_stream_t *s, lr_buf_t *out, size_t max, int *fin) {
  *fin = 0;
  if (s->body.len) {
    size_t n = s->body.len < max ? s->body.len : max;
    if (lr_buf_append(out, s->body.base, n)) return UV_ENOMEM;
    lr_buf_consume(&s->body, n);
    if (s->body.len == 0 && (s->flags & LR_SF_BODY_DONE)) *fin = 1;
    /* room again: let the protocol read (or open the window) */
    if (s->conn) s->conn->proto->body_wanted(s);
    return (int)n;
  }
  if (s->flags & LR_SF_BODY_DONE) {
    *fin = 1;
    return 0;
  }
  if (s->conn == NULL || (s->flags & LR_SF_RESET)) return LR_ECLOSED;
  s->conn->proto->body_wanted(s);
  return 0;
}

/* ---- helpers shared by the protocols ---- */

const char *lr_status_reason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 418: return "I'm a teapot";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

int lr_status_has_body(int status) { return !(status < 200 || status == 204 || status == 304); }

/* only tokens in names and no CR/LF/NUL in values: a handler can never split
 * a response or smuggle a field, whatever the protocol */
/* every response field passes here: a value is looked at 8 bytes at a time,
 * bytewise only where one of them is below 14 (\0 \n \r are) */
int lr_header_valid(const lr_header_t *hd) {
  if (hd->name.len == 0) return 0;
  for (size_t i = 0; i < hd->name.len; i++) {
    unsigned char ch = (unsigned char)hd->name.base[i];
    if (ch <= ' ' || ch >= 127 || ch == ':') return 0;
  }
  const unsigned char *v = (const unsigned char *)hd->value.base;
  size_t n = hd->value.len, i = 0;
  const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
  for (; i + 8 <= n; i += 8) {
    uint64_t x;
    memcpy(&x, v + i, 8);
    if (((x - ones * 14) & ~x & highs) == 0) continue; /* no byte below 14 */
    for (size_t j = i; j < i + 8; j++)
      if (v[j] == '\r' || v[j] == '\n' || v[j] == 0) return 0;
  }
  for (; i < n; i++)
    if (v[i] == '\r' || v[i] == '\n' || v[i] == 0) return 0;
  return 1;
}

/* is tok an element of a comma-separated field value (RFC 9110 §5.6.1)? */
int lr_token_in_list(const char *list, size_t len, const char *tok, size_t tl, int nocase) {
  size_t i = 0;
  while (i < len) {
    while (i < len && (list[i] == ' ' || list[i] == '\t' || list[i] == ',')) i++;
    size_t st = i;
    while (i < len && list[i] != ',') i++;
    size_t e = i;
    while (e > st && (list[e - 1] == ' ' || list[e - 1] == '\t')) e--;
    if (e - st == tl && (nocase ? strncasecmp(list + st, tok, tl) : memcmp(list + st, tok, tl)) == 0) return 1;
  }
  return 0;
}

/* headers the core owns: a handler can neither set nor see them */
int lr_header_is_hop_by_hop(const char *name, size_t len) {
  /* the first byte picks the one name worth comparing (user-agent, content-type, … pass at once) */
#define FIRST(ch) (((unsigned char)name[0] | 0x20) == (ch))
  switch (len) {
    case 7: return FIRST('u') && strncasecmp(name, "upgrade", 7) == 0;
    case 10:
      return FIRST('c') ? strncasecmp(name, "connection", 10) == 0 : FIRST('k') && strncasecmp(name, "keep-alive", 10) == 0;
    case 14: return FIRST('c') && strncasecmp(name, "content-length", 14) == 0;
    case 16: return FIRST('p') && strncasecmp(name, "proxy-connection", 16) == 0;
    case 17: return FIRST('t') && strncasecmp(name, "transfer-encoding", 17) == 0;
    default: return 0;
  }
#undef FIRST
}
