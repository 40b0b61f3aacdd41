/* lariat.channel: publish/subscribe between coroutines, across workers.
 *
 * A channel is a name; a subscription is a bounded queue of messages (byte
 * strings) a coroutine can wait on. Within a worker, a message is copied out
 * of Lua once and shared by every subscriber, so it also crosses app versions
 * after a reload (the registry belongs to the worker thread, not to a
 * lua_State). Other workers get their own copy through a mailbox and a
 * uv_async wake-up, and deliver it from their own loop.
 *
 * With --redis (cluster.c) a publish goes through Redis first; once Redis took
 * it, this process delivers it as above, and every other instance gets it from
 * its own subscription (a message from this instance is not delivered twice). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "bindings.h"

#define LR_SUB_MT "lariat.subscription"

typedef struct chmsg_s {
  unsigned refs;
  size_t len;
  char data[];
} chmsg_t;

typedef struct chan_s {
  lr_link_t link; /* in the worker's list */
  lr_link_t subs;
  unsigned n_subs;
  size_t nlen;
  char name[];
} chan_t;

typedef struct sub_s {
  lr_link_t link; /* in chan->subs */
  chan_t *ch;     /* NULL once closed */
  chmsg_t **q;
  unsigned head, n, cap;
  unsigned dropped;
  lr_link_t waiters;
} sub_t;

static __thread lr_link_t chans; /* per worker thread */

static chan_t *find(const char *name, size_t len) {
  if (chans.next == NULL) lr_list_init(&chans);
  for (lr_link_t *l = chans.next; l != &chans; l = l->next) {
    chan_t *c = LR_CONTAINER_OF(l, chan_t, link);
    if (c->nlen == len && memcmp(c->name, name, len) == 0) return c;
  }
  return NULL;
}

static void msg_unref(chmsg_t *m) {
  if (--m->refs == 0) free(m);
}

static void sub_close(sub_t *s) {
  if (s->ch == NULL) return;
  chan_t *c = s->ch;
  s->ch = NULL;
  lr_link_unlink(&s->link);
  if (--c->n_subs == 0) {
    lr_link_unlink(&c->link);
    free(c);
  }
  while (s->n) {
    msg_unref(s->q[s->head]);
    s->head = (s->head + 1) % s->cap;
    s->n--;
  }
  free(s->q);
  s->q = NULL;
  lr_wq_wake_all(&s->waiters);
}

/* queue msg for every subscriber of `name` in this worker; returns how many */
static unsigned deliver_local(const char *name, size_t nl, const char *msg, size_t ml) {
  chan_t *c = find(name, nl);
  if (c == NULL || c->n_subs == 0) return 0;
  chmsg_t *m = malloc(sizeof *m + ml);
  if (m == NULL) return 0;
  m->refs = 0;
  m->len = ml;
  memcpy(m->data, msg, ml);
  unsigned n = 0;
  for (lr_link_t *l = c->subs.next; l != &c->subs; l = l->next) {
    sub_t *s = LR_CONTAINER_OF(l, sub_t, link);
    if (s->n == s->cap) { /* a slow subscriber loses its oldest message */
      msg_unref(s->q[s->head]);
      s->head = (s->head + 1) % s->cap;
      s->n--;
      s->dropped++;
    }
    s->q[(s->head + s->n) % s->cap] = m;
    s->n++;
    m->refs++;
    n++;
  }
  /* wake after the walk: from a loop callback (mail from another worker) a
   * woken handler runs at once and may close subscriptions, even free `c` */
  lr_link_t woken;
  lr_list_init(&woken);
  for (lr_link_t *l = c->subs.next; l != &c->subs; l = l->next) {
    sub_t *s = LR_CONTAINER_OF(l, sub_t, link);
    while (s->waiters.next && !lr_list_empty(&s->waiters)) {
      lr_link_t *w = s->waiters.next;
      lr_link_unlink(w);
      lr_list_push(&woken, w);
    }
  }
  lr_wq_wake_all(&woken);
  return n;
}

/* ---- other workers: a mailbox each, drained by a uv_async on its loop ---- */

#define MAILBOX_MAX 10000 /* a stuck worker loses messages rather than memory */

typedef struct mail_s {
  struct mail_s *next;
  size_t nl, ml;
  char data[]; /* name, then message */
} mail_t;

typedef struct mailbox_s {
  pthread_mutex_t lock;
  mail_t *head, *tail;
  unsigned n, dropped;
  uv_async_t async;
  int attached;
} mailbox_t;

static mailbox_t *boxes;
static int n_boxes;

static void on_mail(uv_async_t *a) {
  mailbox_t *b = a->data;
  pthread_mutex_lock(&b->lock);
  mail_t *m = b->head;
  b->head = b->tail = NULL;
  b->n = 0;
  pthread_mutex_unlock(&b->lock);
  while (m) {
    mail_t *next = m->next;
    deliver_local(m->data, m->nl, m->data + m->nl, m->ml);
    free(m);
    m = next;
  }
}

/* main thread, before the workers run */
void lr_channel_attach(lr_worker_t *w, int n_workers) {
  if (boxes == NULL) {
    boxes = calloc((size_t)n_workers, sizeof *boxes);
    if (boxes == NULL) return;
    n_boxes = n_workers;
    for (int i = 0; i < n_workers; i++) pthread_mutex_init(&boxes[i].lock, NULL);
  }
  mailbox_t *b = &boxes[w->id];
  uv_async_init(&w->loop, &b->async, on_mail);
  b->async.data = b;
  uv_unref((uv_handle_t *)&b->async); /* mail never keeps a stopping worker alive */
  b->attached = 1;
}

/* after the workers ended */
void lr_channel_detach_all(void) {
  for (int i = 0; i < n_boxes; i++) {
    mail_t *m = boxes[i].head;
    while (m) {
      mail_t *next = m->next;
      free(m);
      m = next;
    }
    pthread_mutex_destroy(&boxes[i].lock);
  }
  free(boxes);
  boxes = NULL;
  n_boxes = 0;
}

static void post_to_others(int self, const char *name, size_t nl, const char *msg, size_t ml) {
  for (int i = 0; i < n_boxes; i++) {
    mailbox_t *b = &boxes[i];
    if (i == self || !b->attached) continue;
    mail_t *m = malloc(sizeof *m + nl + ml);
    if (m == NULL) return;
    m->next = NULL;
    m->nl = nl;
    m->ml = ml;
    memcpy(m->data, name, nl);
    memcpy(m->data + nl, msg, ml);
    pthread_mutex_lock(&b->lock);
    if (b->n >= MAILBOX_MAX) {
      b->dropped++;
      free(m);
      m = NULL;
    } else {
      if (b->tail)
        b->tail->next = m;
      else
        b->head = m;
      b->tail = m;
      b->n++;
    }
    pthread_mutex_unlock(&b->lock);
    if (m) uv_async_send(&b->async);
  }
}

/* this worker's subscribers get msg now; with self >= 0 (the publishing
 * worker) every other worker's get it from their own loops right after */
unsigned lr__channel_deliver(int self, const char *name, size_t nl, const char *msg, size_t ml) {
  unsigned n = deliver_local(name, nl, msg, ml);
  if (self >= 0) post_to_others(self, name, nl, msg, ml);
  return n;
}

/* core.ch_publish(name, msg) → subscribers reached in this worker; the
 * other workers' subscribers get it from their own loops right after */
static int l_publish(lua_State *L) {
  size_t nl, ml;
  const char *name = luaL_checklstring(L, 1, &nl);
  const char *msg = luaL_checklstring(L, 2, &ml);
  if (lr_cluster_enabled()) return lr_cluster_publish(L, name, nl, msg, ml);
  lr_app_t *app;
  lua_getallocf(L, (void **)&app);
  unsigned n = lr__channel_deliver(app->lw->w->id, name, nl, msg, ml);
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}

/* core.ch_subscribe(name[, max_queued]) → subscription */
static int l_subscribe(lua_State *L) {
  size_t nl;
  const char *name = luaL_checklstring(L, 1, &nl);
  lua_Integer max = luaL_optinteger(L, 2, 1000);
  if (max < 1) return luaL_argerror(L, 2, "must be at least 1");
  sub_t *s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  lr_list_init(&s->waiters);
  lr_list_init(&s->link);
  luaL_setmetatable(L, LR_SUB_MT);
  s->q = malloc((size_t)max * sizeof *s->q);
  if (s->q == NULL) return luaL_error(L, "lariat.channel: out of memory");
  s->cap = (unsigned)max;
  chan_t *c = find(name, nl);
  if (c == NULL) {
    c = malloc(sizeof *c + nl);
    if (c == NULL) return luaL_error(L, "lariat.channel: out of memory");
    lr_list_init(&c->subs);
    c->n_subs = 0;
    c->nlen = nl;
    memcpy(c->name, name, nl);
    lr_list_push(&chans, &c->link);
  }
  lr_list_push(&c->subs, &s->link);
  c->n_subs++;
  s->ch = c;
  if (lr_cluster_enabled()) return lr_cluster_subscribed(L); /* once this worker listens to Redis */
  return 1;
}

/* core.ch_count(name) → subscribers */
static int l_count(lua_State *L) {
  size_t nl;
  const char *name = luaL_checklstring(L, 1, &nl);
  chan_t *c = find(name, nl);
  lua_pushinteger(L, c ? c->n_subs : 0);
  return 1;
}

static sub_t *check_sub(lua_State *L) { return luaL_checkudata(L, 1, LR_SUB_MT); }

static uint64_t timeout_ms(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return 0;
  lua_Number t = luaL_checknumber(L, idx);
  return t <= 0 ? 1 : (uint64_t)(t * 1000 + 0.5);
}

/* results, or -1 to wait */
static int take(lua_State *L, sub_t *s, int each) {
  if (s->n) {
    chmsg_t *m = s->q[s->head];
    s->head = (s->head + 1) % s->cap;
    s->n--;
    lua_pushlstring(L, m->data, m->len);
    msg_unref(m);
    return 1;
  }
  if (s->ch == NULL) {
    if (each) return 0;
    luaL_pushfail(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  return -1;
}

static int recv_k(lua_State *L, int status, lua_KContext ctx);
static int each_k(lua_State *L, int status, lua_KContext ctx);

static int wait(lua_State *L, lr_co_t *co, sub_t *s, int each) {
  if (co == NULL || co->L != L || !lua_isyieldable(L))
    return luaL_error(L, "subscription: can only wait inside a handler's coroutine (or one from lariat.spawn)");
  return lr_wq_wait(L, co, &s->waiters, each ? 0 : timeout_ms(L, 2), each ? each_k : recv_k);
}

static int resumed(lua_State *L, int each) {
  lr_co_t *co = lr_co_current(L);
  lr_link_unlink(&co->wq);
  sub_t *s = check_sub(L);
  int n = take(L, s, each);
  if (n >= 0) return n;
  if (co->stopping) { /* the server stops: recv says so, each() ends */
    if (each) return 0;
    luaL_pushfail(L);
    lua_pushliteral(L, "stopping");
    return 2;
  }
  if (!each && co->timed_out) {
    co->timed_out = 0;
    luaL_pushfail(L);
    lua_pushliteral(L, "timeout");
    return 2;
  }
  return wait(L, co, s, each);
}

static int recv_k(lua_State *L, int status, lua_KContext ctx) { return resumed(L, 0); }
static int each_k(lua_State *L, int status, lua_KContext ctx) { return resumed(L, 1); }

/* sub:recv([timeout]) → msg | nil, "timeout" | nil, "closed" */
static int m_recv(lua_State *L) {
  sub_t *s = check_sub(L);
  lua_settop(L, 2);
  int n = take(L, s, 0);
  if (n >= 0) return n;
  return wait(L, lr_co_current(L), s, 0);
}

static int each_iter(lua_State *L) {
  lua_settop(L, 0);
  lua_pushvalue(L, lua_upvalueindex(1));
  sub_t *s = check_sub(L);
  int n = take(L, s, 1);
  if (n >= 0) return n;
  return wait(L, lr_co_current(L), s, 1);
}

/* for msg in sub:each() do ... end — ends when the subscription is closed */
static int m_each(lua_State *L) {
  check_sub(L);
  lua_settop(L, 1);
  lua_pushcclosure(L, each_iter, 1);
  return 1;
}

static int m_close(lua_State *L) {
  sub_close(check_sub(L));
  return 0;
}

static int m_pending(lua_State *L) {
  sub_t *s = check_sub(L);
  lua_pushinteger(L, s->n);
  lua_pushinteger(L, s->dropped);
  return 2;
}

static const luaL_Reg sub_methods[] = {
    {"recv", m_recv}, {"each", m_each}, {"close", m_close}, {"pending", m_pending}, {NULL, NULL},
};

int lr_channel_open(lua_State *L) {
  if (luaL_newmetatable(L, LR_SUB_MT)) {
    lua_newtable(L);
    luaL_setfuncs(L, sub_methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, m_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, m_close);
    lua_setfield(L, -2, "__close");
    lua_pushliteral(L, "subscription");
    lua_setfield(L, -2, "__name");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_publish);
  lua_setfield(L, -2, "ch_publish");
  lua_pushcfunction(L, l_subscribe);
  lua_setfield(L, -2, "ch_subscribe");
  lua_pushcfunction(L, l_count);
  lua_setfield(L, -2, "ch_count");
  return 0;
}
