/* Redis over hiredis's async API, on the worker's own loop.
 *
 * The event adapter is ours (hiredis's adapters/libuv.h is the model): its
 * uv_poll_t is unreferenced, so an idle connection does not keep a stopping
 * worker alive, and replies are not handed out from inside hiredis. hiredis
 * frees a reply when its callback returns and forbids re-entering it from a
 * callback, so each reply is copied into a completion list and delivered after
 * hiredis returns (flush): a callee may then send, wait, or close freely.
 *
 * A connection that failed (refused, closed by the server, timed out) is
 * forgotten; the next command connects again. */
#include <ctype.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"

struct lr_redis_pending_s {
  lr_redis_cb cb; /* NULL: dropped */
  void *data;
  lr_redis_conn_t *conn;
  int keep;     /* a subscription: owned by the connection, called per reply */
  int lost;     /* keep: its connection went, told once */
  int queued;   /* completions not yet delivered */
  lr_redis_pending_t *next_sub;
};

typedef struct done_s {
  lr_redis_pending_t *p;
  redisReply *reply;
  struct done_s *next;
  char err[128];
} done_t;

typedef struct poller_s {
  uv_poll_t h;
  redisAsyncContext *ac; /* NULL once hiredis cleaned up */
  lr_redis_conn_t *c;
  int events;
} poller_t;

struct lr_redis_conn_s {
  uv_loop_t *loop;
  lr_redis_url_t url;
  redisAsyncContext *ac; /* NULL: not connected */
  int connected;
  int failed;            /* last connection failed; cleared by the next connect */
  char why[128];         /* why we dropped it ourselves (reset) */
  uv_timer_t *timer;     /* connect timeout */
  done_t *done_head, *done_tail;
  lr_redis_pending_t *subs;
  unsigned npending;
  int busy, free_pending;
  lr_link_t all;
};

static pthread_mutex_t all_mu = PTHREAD_MUTEX_INITIALIZER;
static lr_link_t all_conns = {&all_conns, &all_conns};
static int exiting; /* lr_redis_free_all: deliver nothing any more */

/* ---- replies ---- */

void lr_redis_reply_free(redisReply *r) {
  if (r == NULL) return;
  for (size_t i = 0; i < r->elements; i++) lr_redis_reply_free(r->element[i]);
  free(r->element);
  free(r->str);
  free(r);
}

static redisReply *copy_reply(const redisReply *r) {
  redisReply *o = calloc(1, sizeof *o);
  if (o == NULL) return NULL;
  o->type = r->type;
  o->integer = r->integer;
  if (r->str) {
    o->str = malloc(r->len + 1);
    if (o->str == NULL) goto oom;
    memcpy(o->str, r->str, r->len);
    o->str[r->len] = '\0';
    o->len = r->len;
  }
  if (r->elements) {
    o->element = calloc(r->elements, sizeof *o->element);
    if (o->element == NULL) goto oom;
    for (size_t i = 0; i < r->elements; i++) {
      o->elements = i + 1;
      if ((o->element[i] = copy_reply(r->element[i])) == NULL) goto oom;
    }
  }
  return o;
oom:
  lr_redis_reply_free(o);
  return NULL;
}

/* hiredis says "Connection refused"; lariat says "connection refused" */
static void short_err(char *dst, size_t n, const char *src) {
  snprintf(dst, n, "%s", src && *src ? src : "closed");
  if (strcmp(dst, "Server closed the connection") == 0) snprintf(dst, n, "closed");
  if (isupper((unsigned char)dst[0]) && islower((unsigned char)dst[1])) dst[0] = (char)tolower((unsigned char)dst[0]);
}

/* ---- delivery, outside hiredis ---- */

static void really_free(lr_redis_conn_t *c);

static void flush(lr_redis_conn_t *c) {
  c->busy++;
  while (c->done_head) {
    done_t *d = c->done_head;
    c->done_head = d->next;
    if (c->done_head == NULL) c->done_tail = NULL;
    lr_redis_pending_t *p = d->p;
    /* a lost subscription's p is freed by the next connect, which its cb may
     * start (a resubscribe): nothing of p is read after the cb */
    int keep = p->keep;
    p->queued--;
    if (p->cb && !exiting)
      p->cb(p->data, d->reply, d->reply ? NULL : d->err);
    else
      lr_redis_reply_free(d->reply);
    if (!keep) free(p);
    free(d);
  }
  c->busy--;
  if (c->busy == 0 && c->free_pending) really_free(c);
}

static void on_reply(redisAsyncContext *ac, void *r, void *priv) {
  lr_redis_pending_t *p = priv;
  lr_redis_conn_t *c = p->conn;
  if (p->keep) {
    if (r == NULL) {
      if (p->lost) return; /* hiredis calls once per channel */
      p->lost = 1;
    }
  } else {
    c->npending--;
  }
  done_t *d = calloc(1, sizeof *d);
  if (d == NULL) return; /* out of memory: the reply is lost, its waiter times out */
  d->p = p;
  if (r) {
    d->reply = copy_reply(r);
    if (d->reply == NULL) snprintf(d->err, sizeof d->err, "out of memory");
  } else if (ac->err) {
    short_err(d->err, sizeof d->err, ac->errstr);
  } else {
    snprintf(d->err, sizeof d->err, "%s", c->why[0] ? c->why : "closed");
  }
  p->queued++;
  if (c->done_tail)
    c->done_tail->next = d;
  else
    c->done_head = d;
  c->done_tail = d;
}

static void on_connect(const redisAsyncContext *ac, int status) {
  lr_redis_conn_t *c = ac->data;
  if (c->ac != ac) return;
  uv_timer_stop(c->timer);
  if (status == REDIS_OK) {
    c->connected = 1;
    return;
  }
  c->ac = NULL; /* hiredis frees it after this callback */
  c->failed = 1;
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  lr_redis_conn_t *c = ac->data;
  (void)status;
  if (c->ac != ac) return;
  c->ac = NULL;
  c->connected = 0;
  c->failed = 1;
}

/* ---- the event adapter ---- */

static void on_poll(uv_poll_t *h, int status, int events) {
  poller_t *pl = h->data;
  lr_redis_conn_t *c = pl->c;
  c->busy++;
  if (status < 0) {
    /* libuv reports POLLERR as an error status and stops the handle: let hiredis
     * find the socket's error (a refused connect, a reset) so it can say which */
    if (pl->ac && c->connected) redisAsyncHandleRead(pl->ac);
    else if (pl->ac) redisAsyncHandleWrite(pl->ac);
    if (pl->ac) lr_redis_conn_reset(c, "closed");
  } else {
    if (pl->ac && (events & UV_READABLE)) redisAsyncHandleRead(pl->ac);
    if (pl->ac && (events & UV_WRITABLE)) redisAsyncHandleWrite(pl->ac);
  }
  c->busy--;
  flush(c);
}

static void ev_update(poller_t *pl) {
  if (pl->ac == NULL) return;
  if (pl->events)
    uv_poll_start(&pl->h, pl->events, on_poll);
  else
    uv_poll_stop(&pl->h);
}
static void ev_add_read(void *d) { ((poller_t *)d)->events |= UV_READABLE, ev_update(d); }
static void ev_del_read(void *d) { ((poller_t *)d)->events &= ~UV_READABLE, ev_update(d); }
static void ev_add_write(void *d) { ((poller_t *)d)->events |= UV_WRITABLE, ev_update(d); }
static void ev_del_write(void *d) { ((poller_t *)d)->events &= ~UV_WRITABLE, ev_update(d); }
static void on_poller_close(uv_handle_t *h) { free(h->data); }
static void ev_cleanup(void *d) {
  poller_t *pl = d;
  if (pl->ac == NULL) return;
  pl->ac = NULL;
  uv_close((uv_handle_t *)&pl->h, on_poller_close);
}

static void on_connect_timeout(uv_timer_t *t) {
  lr_redis_conn_t *c = t->data;
  if (c->ac && !c->connected) lr_redis_conn_reset(c, "timeout");
}

/* ---- connections ---- */

static int conn_connect(lr_redis_conn_t *c, char *err, size_t errlen) {
  /* sweep subscriptions whose connection is gone and whose news was told */
  for (lr_redis_pending_t **pp = &c->subs; *pp;) {
    lr_redis_pending_t *p = *pp;
    if (p->lost && p->queued == 0) {
      *pp = p->next_sub;
      free(p);
    } else {
      pp = &p->next_sub;
    }
  }
  redisAsyncContext *ac = redisAsyncConnect(c->url.host, c->url.port);
  if (ac == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  if (ac->err) {
    short_err(err, errlen, ac->errstr);
    redisAsyncFree(ac);
    return -1;
  }
  poller_t *pl = calloc(1, sizeof *pl);
  if (pl == NULL || uv_poll_init(c->loop, &pl->h, ac->c.fd) != 0) {
    free(pl);
    redisAsyncFree(ac);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  uv_unref((uv_handle_t *)&pl->h);
  pl->h.data = pl;
  pl->ac = ac;
  pl->c = c;
  ac->ev.addRead = ev_add_read;
  ac->ev.delRead = ev_del_read;
  ac->ev.addWrite = ev_add_write;
  ac->ev.delWrite = ev_del_write;
  ac->ev.cleanup = ev_cleanup;
  ac->ev.data = pl;
  ac->data = c;
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  c->ac = ac;
  c->connected = 0;
  c->failed = 0;
  c->why[0] = '\0';
  if (c->url.connect_timeout_ms) uv_timer_start(c->timer, on_connect_timeout, c->url.connect_timeout_ms, 0);
  /* AUTH and SELECT go first; a failure shows in the replies that follow (NOAUTH …) */
  char db[16];
  if (c->url.password[0]) {
    const char *argv[3] = {"AUTH", c->url.user, c->url.password};
    size_t lens[3] = {4, strlen(c->url.user), strlen(c->url.password)};
    int user = c->url.user[0] != '\0';
    if (!user) { /* AUTH password (Redis < 6 style, the default user) */
      argv[1] = argv[2];
      lens[1] = lens[2];
    }
    lr_redis_pending_t *p = calloc(1, sizeof *p);
    if (p == NULL) return 0;
    p->conn = c;
    if (redisAsyncCommandArgv(ac, on_reply, p, 2 + user, argv, lens) == REDIS_OK)
      c->npending++;
    else
      free(p);
  }
  if (c->url.db) {
    snprintf(db, sizeof db, "%d", c->url.db);
    const char *argv[2] = {"SELECT", db};
    size_t lens[2] = {6, strlen(db)};
    lr_redis_pending_t *p = calloc(1, sizeof *p);
    if (p == NULL) return 0;
    p->conn = c;
    if (redisAsyncCommandArgv(ac, on_reply, p, 2, argv, lens) == REDIS_OK)
      c->npending++;
    else
      free(p);
  }
  return 0;
}

lr_redis_conn_t *lr_redis_conn_new(uv_loop_t *loop, const lr_redis_url_t *u) {
  lr_redis_conn_t *c = calloc(1, sizeof *c);
  if (c == NULL) return NULL;
  c->timer = malloc(sizeof *c->timer);
  if (c->timer == NULL) {
    free(c);
    return NULL;
  }
  c->loop = loop;
  c->url = *u;
  uv_timer_init(loop, c->timer);
  uv_unref((uv_handle_t *)c->timer);
  c->timer->data = c;
  pthread_mutex_lock(&all_mu);
  lr_list_push(&all_conns, &c->all);
  pthread_mutex_unlock(&all_mu);
  return c;
}

static lr_redis_pending_t *send_cmd(lr_redis_conn_t *c, int argc, const char **argv, const size_t *lens,
                                    lr_redis_cb cb, void *data, int keep, char *err, size_t errlen) {
  if (c->ac == NULL && conn_connect(c, err, errlen)) return NULL;
  lr_redis_pending_t *p = calloc(1, sizeof *p);
  if (p == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  p->cb = cb;
  p->data = data;
  p->conn = c;
  p->keep = keep;
  if (redisAsyncCommandArgv(c->ac, on_reply, p, argc, argv, lens) != REDIS_OK) {
    free(p);
    snprintf(err, errlen, "closed");
    return NULL;
  }
  if (keep) {
    p->next_sub = c->subs;
    c->subs = p;
  } else {
    c->npending++;
  }
  return p;
}

lr_redis_pending_t *lr_redis_send(lr_redis_conn_t *c, int argc, const char **argv, const size_t *lens,
                                  lr_redis_cb cb, void *data, char *err, size_t errlen) {
  return send_cmd(c, argc, argv, lens, cb, data, 0, err, errlen);
}

int lr_redis_subscribe(lr_redis_conn_t *c, int argc, const char **argv, const size_t *lens, lr_redis_cb cb,
                       void *data, char *err, size_t errlen) {
  return send_cmd(c, argc, argv, lens, cb, data, 1, err, errlen) ? 0 : -1;
}

void lr_redis_pending_drop(lr_redis_pending_t *p) {
  p->cb = NULL;
  p->data = NULL;
}

void lr_redis_conn_reset(lr_redis_conn_t *c, const char *why) {
  redisAsyncContext *ac = c->ac;
  if (ac == NULL) return;
  snprintf(c->why, sizeof c->why, "%s", why);
  c->ac = NULL;
  c->connected = 0;
  c->failed = 1;
  uv_timer_stop(c->timer);
  c->busy++;
  redisAsyncFree(ac); /* pending callbacks run now, with NULL: queued as failures */
  c->busy--;
  flush(c);
}

int lr_redis_conn_usable(const lr_redis_conn_t *c) { return c->ac != NULL; }
unsigned lr_redis_conn_pending(const lr_redis_conn_t *c) { return c->npending; }

static void on_timer_close(uv_handle_t *h) { free(h); }

static void really_free(lr_redis_conn_t *c) {
  c->free_pending = 0;
  c->busy++;
  if (c->ac) {
    redisAsyncContext *ac = c->ac;
    c->ac = NULL;
    snprintf(c->why, sizeof c->why, "closed");
    redisAsyncFree(ac);
  }
  /* the subscriptions' last news goes nowhere now */
  for (lr_redis_pending_t *p = c->subs; p; p = p->next_sub) lr_redis_pending_drop(p);
  c->busy--;
  flush(c);
  while (c->subs) {
    lr_redis_pending_t *p = c->subs;
    c->subs = p->next_sub;
    free(p);
  }
  uv_close((uv_handle_t *)c->timer, on_timer_close);
  pthread_mutex_lock(&all_mu);
  lr_link_unlink(&c->all);
  pthread_mutex_unlock(&all_mu);
  free(c);
}

void lr_redis_conn_free(lr_redis_conn_t *c) {
  /* the owner goes now, even if the connection has to wait to be freed */
  for (lr_redis_pending_t *p = c->subs; p; p = p->next_sub) lr_redis_pending_drop(p);
  if (c->busy) {
    c->free_pending = 1; /* inside a delivery from this connection: after it */
    return;
  }
  really_free(c);
}

void lr_redis_free_all(void) {
  exiting = 1;
  pthread_mutex_lock(&all_mu);
  while (!lr_list_empty(&all_conns)) {
    lr_redis_conn_t *c = LR_CONTAINER_OF(all_conns.next, lr_redis_conn_t, all);
    pthread_mutex_unlock(&all_mu);
    really_free(c);
    pthread_mutex_lock(&all_mu);
  }
  pthread_mutex_unlock(&all_mu);
}

/* ---- URLs ---- */

static int pct_decode(char *dst, size_t n, const char *s, size_t len) {
  size_t o = 0;
  for (size_t i = 0; i < len; i++) {
    char ch = s[i];
    if (ch == '%' && i + 2 < len && isxdigit((unsigned char)s[i + 1]) && isxdigit((unsigned char)s[i + 2])) {
      char hex[3] = {s[i + 1], s[i + 2], 0};
      ch = (char)strtol(hex, NULL, 16);
      i += 2;
    }
    if (o + 1 >= n) return -1;
    dst[o++] = ch;
  }
  dst[o] = '\0';
  return 0;
}

int lr_redis_url_parse(const char *url, lr_redis_url_t *u, char *err, size_t errlen) {
  memset(u, 0, sizeof *u);
  u->port = 6379;
  u->connect_timeout_ms = 5000;
  u->timeout_ms = 10000;
  if (strncmp(url, "rediss://", 9) == 0) {
    snprintf(err, errlen, "rediss: TLS to Redis is not supported (hiredis 0.14)");
    return -1;
  }
  if (strncmp(url, "redis://", 8) != 0) {
    snprintf(err, errlen, "not a redis:// URL: %s", url);
    return -1;
  }
  const char *p = url + 8;
  const char *end = p + strcspn(p, "/?");
  const char *at = memchr(p, '@', (size_t)(end - p));
  if (at) {
    const char *colon = memchr(p, ':', (size_t)(at - p));
    if (colon) {
      if (pct_decode(u->user, sizeof u->user, p, (size_t)(colon - p)) ||
          pct_decode(u->password, sizeof u->password, colon + 1, (size_t)(at - colon - 1)))
        goto bad;
    } else if (pct_decode(u->password, sizeof u->password, p, (size_t)(at - p))) {
      goto bad;
    }
    p = at + 1;
  }
  const char *hend = end;
  if (*p == '[') { /* [v6]:port */
    const char *rb = memchr(p, ']', (size_t)(end - p));
    if (rb == NULL) goto bad;
    if ((size_t)(rb - p - 1) >= sizeof u->host) goto bad;
    memcpy(u->host, p + 1, (size_t)(rb - p - 1));
    p = rb + 1;
    if (p < end && *p == ':') u->port = atoi(p + 1);
  } else {
    const char *colon = memchr(p, ':', (size_t)(end - p));
    if (colon) {
      hend = colon;
      u->port = atoi(colon + 1);
    }
    if ((size_t)(hend - p) >= sizeof u->host) goto bad;
    memcpy(u->host, p, (size_t)(hend - p));
  }
  if (u->host[0] == '\0') snprintf(u->host, sizeof u->host, "127.0.0.1");
  if (u->port <= 0 || u->port > 65535) goto bad;
  p = end;
  if (*p == '/') {
    p++;
    if (isdigit((unsigned char)*p)) u->db = atoi(p);
    p += strcspn(p, "?");
  }
  if (*p == '?') {
    const char *t = strstr(p, "timeout=");
    if (t) {
      double s = atof(t + 8);
      if (s > 0) u->timeout_ms = u->connect_timeout_ms = (uint64_t)(s * 1000 + 0.5);
    }
  }
  return 0;
bad:
  snprintf(err, errlen, "bad redis URL: %s", url);
  return -1;
}
