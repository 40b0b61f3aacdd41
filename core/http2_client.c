/* HTTP/2, client side (nghttp2 client session): one connection per origin
 * per worker, many requests multiplexed on it. The connection is a
 * client.c connection that picked h2 by ALPN; this file owns it from then
 * on. Responses land in the owner's lr_h1c_t (the same container the
 * HTTP/1.1 client fills), so the HTTP client reads both alike.
 *
 * Flow control: windows are not reopened automatically; the owner's
 * lr_h2c_consume reopens them as it takes body bytes, so a slow reader
 * holds the server back instead of growing a buffer. A request body may
 * stream too (lr_h2c_write): at most UP_HIGH bytes wait here for the
 * server's window, the owner waits above that.
 *
 * A session with no stream left is idle: it closes after idle_ms (the pool
 * sweep in pool.c asks lr__h2c_sweep), as a pooled HTTP/1.1 connection. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <nghttp2/nghttp2.h>

#include "lariat.h"
#include "outbound.h"

#define WINDOW (1 << 20) /* per stream; the connection gets 16x */
#define UP_HIGH (64 * 1024) /* request body bytes queued per stream before the owner waits */

struct lr_h2c_s {
  nghttp2_session *ng;
  lr_client_t *cl;   /* NULL once the connection is gone */
  char *key;         /* the origin: lr_client_t.key of its connection */
  lr_link_t link;    /* in the worker's list of sessions */
  lr_link_t streams; /* its open streams */
  unsigned n_streams;
  int dead;          /* GOAWAY received or connection lost: no new streams */
  int busy;          /* inside nghttp2: don't free */
  uint64_t idle_ms, idle_deadline; /* closes at idle_deadline once n_streams is 0 */
};

struct lr_h2c_stream_s {
  lr_h2c_t *h;       /* NULL once the session is gone */
  int32_t id;
  lr_link_t link;
  lr_h1c_t *res;     /* the owner's, NULL once released */
  void (*notify)(void *owner);
  void *owner;
  int told;          /* news arrived while nghttp2 ran: told after it returns */
  lr_buf_t up;       /* request body bytes not yet framed, from up_off */
  size_t up_off;
  int up_more;       /* the owner has more body to write (lr_h2c_write ... fin) */
  int deferred;      /* nghttp2 waits for more body: resume on the next write */
  size_t unacked;    /* body bytes received and not yet given back to the windows */
  int closed, refused;
};

static nghttp2_session_callbacks *callbacks;
static nghttp2_option *options;
static void global_init(void);

/* the owner may run Lua (and submit or release streams) when told: never
 * while nghttp2 is inside mem_recv, so news waits until it returns */
static void tell(lr_h2c_stream_t *st) {
  if (st->h && st->h->busy) {
    st->told = 1;
    return;
  }
  if (st->notify) st->notify(st->owner);
}

static void tell_deferred(lr_h2c_t *h) {
  for (;;) {
    lr_h2c_stream_t *st = NULL;
    for (lr_link_t *l = h->streams.next; l != &h->streams; l = l->next) {
      lr_h2c_stream_t *x = LR_CONTAINER_OF(l, lr_h2c_stream_t, link);
      if (x->told) {
        st = x;
        break;
      }
    }
    if (st == NULL) return;
    st->told = 0;
    if (st->notify) st->notify(st->owner);
  }
}

static void stream_free(lr_h2c_stream_t *st) {
  lr_link_unlink(&st->link);
  lr_h2c_t *h = st->h;
  if (h && --h->n_streams == 0 && h->cl) { /* idle */
    uv_unref((uv_handle_t *)&h->cl->conn.tcp);
    h->idle_deadline = uv_now(&h->cl->conn.worker->loop) + h->idle_ms;
    lr_outbound_t *ob = lr__outbound(h->cl->conn.worker);
    if (ob) lr__pool_sweep_start(ob);
  }
  lr_buf_free(&st->up);
  free(st);
}

static void flush(lr_h2c_t *h) {
  if (h->cl == NULL) return;
  h->busy++;
  for (;;) {
    const uint8_t *d;
    ssize_t n = nghttp2_session_mem_send(h->ng, &d);
    if (n <= 0) break;
    lr_client_write(h->cl, d, (size_t)n);
  }
  h->busy--;
  if (h->cl && h->n_streams == 0 && !nghttp2_session_want_read(h->ng) && !nghttp2_session_want_write(h->ng))
    h->dead = 1;
  if (!h->busy) tell_deferred(h); /* request body room (read_body) */
}

/* ---- nghttp2 callbacks ---- */

static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud) {
  (void)flags;
  (void)ud;
  lr_h2c_stream_t *st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
  if (st == NULL || st->res == NULL || f->hd.type != NGHTTP2_HEADERS) return 0;
  lr_h1c_t *r = st->res;
  if (r->headers_done) { /* trailers: after the head in the same list */
    if (nlen && name[0] == ':') return 0;
    if (lr_h1c_add_header(r, (const char *)name, nlen, (const char *)value, vlen) == 0) r->n_trailers++;
    return 0;
  }
  if (nlen == 7 && memcmp(name, ":status", 7) == 0) {
    int s = 0;
    for (size_t i = 0; i < vlen; i++) s = s * 10 + (value[i] - '0');
    r->status = s;
    return 0;
  }
  if (nlen && name[0] == ':') return 0;
  if (lr_h1c_add_header(r, (const char *)name, nlen, (const char *)value, vlen) < 0)
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  return 0;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *ud) {
  lr_h2c_t *h = ud;
  if (f->hd.type == NGHTTP2_GOAWAY) {
    h->dead = 1;
    return 0;
  }
  if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) return 0;
  lr_h2c_stream_t *st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
  if (st == NULL || st->res == NULL) return 0;
  lr_h1c_t *r = st->res;
  if (f->hd.type == NGHTTP2_HEADERS && !r->headers_done) {
    if (r->status >= 100 && r->status < 200) { /* interim: forget it */
      r->n_headers = 0;
      r->head.len = 0;
      return 0;
    }
    r->headers_done = 1;
    r->version = 20;
  }
  if (f->hd.flags & NGHTTP2_FLAG_END_STREAM) r->done = 1;
  tell(st);
  return 0;
}

static int on_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *ud) {
  (void)flags;
  (void)ud;
  lr_h2c_stream_t *st = nghttp2_session_get_stream_user_data(ng, id);
  if (st == NULL || st->res == NULL) {
    nghttp2_session_consume(ng, id, len);
    return 0;
  }
  lr_h1c_t *r = st->res;
  r->body_total += len;
  if (r->max_body && r->body_total > r->max_body) {
    r->too_big = r->failed = 1;
    nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
    nghttp2_session_consume(ng, id, len);
    tell(st);
    return 0;
  }
  if (lr_buf_append(&r->body, data, len)) return NGHTTP2_ERR_CALLBACK_FAILURE;
  if (!r->stream) nghttp2_session_consume(ng, id, len); /* whole bodies are bounded by max_body */
  else st->unacked += len;
  tell(st);
  return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud) {
  (void)ud;
  lr_h2c_stream_t *st = nghttp2_session_get_stream_user_data(ng, id);
  if (st == NULL) return 0;
  st->closed = 1;
  nghttp2_session_set_stream_user_data(ng, id, NULL);
  if (st->res == NULL) { /* released by its owner already */
    stream_free(st);
    return 0;
  }
  if (!st->res->done) st->res->failed = 1; /* reset (code) before the end */
  st->refused = code == NGHTTP2_REFUSED_STREAM; /* not processed (RFC 9113 §8.7): safe to retry */
  tell(st);
  return 0;
}

static ssize_t read_body(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *ud) {
  (void)ng;
  (void)id;
  (void)ud;
  lr_h2c_stream_t *st = src->ptr;
  size_t was = st->up.len - st->up_off;
  size_t n = was;
  if (n > len) n = len;
  if (n) memcpy(buf, st->up.base + st->up_off, n);
  st->up_off += n;
  if (st->up_off == st->up.len) st->up.len = st->up_off = 0;
  if (was >= UP_HIGH && was - n < UP_HIGH && st->res) st->told = 1; /* room again: told after flush */
  if (st->up.len == 0 && !st->up_more) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
  } else if (n == 0) {
    st->deferred = 1;
    return NGHTTP2_ERR_DEFERRED;
  }
  return (ssize_t)n;
}

/* ---- the connection under the session ---- */

static void fail_all(lr_h2c_t *h) {
  while (!lr_list_empty(&h->streams)) {
    lr_h2c_stream_t *st = LR_CONTAINER_OF(h->streams.next, lr_h2c_stream_t, link);
    lr_link_unlink(&st->link);
    st->h = NULL;
    h->n_streams--;
    st->closed = 1;
    if (st->res == NULL) {
      stream_free(st);
      continue;
    }
    if (!st->res->done) st->res->failed = 1;
    tell(st);
  }
}

static void session_free(lr_h2c_t *h) {
  lr_link_unlink(&h->link);
  fail_all(h);
  nghttp2_session_del(h->ng);
  free(h->key);
  free(h);
}

static void conn_notify(lr_client_t *cl, int ev) {
  lr_h2c_t *h = cl->owner;
  if (ev & LR_CEV_READ && cl->in.len) {
    h->busy++;
    ssize_t r = nghttp2_session_mem_recv(h->ng, (const uint8_t *)cl->in.base, cl->in.len);
    h->busy--;
    lr_client_consume(cl, cl->in.len);
    if (r >= 0) {
      flush(h);
      tell_deferred(h);
    }
    if (r < 0) {
      h->dead = 1;
      lr_client_close(cl);
      h->cl = NULL;
      session_free(h);
      return;
    }
    flush(h);
  }
  if ((ev & LR_CEV_READ) && cl->eof) {
    h->dead = 1;
    lr_client_close(cl);
    h->cl = NULL;
    session_free(h);
    return;
  }
  if (ev & LR_CEV_CLOSED) {
    h->cl = NULL;
    h->dead = 1;
    session_free(h);
  }
}

lr_h2c_t *lr_h2c_start(lr_client_t *cl, uint64_t idle_ms) {
  static uv_once_t once = UV_ONCE_INIT;
  uv_once(&once, global_init);
  if (callbacks == NULL) return NULL;
  lr_h2c_t *h = calloc(1, sizeof *h);
  if (h == NULL) return NULL;
  h->key = strdup(cl->key ? cl->key : "");
  h->idle_ms = idle_ms;
  lr_list_init(&h->streams);
  if (nghttp2_session_client_new2(&h->ng, callbacks, h, options) != 0) {
    free(h->key);
    free(h);
    return NULL;
  }
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, WINDOW},
  };
  nghttp2_submit_settings(h->ng, NGHTTP2_FLAG_NONE, iv, 2);
  nghttp2_session_set_local_window_size(h->ng, NGHTTP2_FLAG_NONE, 0, 16 * WINDOW);
  h->cl = cl;
  cl->notify = conn_notify;
  cl->owner = h;
  lr_outbound_t *ob = lr__outbound(cl->conn.worker);
  lr_list_push(&ob->h2, &h->link);
  flush(h);
  if (cl->in.len) conn_notify(cl, LR_CEV_READ); /* the server's SETTINGS may be here already */
  return h;
}

lr_h2c_t *lr_h2c_find(lr_worker_t *w, const char *key) {
  lr_outbound_t *ob = lr__outbound(w);
  if (ob == NULL) return NULL;
  for (lr_link_t *l = ob->h2.next; l != &ob->h2; l = l->next) {
    lr_h2c_t *h = LR_CONTAINER_OF(l, lr_h2c_t, link);
    if (h->dead || h->cl == NULL || strcmp(h->key, key) != 0) continue;
    if (h->n_streams >= nghttp2_session_get_remote_settings(h->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS))
      continue;
    return h;
  }
  return NULL;
}

lr_h2c_stream_t *lr_h2c_request(lr_h2c_t *h, const char *method, const char *scheme, const char *authority,
                                const char *path, const lr_header_t *hd, size_t n, const char *body, size_t blen,
                                int more, lr_h1c_t *res, void (*notify)(void *), void *owner) {
  if (h->dead || h->cl == NULL) return NULL;
  lr_h2c_stream_t *st = calloc(1, sizeof *st);
  nghttp2_nv *nv = calloc(n + 4, sizeof *nv);
  if (st == NULL || nv == NULL) {
    free(st);
    free(nv);
    return NULL;
  }
#define NV(k, kl, v, vl) (nghttp2_nv){(uint8_t *)(k), (uint8_t *)(v), (kl), (vl), NGHTTP2_NV_FLAG_NONE}
  size_t k = 0;
  nv[k++] = NV(":method", 7, method, strlen(method));
  nv[k++] = NV(":scheme", 7, scheme, strlen(scheme));
  nv[k++] = NV(":authority", 10, authority, strlen(authority));
  nv[k++] = NV(":path", 5, path, strlen(path));
  for (size_t i = 0; i < n; i++) {
    /* connection-specific and Host don't exist in h2 (RFC 9113 §8.2.2, §8.3.1) */
    /* TE only as "trailers" (§8.2.2) */
    if (lr_header_is_hop_by_hop(hd[i].name.base, hd[i].name.len) ||
        (hd[i].name.len == 4 && strncasecmp(hd[i].name.base, "host", 4) == 0) ||
        (hd[i].name.len == 2 && strncasecmp(hd[i].name.base, "te", 2) == 0 &&
         !(hd[i].value.len == 8 && strncasecmp(hd[i].value.base, "trailers", 8) == 0)))
      continue;
    nv[k++] = NV(hd[i].name.base, hd[i].name.len, hd[i].value.base, hd[i].value.len);
    nv[k - 1].flags = NGHTTP2_NV_FLAG_NONE;
  }
  /* nghttp2 wants lowercase names */
  char *lower = NULL;
  size_t total = 0;
  for (size_t i = 4; i < k; i++) total += nv[i].namelen;
  lower = malloc(total + 1);
  if (lower == NULL) {
    free(st);
    free(nv);
    return NULL;
  }
  for (size_t i = 4, off = 0; i < k; i++) {
    for (size_t j = 0; j < nv[i].namelen; j++) {
      char c = (char)nv[i].name[j];
      lower[off + j] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    nv[i].name = (uint8_t *)lower + off;
    off += nv[i].namelen;
  }
  nghttp2_data_provider dp = {.source.ptr = st, .read_callback = read_body};
  if (blen && lr_buf_append(&st->up, body, blen)) {
    free(lower);
    free(st);
    free(nv);
    return NULL;
  }
  st->up_more = more;
  int32_t id = nghttp2_submit_request(h->ng, NULL, nv, k, blen || more ? &dp : NULL, st);
  free(lower);
  free(nv);
  if (id < 0) {
    lr_buf_free(&st->up);
    free(st);
    return NULL;
  }
  st->h = h;
  st->id = id;
  st->res = res;
  st->notify = notify;
  st->owner = owner;
  lr_list_push(&h->streams, &st->link);
  if (h->n_streams++ == 0) uv_ref((uv_handle_t *)&h->cl->conn.tcp);
  flush(h);
  return st;
}

/* also once the stream closed: the connection's window counts these bytes too */
void lr_h2c_consume(lr_h2c_stream_t *st, size_t n) {
  lr_h2c_t *h = st->h;
  if (n > st->unacked) n = st->unacked;
  if (h == NULL || h->cl == NULL || n == 0) return;
  st->unacked -= n;
  nghttp2_session_consume(h->ng, st->id, n);
  flush(h);
}

int lr_h2c_write(lr_h2c_stream_t *st, const char *p, size_t n, int fin) {
  lr_h2c_t *h = st->h;
  if (h == NULL || h->cl == NULL || st->closed || !st->up_more) return LR_ECLOSED;
  if (n && lr_buf_append(&st->up, p, n)) return UV_ENOMEM;
  if (fin) st->up_more = 0;
  if (st->deferred) {
    st->deferred = 0;
    nghttp2_session_resume_data(h->ng, st->id);
  }
  flush(h);
  return 0;
}

int lr_h2c_write_blocked(const lr_h2c_stream_t *st) { return st->up.len - st->up_off >= UP_HIGH; }

int lr_h2c_refused(const lr_h2c_stream_t *st) { return st->refused; }

void lr_h2c_release(lr_h2c_stream_t *st) {
  st->res = NULL;
  st->notify = NULL;
  st->owner = NULL;
  lr_h2c_t *h = st->h;
  if (h && h->cl && st->unacked) { /* what the owner never took still counts against the connection */
    nghttp2_session_consume_connection(h->ng, st->unacked);
    st->unacked = 0;
  }
  if (st->closed || h == NULL || h->cl == NULL) {
    stream_free(st);
    if (h && h->cl) flush(h);
    return;
  }
  /* still open: the server is told to stop; freed when nghttp2 closes it */
  nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
  flush(h);
}

static void global_init(void) {
  if (nghttp2_session_callbacks_new(&callbacks)) return;
  nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, on_data);
  nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, on_stream_close);
  nghttp2_option_new(&options);
  nghttp2_option_set_no_auto_window_update(options, 1);
}

static void session_close(lr_h2c_t *h) {
  lr_client_t *cl = h->cl;
  h->dead = 1;
  if (cl) {
    nghttp2_submit_goaway(h->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h->ng),
                          NGHTTP2_NO_ERROR, NULL, 0);
    flush(h);
    h->cl = NULL;
    lr_client_close(cl);
  }
  session_free(h);
}

/* the sweep's turn: idle sessions past their deadline close (and dead ones
 * with nothing left on them); returns how many idle sessions remain */
unsigned lr__h2c_sweep(lr_outbound_t *ob, uint64_t now) {
  unsigned idle = 0;
  lr_link_t *l = ob->h2.next;
  while (l != &ob->h2) {
    lr_h2c_t *h = LR_CONTAINER_OF(l, lr_h2c_t, link);
    l = l->next;
    if (h->n_streams || h->busy) continue;
    if (h->dead || h->cl == NULL || h->idle_deadline <= now) session_close(h);
    else idle++;
  }
  return idle;
}

void lr__h2c_free_all(lr_outbound_t *ob) {
  while (!lr_list_empty(&ob->h2)) {
    lr_h2c_t *h = LR_CONTAINER_OF(ob->h2.next, lr_h2c_t, link);
    if (h->cl) {
      lr_client_t *cl = h->cl;
      h->cl = NULL;
      lr_client_close(cl);
    }
    session_free(h);
  }
}
