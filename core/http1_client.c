/* HTTP/1.1, client side: the request head out, the response in.
 *
 * The response is parsed here, not by llhttp: a response head is a handful
 * of lines, and llhttp's per-byte state machine plus a callback per name and
 * value piece cost more than the rest of an upstream GET (measured: 6.9k
 * instructions of 32k). As nginx's ngx_http_parse_status_line/_header_line
 * do, a line is found with memchr, then scanned once: the name lowercased
 * through a table while it is copied, the value checked 8 bytes at a time.
 * Framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; chunked
 * when it is the last transfer coding; else content-length; else until the
 * server closes. Anything malformed fails the response: obs-fold, a space
 * before the colon, a CTL in a value, two content-lengths, content-length
 * with transfer-encoding (a smuggling vector through the proxy).
 *
 * The owner feeds it what the connection read; bytes not used (a line not
 * complete yet, or body beyond what stream mode buffers) must be passed
 * again at the start of the next call. At most BODY_MAX body bytes wait here
 * in stream mode, the rest stays in the connection's buffer, whose reading
 * pauses in turn (back-pressure). */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lariat.h"

#define BODY_MAX (256 * 1024)
#define CHUNK_LINE_MAX 4096 /* a chunk-size line with its extensions */

enum { S_STATUS, S_HEADERS, S_BODY_LEN, S_BODY_EOF, S_CHUNK_SIZE, S_CHUNK_DATA, S_CHUNK_END, S_TRAILERS };
enum { HF_LENGTH = 1, HF_TE = 2, HF_CHUNKED = 4, HF_CLOSE = 8, HF_KEEP_ALIVE = 16 };

/* Scanning 8 bytes at a time (little-endian loads: the lowest flagged byte
 * of these masks is exact, later ones may be false alarms). */
#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define SWAR 1
#else
#define SWAR 0
#endif

static inline uint64_t load8(const char *p) {
  uint64_t x;
  memcpy(&x, p, 8);
  return x;
}

/* the first byte in [p, end) that can't be in a field name (CTL, SP, DEL,
 * obs-text, ':'), or end. Names are checked as lr_header_valid checks the
 * ones handlers send: visible ASCII without the colon */
static const char *name_end(const char *p, const char *end) {
  for (; SWAR && end - p >= 8; p += 8) {
    uint64_t x = load8(p), c = x ^ (ONES * ':');
    uint64_t m = (((x - ONES * 0x21) & ~x) | ((c - ONES) & ~c) | (x + ONES) | x) & HIGHS;
    if (m) return p + (__builtin_ctzll(m) >> 3);
  }
  for (; p < end; p++) {
    unsigned char b = (unsigned char)*p;
    if (b <= 0x20 || b >= 0x7f || b == ':') return p;
  }
  return end;
}

/* the first byte in [p, end) that may not be in a field value or reason
 * phrase (a CTL other than HTAB, or DEL: CR and LF end the line), or end */
static const char *ctl_at(const char *p, const char *end) {
  while (SWAR && end - p >= 8) {
    uint64_t x = load8(p), d = x ^ (ONES * 0x7f);
    uint64_t m = (((x - ONES * 0x20) & ~x) | ((d - ONES) & ~d)) & HIGHS;
    if (m == 0) {
      p += 8;
      continue;
    }
    p += __builtin_ctzll(m) >> 3;
    if (*p != '\t') return p;
    p++;
  }
  for (; p < end; p++) {
    unsigned char b = (unsigned char)*p;
    if ((b < 0x20 && b != '\t') || b == 0x7f) return p;
  }
  return end;
}

/* n bytes of a name (0x21-0x7e) lowercased into dst, which has 8 bytes to
 * spare: whole words while the input has them */
static void copy_lower(char *dst, const char *p, size_t n, const char *end) {
  size_t i = 0;
  for (; SWAR && i < n && end - (p + i) >= 8; i += 8) {
    uint64_t x = load8(p + i);
    uint64_t up = (x + ONES * (0x80 - 'A')) & ~(x + ONES * (0x80 - 'Z' - 1)) & HIGHS;
    x |= up >> 2;
    memcpy(dst + i, &x, 8);
  }
  for (; i < n; i++) dst[i] = (char)(p[i] >= 'A' && p[i] <= 'Z' ? p[i] + 32 : p[i]);
}

/* n bytes into dst (8 to spare): whole words while the input has them */
static void copy_words(char *dst, const char *p, size_t n, const char *end) {
  size_t i = 0;
  for (; i < n && end - (p + i) >= 8; i += 8) memcpy(dst + i, p + i, 8);
  if (i < n) memcpy(dst + i, p + i, n - i);
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* where the line whose first disallowed byte is e ends: after its LF (CRLF
 * or a bare LF); NULL if that LF has not arrived yet; e itself if e is a CTL
 * that is no line end (invalid) */
static const char *line_after(const char *e, const char *end) {
  if (e == end) return NULL;
  if (*e == '\n') return e + 1;
  if (*e != '\r') return e;
  if (e + 1 == end) return NULL;
  return e[1] == '\n' ? e + 2 : e;
}

/* "HTTP/1.x SP 3DIGIT [SP reason]" (RFC 9112 §4); the reason's bytes are checked */
static int status_line(lr_h1c_t *h, const char *p, size_t n) {
  if (n < 12 || memcmp(p, "HTTP/1.", 7) != 0 || !is_digit(p[7]) || p[8] != ' ' || !is_digit(p[9]) ||
      !is_digit(p[10]) || !is_digit(p[11]) || (n > 12 && p[12] != ' '))
    return -1;
  h->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
  if (h->status < 100) return -1;
  h->version = p[7] == '0' ? 10 : 11;
  return 0;
}

/* what a head field says about framing and keep-alive (name is lowercase) */
static int framing_field(lr_h1c_t *h, const char *name, size_t nl, const char *v, size_t vl) {
  if (nl == 14 && memcmp(name, "content-length", 14) == 0) {
    if ((h->framing & HF_LENGTH) || vl == 0 || vl > 18) return -1; /* one, of at most 18 digits */
    uint64_t x = 0;
    for (size_t i = 0; i < vl; i++) {
      if (!is_digit(v[i])) return -1;
      x = x * 10 + (uint64_t)(v[i] - '0');
    }
    h->framing |= HF_LENGTH;
    h->left = x;
  } else if (nl == 17 && memcmp(name, "transfer-encoding", 17) == 0) {
    /* chunked counts only as the last coding of the last field (RFC 9112 §6.3) */
    size_t e = vl, s;
    while (e && (v[e - 1] == ' ' || v[e - 1] == '\t' || v[e - 1] == ',')) e--;
    for (s = e; s && v[s - 1] != ',' && v[s - 1] != ' ' && v[s - 1] != '\t'; s--) {}
    h->framing |= HF_TE;
    if (e - s == 7 && strncasecmp(v + s, "chunked", 7) == 0) h->framing |= HF_CHUNKED;
    else h->framing &= ~(unsigned)HF_CHUNKED;
  } else if (nl == 10 && memcmp(name, "connection", 10) == 0) {
    if (vl == 10 && strncasecmp(v, "keep-alive", 10) == 0) {
      h->framing |= HF_KEEP_ALIVE;
    } else if (vl == 5 && strncasecmp(v, "close", 5) == 0) {
      h->framing |= HF_CLOSE;
    } else {
      if (lr_token_in_list(v, vl, "close", 5, 1)) h->framing |= HF_CLOSE;
      if (lr_token_in_list(v, vl, "keep-alive", 10, 1)) h->framing |= HF_KEEP_ALIVE;
    }
  }
  return 0;
}

/* name ":" OWS value OWS CRLF (RFC 9112 §5) at p, kept lowercase-named in
 * head: 1 (*next: the next line), 0 (its end has not arrived), -1 invalid
 * (obs-fold, a space before the colon, no colon, a CTL) */
static int field_line(lr_h1c_t *h, const char *p, const char *end, const char **next, int trailer) {
  const char *q = name_end(p, end);
  if (q == end) return 0;
  if (q == p || *q != ':') return -1;
  const char *v = q + 1;
  while (v < end && (*v == ' ' || *v == '\t')) v++;
  const char *e = ctl_at(v, end), *after = line_after(e, end);
  if (after == NULL) return 0;
  if (after == e) return -1;
  while (e > v && (e[-1] == ' ' || e[-1] == '\t')) e--;
  size_t nl = (size_t)(q - p), vl = (size_t)(e - v);
  if (h->n_headers == LR_H1C_MAX_HEADERS) return -1;
  if (h->head.cap - h->head.len < nl + vl + 8 && lr_buf_reserve(&h->head, nl + vl + 8)) return -1;
  char *dst = h->head.base + h->head.len;
  copy_lower(dst, p, nl, end);
  copy_words(dst + nl, v, vl, end);
  h->hdr[h->n_headers++] = (lr_h1c_header_t){h->head.len, nl, h->head.len + nl, vl};
  h->head.len += nl + vl;
  *next = after;
  if (trailer) {
    h->n_trailers++;
    return 1;
  }
  return framing_field(h, dst, nl, dst + nl, vl) < 0 ? -1 : 1;
}

/* the empty line after the fields: what follows */
static int head_end(lr_h1c_t *h) {
  if (h->status < 200 && h->status != 101) { /* interim (100 Continue, 103): forget it */
    h->n_headers = 0;
    h->head.len = 0;
    h->head_bytes = 0;
    h->framing = 0;
    h->left = 0;
    h->state = S_STATUS;
    return 0;
  }
  if ((h->framing & (HF_LENGTH | HF_TE)) == (HF_LENGTH | HF_TE)) return -1;
  h->headers_done = 1;
  h->keep_alive = h->version == 11 ? !(h->framing & HF_CLOSE) : (h->framing & HF_KEEP_ALIVE) != 0;
  /* a response to HEAD has no body whatever its headers say (RFC 9110 §9.3.2); nor a 101 here */
  if (h->head_req || h->status == 101 || h->status == 204 || h->status == 304) {
    if (h->status == 101) h->keep_alive = 0;
    h->done = 1;
  } else if (h->framing & HF_CHUNKED) {
    h->state = S_CHUNK_SIZE;
  } else if (h->framing & HF_TE) { /* a coding we can't frame by: until the close */
    h->state = S_BODY_EOF;
    h->keep_alive = 0;
  } else if (h->framing & HF_LENGTH) {
    h->state = S_BODY_LEN;
    if (h->left == 0) h->done = 1;
  } else {
    h->state = S_BODY_EOF;
    h->keep_alive = 0;
  }
  return 0;
}

/* one line of the head (or of the trailers) at p: 1 (*next: the next line),
 * 0 (its end has not arrived), -1 invalid */
static int head_line(lr_h1c_t *h, const char *p, const char *end, const char **next) {
  if (*p == '\r' || *p == '\n') { /* the empty line */
    const char *after = line_after(p, end);
    if (after == NULL) return 0;
    if (after == p) return -1;
    *next = after;
    if (h->state == S_STATUS) return 1; /* empty lines before a status line: tolerated, as llhttp does */
    if (h->state == S_TRAILERS) {
      h->done = 1;
      return 1;
    }
    return head_end(h) < 0 ? -1 : 1;
  }
  if (h->state != S_STATUS) return field_line(h, p, end, next, h->state == S_TRAILERS);
  const char *e = ctl_at(p, end), *after = line_after(e, end);
  if (after == NULL) return 0;
  if (after == e || status_line(h, p, (size_t)(e - p))) return -1;
  h->state = S_HEADERS;
  *next = after;
  return 1;
}

/* chunk-size [ BWS ";" extensions ] (RFC 9112 §7.1); extensions are ignored */
static int chunk_size_line(lr_h1c_t *h, const char *p, size_t n) {
  uint64_t x = 0;
  size_t i = 0;
  for (; i < n; i++) {
    char c = p[i];
    unsigned d = is_digit(c) ? (unsigned)(c - '0') : (c | 0x20) >= 'a' && (c | 0x20) <= 'f' ? (unsigned)((c | 0x20) - 'a' + 10) : 16;
    if (d == 16) break;
    if (x >> 59) return -1; /* would pass 2^63 */
    x = x * 16 + d;
  }
  if (i == 0) return -1;
  while (i < n && (p[i] == ' ' || p[i] == '\t')) i++;
  if (i < n && (p[i] != ';' || ctl_at(p + i, p + n) != p + n)) return -1;
  h->left = x;
  h->state = x ? S_CHUNK_DATA : S_TRAILERS;
  return 0;
}

static int body_bytes(lr_h1c_t *h, const char *p, size_t n) {
  h->body_total += n;
  if (h->max_body && h->body_total > h->max_body) {
    h->too_big = 1;
    return -1;
  }
  return lr_buf_append(&h->body, p, n) ? -1 : 0;
}

void lr_h1c_init(lr_h1c_t *h, int head_req, int stream, uint64_t max_body) {
  lr_buf_t head = h->head, body = h->body;
  memset(h, 0, offsetof(lr_h1c_t, hdr)); /* hdr: 3 KiB nobody reads past n_headers */
  h->head = head;
  h->body = body;
  h->head.len = h->body.len = 0;
  h->head_req = head_req;
  h->stream = stream;
  h->max_body = max_body;
}

void lr_h1c_free(lr_h1c_t *h) {
  lr_buf_free(&h->head);
  lr_buf_free(&h->body);
}

int lr_h1c_feed(lr_h1c_t *h, const char *data, size_t len, size_t *used) {
  const char *p = data, *end = data + len;
  *used = 0;
  if (h->failed) return -1;
  while (!h->done && p < end) {
    size_t avail = (size_t)(end - p);
    if (h->state == S_STATUS || h->state == S_HEADERS || h->state == S_TRAILERS) {
      /* an unfinished line is looked at again only once its LF is here (a
       * head sent byte by byte costs linear time); the head is bounded */
      size_t room = LR_H1C_HEAD_MAX - h->head_bytes;
      if (h->scanned && h->scanned < avail && !memchr(p + h->scanned, '\n', avail - h->scanned)) h->scanned = avail;
      const char *next = NULL;
      int r = h->scanned == avail ? 0 : head_line(h, p, end, &next);
      if (r < 0) goto bad;
      if (r == 0) {
        h->scanned = avail;
        if (avail >= room) goto bad;
        break;
      }
      if ((size_t)(next - p) > room) goto bad;
      h->head_bytes += (size_t)(next - p);
      h->scanned = 0;
      p = next;
      continue;
    }
    if (h->state == S_CHUNK_SIZE || h->state == S_CHUNK_END) {
      size_t from = h->scanned < avail ? h->scanned : 0;
      const char *nl = memchr(p + from, '\n', avail - from);
      size_t n = nl ? (size_t)(nl - p) : avail;
      if (n + 1 > (h->state == S_CHUNK_END ? 2 : CHUNK_LINE_MAX)) goto bad; /* a chunk line too long */
      if (nl == NULL) {
        h->scanned = avail;
        break;
      }
      h->scanned = 0;
      const char *line = p;
      p = nl + 1;
      if (n && line[n - 1] == '\r') n--;
      if (h->state == S_CHUNK_END) {
        if (n) goto bad;
        h->state = S_CHUNK_SIZE;
      } else if (chunk_size_line(h, line, n)) {
        goto bad;
      }
      continue;
    }
    /* body bytes: of the content-length, of a chunk, or until the close */
    size_t take = avail;
    if (h->state != S_BODY_EOF && take > h->left) take = (size_t)h->left;
    if (h->stream) {
      size_t room = h->body.len < BODY_MAX ? BODY_MAX - h->body.len : 0; /* the owner takes body bytes first */
      if (take > room) take = room;
      if (take == 0) break;
    }
    if (body_bytes(h, p, take)) goto bad;
    p += take;
    if (h->state == S_BODY_EOF) continue;
    h->left -= take;
    if (h->left == 0) {
      if (h->state == S_BODY_LEN) h->done = 1;
      else h->state = S_CHUNK_END;
    }
  }
  *used = (size_t)(p - data);
  return 0;
bad:
  *used = (size_t)(p - data);
  h->failed = 1;
  return -1;
}

int lr_h1c_eof(lr_h1c_t *h) {
  if (h->done) return 0;
  if (!h->failed && h->headers_done && h->state == S_BODY_EOF) {
    h->done = 1;
    h->keep_alive = 0;
    return 0;
  }
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
