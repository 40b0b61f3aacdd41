/* Outbound connections: resolve, connect, handshake, then a conn like any
 * other whose protocol (lr_client_proto) buffers what it reads and tells the
 * owner. The owner (bindings/tcp.c, the HTTP client) decides what the bytes
 * mean; the keep-alive pool (pool.c) holds connections between owners.
 *
 * Every failure ends in lr_conn_close, whose on_close tells the owner
 * LR_CEV_CLOSED with cl->err saying why. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lariat.h"
#include "outbound.h"

/* what one connection reads before it stops reading until the owner consumes */
#define IN_MAX (256 * 1024)

struct lr_client_priv_s {
  lr_client_opts_t o; /* strings owned below */
  char *host, *sni, *ca, *alpn;
  lr_dns_query_t *q;
  struct sockaddr_storage addrs[LR_DNS_MAX];
  int n_addrs, next;
};

extern const lr_proto_t lr_client_proto;

static void on_close_sweep(uv_handle_t *h) { free(h->data); }

lr_outbound_t *lr__outbound(lr_worker_t *w) {
  if (w->outbound) return w->outbound;
  lr_outbound_t *ob = calloc(1, sizeof *ob);
  if (ob == NULL) return NULL;
  ob->w = w;
  lr_list_init(&ob->idle);
  lr_list_init(&ob->h2);
  uv_timer_init(&w->loop, &ob->sweep);
  ob->sweep.data = ob;
  uv_unref((uv_handle_t *)&ob->sweep);
  w->outbound = ob;
  return ob;
}

static void priv_free(struct lr_client_priv_s *p) {
  if (p == NULL) return;
  lr_dns_cancel(p->q);
  free(p->host);
  free(p->sni);
  free(p->ca);
  free(p->alpn);
  free(p);
}

static void notify(lr_client_t *cl, int ev) {
  if (cl->notify) cl->notify(cl, ev);
}

static void fail(lr_client_t *cl, const char *why) {
  snprintf(cl->err, sizeof cl->err, "%s", why);
  lr_conn_close(&cl->conn);
}

static const char *connect_error(int status) {
  switch (status) {
  case UV_ECONNREFUSED: return "connection refused";
  case UV_ETIMEDOUT: return "timeout";
  case UV_ECONNRESET: return "connection reset";
  case UV_ENETUNREACH: return "network unreachable";
  case UV_EHOSTUNREACH: return "host unreachable";
  case UV_EADDRNOTAVAIL: return "address not available";
  default: return uv_strerror(status);
  }
}

static void opened(lr_client_t *cl) {
  cl->state = LR_CL_OPEN;
  priv_free(cl->priv);
  cl->priv = NULL;
  notify(cl, LR_CEV_OPEN);
}

void lr__client_tls_done(lr_conn_t *c, const char *err, int h2) {
  lr_client_t *cl = (lr_client_t *)c;
  if (cl->state != LR_CL_CONNECTING) return;
  if (err) {
    fail(cl, err);
    return;
  }
  cl->h2 = h2;
  opened(cl);
}

static lr_client_t *client_new(lr_worker_t *w) {
  lr_outbound_t *ob = lr__outbound(w);
  lr_client_t *cl = ob ? calloc(1, sizeof *cl) : NULL;
  if (cl == NULL) return NULL;
  lr_conn_t *c = &cl->conn;
  uv_tcp_init(&w->loop, &c->tcp);
  c->tcp.data = c;
  c->worker = w;
  c->proto = &lr_client_proto;
  c->flags = LR_CF_READ_STOPPED;
  lr_list_init(&c->timeout.link);
  lr_list_init(&c->send_to.link);
  lr_list_init(&c->deferred);
  lr_list_init(&c->all);
  lr_list_init(&cl->pool);
  cl->state = LR_CL_CONNECTING;
  cl->connect_req.data = cl;
  ob->n_conns++;
  return cl;
}

static void start_connect(lr_client_t *cl);

static void on_connect(uv_connect_t *req, int status) {
  lr_client_t *cl = req->data;
  if (cl->conn.flags & LR_CF_CLOSING) return; /* closed meanwhile (timeout, cancel) */
  struct lr_client_priv_s *p = cl->priv;
  if (status < 0) {
    if (p->next < p->n_addrs) {
      /* a handle whose connect failed can't try again: move to a fresh one */
      lr_client_t *n = client_new(cl->conn.worker);
      if (n) {
        n->priv = p;
        n->key = cl->key;
        n->key_hash = cl->key_hash;
        n->notify = cl->notify;
        n->owner = cl->owner;
        cl->priv = NULL;
        cl->key = NULL;
        cl->notify = NULL;
        lr_conn_close(&cl->conn);
        notify(n, 0);
        start_connect(n);
        return;
      }
    }
    fail(cl, connect_error(status));
    return;
  }
  uv_tcp_nodelay(&cl->conn.tcp, 1);
  lr_conn_read_start(&cl->conn);
  if (p->o.tls) {
    char err[160];
    if (lr__tls_connect(&cl->conn, &p->o, cl->key, err, sizeof err)) fail(cl, err);
    return;
  }
  opened(cl);
}

static void start_connect(lr_client_t *cl) {
  struct lr_client_priv_s *p = cl->priv;
  struct sockaddr_storage *sa = &p->addrs[p->next++];
  if (sa->ss_family == AF_INET)
    ((struct sockaddr_in *)sa)->sin_port = htons((uint16_t)p->o.port);
  else
    ((struct sockaddr_in6 *)sa)->sin6_port = htons((uint16_t)p->o.port);
  int r = uv_tcp_connect(&cl->connect_req, &cl->conn.tcp, (struct sockaddr *)sa, on_connect);
  if (r < 0) fail(cl, connect_error(r));
}

static void on_resolved(void *arg, int status, const struct sockaddr_storage *addrs, int n) {
  lr_client_t *cl = arg;
  struct lr_client_priv_s *p = cl->priv;
  p->q = NULL;
  if (status < 0 || n == 0) {
    char why[160];
    snprintf(why, sizeof why, "could not resolve %s: %s", p->host, uv_strerror(status < 0 ? status : UV_EAI_NONAME));
    fail(cl, why);
    return;
  }
  memcpy(p->addrs, addrs, (size_t)n * sizeof *addrs);
  p->n_addrs = n;
  start_connect(cl);
}

/* ---- the protocol of a client connection: buffer and tell ---- */

static void cl_on_read(lr_conn_t *c, const char *data, size_t len) {
  lr_client_t *cl = (lr_client_t *)c;
  if (cl->notify == NULL) { /* pooled: a server says nothing unasked; whatever it is, drop the connection */
    lr_conn_close(c);
    return;
  }
  if (lr_buf_append(&cl->in, data, len)) {
    fail(cl, "out of memory");
    return;
  }
  if (cl->in.len >= (cl->in_max ? cl->in_max : IN_MAX)) lr_conn_read_stop(c);
  notify(cl, LR_CEV_READ);
}

static void cl_on_eof(lr_conn_t *c) {
  lr_client_t *cl = (lr_client_t *)c;
  cl->eof = 1;
  if (cl->notify == NULL || cl->state != LR_CL_OPEN) {
    if (cl->state != LR_CL_OPEN) snprintf(cl->err, sizeof cl->err, "closed");
    lr_conn_close(c);
    return;
  }
  notify(cl, LR_CEV_READ);
}

static void cl_on_drain(lr_conn_t *c) {
  lr_client_t *cl = (lr_client_t *)c;
  if (cl->state == LR_CL_OPEN) notify(cl, LR_CEV_DRAIN);
}

static void cl_on_close(lr_conn_t *c) {
  lr_client_t *cl = (lr_client_t *)c;
  lr_outbound_t *ob = c->worker->outbound;
  if (ob) {
    lr__pool_remove(ob, cl);
    ob->n_conns--;
  }
  cl->state = LR_CL_CLOSED;
  if (cl->err[0] == 0) snprintf(cl->err, sizeof cl->err, "closed");
  notify(cl, LR_CEV_CLOSED); /* the owner may take cl->in */
  cl->notify = NULL;
  priv_free(cl->priv);
  cl->priv = NULL;
  free(cl->key);
  cl->key = NULL;
  lr_buf_free(&cl->in);
}

const lr_proto_t lr_client_proto = {
    .name = "client",
    .on_read = cl_on_read,
    .on_eof = cl_on_eof,
    .on_drain = cl_on_drain,
    .on_close = cl_on_close,
};

/* ---- API ---- */

/* built by hand: snprintf cost more than the rest of a pooled request's setup */
static size_t key_put(char *p, size_t at, size_t size, const char *s, size_t n) {
  if (at + n < size) memcpy(p + at, s, n);
  return at + n;
}

static size_t key_num(char *p, size_t at, size_t size, unsigned v) {
  char d[12];
  size_t n = 0;
  do d[sizeof d - 1 - n++] = (char)('0' + v % 10); while ((v /= 10) && n < sizeof d);
  return key_put(p, at, size, d + sizeof d - n, n);
}

int lr_client_key_into(const lr_client_opts_t *o, char *buf, size_t size) {
  const char *sni = o->sni ? o->sni : "", *ca = o->ca ? o->ca : "", *alpn = o->alpn ? o->alpn : "";
  size_t n = key_put(buf, 0, size, o->host, strlen(o->host));
  n = key_put(buf, n, size, "|", 1);
  n = key_num(buf, n, size, (unsigned)o->port);
  n = key_put(buf, n, size, o->tls ? "|1|" : "|0|", 3);
  n = key_put(buf, n, size, sni, strlen(sni));
  n = key_put(buf, n, size, o->verify ? "|1|" : "|0|", 3);
  n = key_put(buf, n, size, ca, strlen(ca));
  n = key_put(buf, n, size, "|", 1);
  n = key_put(buf, n, size, alpn, strlen(alpn));
  if (n >= size) return -1;
  buf[n] = 0;
  return (int)n;
}

char *lr_client_key(const lr_client_opts_t *o) {
  char buf[1024];
  if (lr_client_key_into(o, buf, sizeof buf) < 0) return NULL;
  return strdup(buf);
}

uint32_t lr_client_key_hash(const char *key) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (const unsigned char *p = (const unsigned char *)key; *p; p++) h = (h ^ *p) * 16777619u;
  return h;
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

int lr_client_open(lr_worker_t *w, const lr_client_opts_t *o, void (*cb)(lr_client_t *, int), void *owner,
                   lr_client_t **out, char *err, size_t errlen) {
  *out = NULL;
  lr_outbound_t *ob = lr__outbound(w);
  char kbuf[1024];
  const char *kp = o->key;
  uint32_t hash = o->key_hash;
  if (ob == NULL || (kp == NULL && lr_client_key_into(o, kbuf, sizeof kbuf) < 0)) {
    snprintf(err, errlen, ob ? "host name too long" : "out of memory");
    return UV_ENOMEM;
  }
  if (kp == NULL) {
    kp = kbuf;
    hash = lr_client_key_hash(kbuf);
  }
  lr_client_t *cl = o->fresh ? NULL : lr__pool_take(ob, kp, hash, o->replayable);
  if (cl) {
    cl->notify = cb;
    cl->owner = owner;
    cl->reused = 1;
    *out = cl;
    return 0;
  }
  unsigned cap = w->cfg->max_outbound;
  if (cap && ob->n_conns >= cap && !lr__pool_evict_one(ob)) {
    snprintf(err, errlen, "too many outbound connections");
    return UV_EAGAIN;
  }
  char *key = strdup(kp);
  cl = key ? client_new(w) : NULL;
  struct lr_client_priv_s *p = cl ? calloc(1, sizeof *p) : NULL;
  if (p == NULL) {
    free(key);
    if (cl) lr_conn_close(&cl->conn);
    snprintf(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  cl->key = key;
  cl->key_hash = hash;
  cl->priv = p;
  p->o = *o;
  p->o.key = NULL; /* the caller's, which may go before this connection does */
  p->o.host = p->host = strdup(o->host);
  p->o.sni = p->sni = dup_or_null(o->sni);
  p->o.ca = p->ca = dup_or_null(o->ca);
  p->o.alpn = p->alpn = dup_or_null(o->alpn);
  int n = lr_dns_cached(w, o->host, p->addrs, LR_DNS_MAX);
  if (n < 0) {
    snprintf(err, errlen, "could not resolve %s: %s", o->host, uv_strerror(n));
    lr_conn_close(&cl->conn);
    return n;
  }
  cl->notify = cb;
  cl->owner = owner;
  *out = cl;
  if (n > 0) {
    p->n_addrs = n;
    start_connect(cl);
  } else {
    p->q = lr_dns_query(w, o->host, on_resolved, cl);
    if (p->q == NULL) fail(cl, "could not resolve: out of memory");
  }
  return 0;
}

int lr_client_write(lr_client_t *cl, const void *p, size_t n) {
  if (cl->state != LR_CL_OPEN || (cl->conn.flags & LR_CF_CLOSING)) return LR_ECLOSED;
  lr_conn_write(&cl->conn, p, n);
  return 0;
}

int lr_client_write_blocked(const lr_client_t *cl) { return lr_conn_queued(&cl->conn) > LR_OUT_HIGH; }

void lr_client_consume(lr_client_t *cl, size_t n) {
  lr_buf_consume(&cl->in, n);
  if (cl->in.len < (cl->in_max ? cl->in_max : IN_MAX) / 2 && !cl->eof) lr_conn_read_start(&cl->conn);
}

void lr_client_want(lr_client_t *cl, size_t n) {
  cl->in_max = n > IN_MAX ? n : 0;
  if (cl->in.len < (cl->in_max ? cl->in_max : IN_MAX) && !cl->eof) lr_conn_read_start(&cl->conn);
}

void lr_client_close(lr_client_t *cl) {
  cl->notify = NULL;
  cl->owner = NULL;
  lr_conn_close(&cl->conn);
}

int lr_client_keepalive(lr_client_t *cl, uint64_t idle_ms, unsigned size) {
  cl->notify = NULL;
  cl->owner = NULL;
  if (cl->state != LR_CL_OPEN || cl->eof || cl->in.len || (cl->conn.flags & LR_CF_CLOSING) || cl->key == NULL) {
    lr_conn_close(&cl->conn);
    return -1;
  }
  lr__pool_put(cl->conn.worker->outbound, cl, idle_ms, size);
  return 0;
}

unsigned lr_client_count(lr_worker_t *w) { return w->outbound ? ((lr_outbound_t *)w->outbound)->n_conns : 0; }

void lr__outbound_stop(lr_worker_t *w) {
  if (w->outbound) lr__pool_close_all(w->outbound);
}

void lr__outbound_free(lr_worker_t *w) {
  lr_outbound_t *ob = w->outbound;
  if (ob == NULL) return;
  lr__h2c_free_all(ob);
  lr__pool_close_all(ob);
  lr__dns_free(w, ob->dns);
  ob->dns = NULL;
  w->outbound = NULL;
  ob->sweep.data = ob;
  uv_close((uv_handle_t *)&ob->sweep, on_close_sweep);
}
