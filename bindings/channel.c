/* lariat.channel: publish/subscribe between the coroutines of one worker.
 *
 * A channel is a name; a subscription is a bounded queue of messages (byte
 * strings) a coroutine can wait on. Messages are copied out of Lua once and
 * shared by every subscriber, so they also cross app versions after a reload
 * (the registry belongs to the worker thread, not to a lua_State). Delivery
 * to other workers can be added under the same calls: publish would also post
 * the message to their loops. */
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

/* core.ch_publish(name, msg) → number of subscribers it was queued for */
static int l_publish(lua_State *L) {
  size_t nl, ml;
  const char *name = luaL_checklstring(L, 1, &nl);
  const char *msg = luaL_checklstring(L, 2, &ml);
  chan_t *c = find(name, nl);
  if (c == NULL || c->n_subs == 0) {
    lua_pushinteger(L, 0);
    return 1;
  }
  chmsg_t *m = malloc(sizeof *m + ml);
  if (m == NULL) return luaL_error(L, "lariat.channel: out of memory");
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
  for (lr_link_t *l = c->subs.next; l != &c->subs; l = l->next) {
    sub_t *s = LR_CONTAINER_OF(l, sub_t, link);
    lr_wq_wake_all(&s->waiters); /* deferred: Lua is running */
  }
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
