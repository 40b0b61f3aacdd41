/* bindings/subscription.c: what a PostgreSQL LISTEN (pg.c) and a Redis
 * SUBSCRIBE (redis.c) have in common on the Lua side — the bounded queue of
 * received messages (a slow reader loses the oldest, not the worker's memory),
 * the one coroutine waiting for confirmation or in sub:recv, what a lost
 * connection means (the next recv subscribes again; what came meanwhile is
 * lost), and the sub object's recv/close/__gc/__close. The driver says how a
 * message becomes Lua values and how it (re)subscribes and closes. */
#include <stdlib.h>
#include <string.h>

#include <stdio.h>

#include "bindings.h"

static void wake(lr_sub_t *s) {
  if (s->waiter) {
    lr_co_t *co = s->waiter;
    s->waiter = NULL;
    lr_co_wake(co);
  }
}

static void *dequeue(lr_sub_t *s) {
  void *msg = s->q[s->head];
  s->head = (s->head + 1) % LR_SUB_MAX_QUEUED;
  s->n--;
  return msg;
}

static void destroy(lr_sub_t *s) {
  s->waiter = NULL;
  s->drv->close_conn(s);
  while (s->n) s->drv->free_msg(dequeue(s));
  free(s->q);
  s->drv->destroy(s);
}

/* the waiting coroutine went (its client left, its version was torn down):
 * the connection goes now, not whenever the garbage collector finds the sub */
static void cancel(lr_co_t *co, void *arg) {
  lr_sub_t *s = arg;
  (void)co;
  s->waiter = NULL;
  s->drv->close_conn(s);
  lr_sub_lost(s, "closed");
}

static int wait_for(lua_State *L, lr_sub_t *s, uint64_t ms, lua_KFunction k) {
  s->waiter = lr_co_current(L);
  return lr_co_wait(L, s->waiter, ms, cancel, s, k);
}

/* why a wake-up with nothing to deliver ends the wait, or NULL to keep waiting */
static const char *why_stop(lua_State *L, lr_sub_t *s) {
  lr_co_t *co = lr_co_current(L);
  return s->lost ? s->err : co->timed_out ? "timeout" : co->stopping ? "stopping" : NULL;
}

static int fail(lua_State *L, const char *why) {
  luaL_pushfail(L);
  lua_pushstring(L, why);
  return 2;
}

static void require_coroutine(lua_State *L, const lr_sub_t *s, const char *what) {
  lr_co_t *co = lr_co_current(L);
  if (co == NULL || co->L != L || !lua_isyieldable(L))
    luaL_error(L, "%s: %s runs in a handler's coroutine (or one from lariat.spawn)", s->drv->name, what);
}

static int subscribe(lua_State *L, lr_sub_t *s) {
  s->lost = 0;
  s->err[0] = '\0';
  return s->drv->subscribe(L, s, s->err, sizeof s->err);
}

/* ---- start: wait until the server confirmed every subscription ---- */

static int start_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lr_sub_t **box = lua_touserdata(L, -1);
  lr_sub_t *s = *box;
  s->waiter = NULL;
  if (s->pending == 0) return 1;
  const char *why = why_stop(L, s);
  if (why == NULL) return wait_for(L, s, s->wait_ms, start_k);
  *box = NULL;
  fail(L, why);
  destroy(s);
  return 2;
}

int lr_sub_start(lua_State *L, const char *mt, lr_sub_t *s) {
  lr_sub_t **box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  luaL_setmetatable(L, mt);
  s->q = calloc(LR_SUB_MAX_QUEUED, sizeof *s->q);
  if (s->q == NULL) {
    s->drv->destroy(s);
    return luaL_error(L, "out of memory");
  }
  *box = s; /* from here the box frees s, whatever happens */
  require_coroutine(L, s, "subscribing");
  if (subscribe(L, s)) {
    *box = NULL;
    fail(L, s->err);
    destroy(s);
    return 2;
  }
  return wait_for(L, s, s->wait_ms, start_k);
}

/* ---- what the driver reports ---- */

void lr_sub_message(lr_sub_t *s, void *msg) {
  if (s->n == LR_SUB_MAX_QUEUED) {
    s->drv->free_msg(dequeue(s));
    s->dropped++;
  }
  s->q[(s->head + s->n) % LR_SUB_MAX_QUEUED] = msg;
  s->n++;
  wake(s);
}

void lr_sub_confirmed(lr_sub_t *s) {
  if (s->pending > 0 && --s->pending == 0) wake(s);
}

void lr_sub_lost(lr_sub_t *s, const char *err) {
  s->lost = 1;
  snprintf(s->err, sizeof s->err, "%s", err);
  wake(s);
}

/* ---- sub:recv([timeout]), sub:close() ---- */

static lr_sub_t **check_box(lua_State *L) {
  return luaL_checkudata(L, 1, lua_tostring(L, lua_upvalueindex(1)));
}

static int deliver(lua_State *L, lr_sub_t *s) {
  void *msg = dequeue(s);
  int n = s->drv->push(L, msg);
  s->drv->free_msg(msg);
  return n;
}

static int recv_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lr_sub_t *s = *(lr_sub_t **)lua_touserdata(L, 1);
  if (s == NULL) return fail(L, "closed");
  s->waiter = NULL;
  if (s->n) return deliver(L, s);
  const char *why = why_stop(L, s);
  if (why == NULL) return wait_for(L, s, s->recv_ms, recv_k); /* a confirmation woke us: keep waiting */
  return fail(L, why);
}

static int m_recv(lua_State *L) {
  lr_sub_t *s = *check_box(L);
  if (s == NULL) return luaL_error(L, "%s: subscription is closed", lua_tostring(L, lua_upvalueindex(2)));
  double t = luaL_optnumber(L, 2, 0);
  lua_settop(L, 1);
  if (s->n) return deliver(L, s);
  require_coroutine(L, s, "recv");
  if (s->lost && subscribe(L, s)) return fail(L, s->err); /* the connection went since */
  s->recv_ms = t > 0 ? (uint64_t)(t * 1000 + 0.5) : 0;
  return wait_for(L, s, s->recv_ms, recv_k);
}

static int m_close(lua_State *L) {
  lr_sub_t **box = check_box(L);
  if (*box) {
    if ((*box)->waiter) return luaL_error(L, "%s: subscription is being waited on", (*box)->drv->name);
    destroy(*box);
    *box = NULL;
  }
  return 0;
}

static int m_gc(lua_State *L) {
  lr_sub_t **box = check_box(L);
  if (*box) destroy(*box);
  *box = NULL;
  return 0;
}

void lr_sub_metatable(lua_State *L, const char *mt, const char *name) {
  static const luaL_Reg methods[] = {{"recv", m_recv}, {"close", m_close}, {NULL, NULL}};
  luaL_newmetatable(L, mt);
  lua_createtable(L, 0, 2);
  lua_pushstring(L, mt);
  lua_pushstring(L, name);
  luaL_setfuncs(L, methods, 2);
  lua_setfield(L, -2, "__index");
  lua_pushstring(L, mt);
  lua_pushcclosure(L, m_gc, 1);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__gc");
  lua_setfield(L, -2, "__close");
  lua_pop(L, 1);
}
