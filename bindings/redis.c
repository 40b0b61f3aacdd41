/* lariat.redis: Redis from handlers, over this worker's connections
 * (core/data/redis.c).
 *
 *   lariat.redis.connect(url[, {timeout=seconds}]) → r    (cheap: a handle on this
 *       worker's client for url; concurrent commands are pipelined on one connection)
 *   r:call(cmd, ...) → reply | nil, err;  r:get(k), r:set(k, v, "EX", 10), … any command
 *   r:pipeline(function(p) p:set(…); p:get(…) end) → { reply, … } | nil, err
 *   r:subscribe(channel, ...) / r:psubscribe(pattern, ...) → sub
 *   sub:recv([timeout]) → channel, message[, pattern] | nil, err;  sub:close()
 *
 * Replies: status → string ("OK"), integer → integer, bulk → string, nil bulk →
 * lariat.null, array → Lua array as sent; an error reply → nil, "ERR …" (inside
 * an array or a pipeline's results: {false, "ERR …"}).
 * Blocking commands (BLPOP, XREAD BLOCK, …) run on a dedicated connection;
 * MULTI/EXEC belong in a pipeline (sent back to back, so nothing interleaves). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <hiredis/hiredis.h>

#include "../core/data/data.h"
#include "bindings.h"

#define R_MT "lariat.redis"
#define SUB_MT "lariat.redis.sub"
#define PIPE_MT "lariat.redis.pipeline"
#define MAX_IDLE_BLOCKING 4

/* this worker's client for one URL */
typedef struct client_s {
  char *url;
  lr_redis_url_t u;
  lr_redis_conn_t *main;
  lr_redis_conn_t *idle[MAX_IDLE_BLOCKING]; /* dedicated connections for blocking commands */
  int n_idle;
  struct client_s *next;     /* this worker's */
  struct client_s *next_all; /* every worker's, freed at exit */
} client_t;

static __thread client_t *clients;
static client_t *all_clients;
static pthread_mutex_t all_mu = PTHREAD_MUTEX_INITIALIZER;

typedef struct r_box_s {
  client_t *cl; /* found on first use, on the worker's thread */
  uint64_t timeout_ms;
  int has_timeout;
  char url[];
} r_box_t;

/* ---- values ---- */

static void push_reply(lua_State *L, const redisReply *r, int nested) {
  switch (r->type) {
  case REDIS_REPLY_STATUS:
  case REDIS_REPLY_STRING: lua_pushlstring(L, r->str, r->len); break;
  case REDIS_REPLY_INTEGER: lua_pushinteger(L, (lua_Integer)r->integer); break;
  case REDIS_REPLY_NIL: lua_pushlightuserdata(L, NULL); break; /* lariat.null */
  case REDIS_REPLY_ERROR:
    (void)nested;
    lua_createtable(L, 2, 0);
    lua_pushboolean(L, 0);
    lua_rawseti(L, -2, 1);
    lua_pushlstring(L, r->str, r->len);
    lua_rawseti(L, -2, 2);
    break;
  case REDIS_REPLY_ARRAY:
    luaL_checkstack(L, 4, "reply nested too deep");
    lua_createtable(L, (int)r->elements, 0);
    for (size_t i = 0; i < r->elements; i++) {
      push_reply(L, r->element[i], 1);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    break;
  default: lua_pushlightuserdata(L, NULL); break;
  }
}

/* a top-level reply: value, or nil, "ERR …" */
static int push_top(lua_State *L, const redisReply *r) {
  if (r->type == REDIS_REPLY_ERROR) {
    luaL_pushfail(L);
    lua_pushlstring(L, r->str, r->len);
    return 2;
  }
  push_reply(L, r, 0);
  return 1;
}

/* arguments first..last as strings for a command (numbers formatted by Lua) */
typedef struct args_s {
  int n;
  const char **v;
  size_t *len;
} args_t;

static void args_collect(lua_State *L, int first, int last, const char *cmd, size_t cmdlen, args_t *a) {
  int n = last - first + 1 + (cmd != NULL);
  a->n = 0;
  a->v = lua_newuserdatauv(L, (size_t)n * (sizeof *a->v + sizeof *a->len), 0); /* freed with the stack */
  a->len = (size_t *)(a->v + n);
  if (cmd) {
    a->v[0] = cmd;
    a->len[0] = cmdlen;
    a->n = 1;
  }
  for (int i = first; i <= last; i++) {
    int t = lua_type(L, i);
    if (t == LUA_TBOOLEAN) {
      lua_pushstring(L, lua_toboolean(L, i) ? "1" : "0");
      lua_replace(L, i);
    } else if (t != LUA_TSTRING && t != LUA_TNUMBER) {
      luaL_error(L, "redis: argument %d: cannot send a %s", i - first + 1 + (cmd == NULL ? 0 : 1), luaL_typename(L, i));
    }
    a->v[a->n] = lua_tolstring(L, i, &a->len[a->n]); /* converts numbers in place */
    a->n++;
  }
}

static int is_blocking(const args_t *a) {
  static const char *const blocking[] = {"BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN",
                                         "BZPOPMAX", "BZMPOP", "WAIT", "WAITAOF", NULL};
  const char *c = a->v[0];
  for (int i = 0; blocking[i]; i++)
    if (strcasecmp(c, blocking[i]) == 0) return 1;
  if (strcasecmp(c, "XREAD") == 0 || strcasecmp(c, "XREADGROUP") == 0)
    for (int i = 1; i < a->n; i++)
      if (strcasecmp(a->v[i], "BLOCK") == 0) return 1;
  return 0;
}

static void check_allowed(lua_State *L, const char *c, int in_pipeline) {
  static const char *const sub[] = {"SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE",
                                    "MONITOR", NULL};
  static const char *const conn[] = {"SELECT", "AUTH", "QUIT", "HELLO", "RESET", NULL};
  static const char *const tx[] = {"MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH", NULL};
  for (int i = 0; sub[i]; i++)
    if (strcasecmp(c, sub[i]) == 0) luaL_error(L, "redis: %s: use r:subscribe / r:psubscribe", c);
  for (int i = 0; conn[i]; i++)
    if (strcasecmp(c, conn[i]) == 0) luaL_error(L, "redis: %s: the connection is shared; put it in the URL", c);
  if (!in_pipeline)
    for (int i = 0; tx[i]; i++)
      if (strcasecmp(c, tx[i]) == 0)
        luaL_error(L, "redis: %s: the connection is shared; use r:pipeline(function(p) p:multi() … p:exec() end)", c);
}

/* ---- clients ---- */

static client_t *client_of(lua_State *L, r_box_t *b) {
  if (b->cl) return b->cl;
  for (client_t *c = clients; c; c = c->next)
    if (strcmp(c->url, b->url) == 0) return b->cl = c;
  lr_co_t *co = lr_co_current(L);
  if (co == NULL) luaL_error(L, "redis: commands run in a handler's coroutine (or one from lariat.spawn)");
  client_t *c = calloc(1, sizeof *c);
  char err[256];
  if (c == NULL || (c->url = strdup(b->url)) == NULL) {
    free(c);
    luaL_error(L, "out of memory");
  }
  if (lr_redis_url_parse(b->url, &c->u, err, sizeof err)) { /* checked at connect: cannot happen */
    free(c->url);
    free(c);
    luaL_error(L, "%s", err);
  }
  c->main = lr_redis_conn_new(&co->app->lw->w->loop, &c->u);
  if (c->main == NULL) {
    free(c->url);
    free(c);
    luaL_error(L, "out of memory");
  }
  c->next = clients;
  clients = c;
  pthread_mutex_lock(&all_mu);
  c->next_all = all_clients;
  all_clients = c;
  pthread_mutex_unlock(&all_mu);
  return b->cl = c;
}

static lr_redis_conn_t *blocking_conn(lua_State *L, client_t *c) {
  if (c->n_idle) return c->idle[--c->n_idle];
  lr_co_t *co = lr_co_current(L);
  return lr_redis_conn_new(&co->app->lw->w->loop, &c->u);
}

static void blocking_conn_release(client_t *c, lr_redis_conn_t *conn) {
  if (lr_redis_conn_usable(conn) && lr_redis_conn_pending(conn) == 0 && c->n_idle < MAX_IDLE_BLOCKING)
    c->idle[c->n_idle++] = conn;
  else
    lr_redis_conn_free(conn);
}

/* ---- waiting for replies ---- */

typedef struct slot_s {
  struct rwait_s *w;
  lr_redis_pending_t *p; /* NULL once its reply came */
  redisReply *reply;
} slot_t;

typedef struct rwait_s {
  lr_co_t *co;
  client_t *cl;
  lr_redis_conn_t *conn;
  int dedicated;   /* conn is a blocking command's own */
  int n, left;
  uint64_t timeout_ms;
  char err[128];   /* the first failure */
  slot_t slots[];
} rwait_t;

static void wait_free(rwait_t *w) {
  for (int i = 0; i < w->n; i++) lr_redis_reply_free(w->slots[i].reply);
  free(w);
}

static void on_reply(void *data, redisReply *r, const char *err) {
  slot_t *s = data;
  rwait_t *w = s->w;
  s->p = NULL;
  s->reply = r;
  if (r == NULL && w->err[0] == '\0') snprintf(w->err, sizeof w->err, "%s", err);
  if (--w->left == 0 && w->co) lr_co_wake(w->co);
}

/* drop what is still to come; a dedicated connection can't be reused then */
static void wait_abandon(rwait_t *w, const char *reset_why) {
  for (int i = 0; i < w->n; i++)
    if (w->slots[i].p) lr_redis_pending_drop(w->slots[i].p);
  if (w->dedicated)
    lr_redis_conn_free(w->conn);
  else if (reset_why && w->left)
    lr_redis_conn_reset(w->conn, reset_why); /* a server that does not answer: start over */
  wait_free(w);
}

static void on_cancel(lr_co_t *co, void *arg) {
  (void)co;
  wait_abandon(arg, NULL);
}

/* in k: 1 with everything back; else the wait is over with nil, err pushed (0)
 * or waits again (the server is stopping: a command still finishes) */
static rwait_t *wait_back(lua_State *L, lua_KFunction k, int *nret) {
  rwait_t *w = lua_touserdata(L, -1);
  lr_co_t *co = lr_co_current(L);
  *nret = 0;
  if (w->left) {
    if (!co->timed_out) {
      lr_co_wait(L, co, w->timeout_ms, on_cancel, w, k); /* does not return */
      return NULL;
    }
    lua_pop(L, 1);
    wait_abandon(w, "timeout");
    luaL_pushfail(L);
    lua_pushliteral(L, "timeout");
    *nret = 2;
    return NULL;
  }
  lua_pop(L, 1);
  if (w->dedicated) blocking_conn_release(w->cl, w->conn);
  return w;
}

/* send cmds (args[i]) on conn and wait for every reply; k gets the wait */
static int send_and_wait(lua_State *L, client_t *cl, lr_redis_conn_t *conn, int dedicated, args_t *cmds, int n,
                         uint64_t timeout_ms, lua_KFunction k) {
  lr_co_t *co = lr_co_current(L);
  if (co == NULL || co->L != L || !lua_isyieldable(L)) {
    if (dedicated) blocking_conn_release(cl, conn);
    return luaL_error(L, "redis: commands run in a handler's coroutine (or one from lariat.spawn)");
  }
  rwait_t *w = calloc(1, sizeof *w + (size_t)n * sizeof(slot_t));
  if (w == NULL) return luaL_error(L, "out of memory");
  w->co = co;
  w->cl = cl;
  w->conn = conn;
  w->dedicated = dedicated;
  w->n = n;
  w->timeout_ms = timeout_ms;
  char err[128];
  for (int i = 0; i < n; i++) {
    w->slots[i].w = w;
    w->slots[i].p = lr_redis_send(conn, cmds[i].n, cmds[i].v, cmds[i].len, on_reply, &w->slots[i], err, sizeof err);
    if (w->slots[i].p == NULL) {
      /* the ones already sent are dropped; nothing was waited for yet */
      w->co = NULL;
      w->left = i;
      wait_abandon(w, NULL);
      luaL_pushfail(L);
      lua_pushstring(L, err);
      return 2;
    }
  }
  w->left = n;
  lua_pushlightuserdata(L, w);
  return lr_co_wait(L, co, timeout_ms, on_cancel, w, k);
}

static int call_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  int nret;
  rwait_t *w = wait_back(L, call_k, &nret);
  if (w == NULL) return nret;
  redisReply *r = w->slots[0].reply;
  if (r == NULL) {
    luaL_pushfail(L);
    lua_pushstring(L, w->err);
    wait_free(w);
    return 2;
  }
  nret = push_top(L, r);
  wait_free(w);
  return nret;
}

static r_box_t *check_r(lua_State *L) { return luaL_checkudata(L, 1, R_MT); }

static uint64_t timeout_of(r_box_t *b, client_t *cl) { return b->has_timeout ? b->timeout_ms : cl->u.timeout_ms; }

/* r:call(cmd, ...) */
static int m_call(lua_State *L) {
  r_box_t *b = check_r(L);
  luaL_checkstring(L, 2);
  int top = lua_gettop(L);
  client_t *cl = client_of(L, b);
  args_t a;
  args_collect(L, 2, top, NULL, 0, &a);
  check_allowed(L, a.v[0], 0);
  if (is_blocking(&a)) {
    lr_redis_conn_t *conn = blocking_conn(L, cl);
    if (conn == NULL) return luaL_error(L, "out of memory");
    /* the command carries its own timeout: ours only if asked for */
    return send_and_wait(L, cl, conn, 1, &a, 1, b->has_timeout ? b->timeout_ms : 0, call_k);
  }
  return send_and_wait(L, cl, cl->main, 0, &a, 1, timeout_of(b, cl), call_k);
}

/* r:anything(...) is r:call("anything", ...): the functions are made once per name */
static int m_named(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 2);
  return m_call(L);
}

static int r_index(lua_State *L) {
  /* 1: r, 2: key; the methods table is upvalue 1, the cache upvalue 2 */
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  if (lua_type(L, 2) != LUA_TSTRING) return 1;
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(2)) != LUA_TNIL) return 1;
  lua_pushvalue(L, 2);
  lua_pushcclosure(L, m_named, 1);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, -2);
  lua_rawset(L, lua_upvalueindex(2));
  return 1;
}

/* ---- pipelines ---- */

/* p:anything(...) records {"anything", ...} in p's list (the table itself) */
static int p_named(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int n = lua_gettop(L);
  lua_createtable(L, n, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_rawseti(L, -2, 1);
  for (int i = 2; i <= n; i++) {
    lua_pushvalue(L, i);
    lua_rawseti(L, -2, i);
  }
  lua_pushinteger(L, n);
  lua_setfield(L, -2, "n");
  lua_rawseti(L, 1, (lua_Integer)luaL_len(L, 1) + 1);
  return 0;
}

static int p_index(lua_State *L) {
  if (lua_type(L, 2) != LUA_TSTRING) return 0;
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  lua_pushvalue(L, 2);
  lua_pushcclosure(L, p_named, 1);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, -2);
  lua_rawset(L, lua_upvalueindex(1));
  return 1;
}

static int pipe_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  int nret;
  rwait_t *w = wait_back(L, pipe_k, &nret);
  if (w == NULL) return nret;
  lua_createtable(L, w->n, 0);
  for (int i = 0; i < w->n; i++) {
    if (w->slots[i].reply == NULL) {
      lua_pushnil(L);
      lua_pushstring(L, w->err);
      wait_free(w);
      return 2;
    }
    push_reply(L, w->slots[i].reply, 1);
    lua_rawseti(L, -2, i + 1);
  }
  wait_free(w);
  return 1;
}

/* stack: 1 r, 2 fn, 3 p (the recorded list) */
static int pipe_send(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  r_box_t *b = check_r(L);
  client_t *cl = client_of(L, b);
  int n = (int)luaL_len(L, 3);
  if (n == 0) {
    lua_newtable(L);
    return 1;
  }
  args_t *cmds = lua_newuserdatauv(L, (size_t)n * sizeof *cmds, 0);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 3, i + 1); /* {cmd, args..., n=} stays on the stack: it anchors the strings */
    int t = lua_gettop(L);
    lua_getfield(L, t, "n");
    int na = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    luaL_checkstack(L, na + 4, "pipeline too long");
    for (int j = 1; j <= na; j++) lua_rawgeti(L, t, j);
    check_allowed(L, lua_tostring(L, t + 1), 1);
    args_collect(L, t + 1, t + na, NULL, 0, &cmds[i]);
    if (is_blocking(&cmds[i])) /* it would hold up every command pipelined behind it */
      return luaL_error(L, "redis: %s: blocking commands can't be pipelined; use r:call", cmds[i].v[0]);
  }
  return send_and_wait(L, cl, cl->main, 0, cmds, n, timeout_of(b, cl), pipe_k);
}

static int m_pipeline(lua_State *L) {
  check_r(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  lua_newtable(L);
  luaL_setmetatable(L, PIPE_MT);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 3);
  lua_callk(L, 1, 0, 0, pipe_send);
  return pipe_send(L, LUA_OK, 0);
}

/* ---- subscriptions (the queue, waits and sub object are subscription.c's) ---- */

typedef struct sub_s {
  lr_sub_t sub; /* first: subscription.c hands us back this */
  client_t *cl;
  uv_loop_t *loop;
  lr_redis_conn_t *conn; /* its own; NULL once closed */
  int pattern;
  int nnames;
  char **names;
  size_t *lens;
} sub_t;

static void on_sub_reply(void *data, redisReply *r, const char *err) {
  sub_t *s = data;
  if (r == NULL) {
    lr_sub_lost(&s->sub, err);
    return;
  }
  if (r->type == REDIS_REPLY_ARRAY && r->elements >= 3 && r->element[0]->type == REDIS_REPLY_STRING) {
    const char *kind = r->element[0]->str;
    if (strcasecmp(kind, "subscribe") == 0 || strcasecmp(kind, "psubscribe") == 0) {
      lr_sub_confirmed(&s->sub);
      lr_redis_reply_free(r);
      return;
    }
    if (strcasecmp(kind, "message") == 0 || strcasecmp(kind, "pmessage") == 0) {
      lr_sub_message(&s->sub, r);
      return;
    }
  }
  lr_redis_reply_free(r);
}

/* channel, message (and the pattern for a pmessage) */
static int message_push(lua_State *L, void *msg) {
  redisReply *r = msg;
  int pm = r->elements >= 4; /* pmessage pattern channel payload */
  const redisReply *ch = r->element[1 + pm], *m = r->element[2 + pm];
  lua_pushlstring(L, ch->str ? ch->str : "", ch->len);
  lua_pushlstring(L, m->str ? m->str : "", m->len);
  if (pm) lua_pushlstring(L, r->element[1]->str ? r->element[1]->str : "", r->element[1]->len);
  return pm ? 3 : 2;
}

static void message_free(void *msg) { lr_redis_reply_free(msg); }

static int sub_send(lua_State *L, lr_sub_t *sub, char *err, size_t errlen) {
  (void)L;
  sub_t *s = (sub_t *)sub;
  if (s->conn == NULL && (s->conn = lr_redis_conn_new(s->loop, &s->cl->u)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  int argc = s->nnames + 1;
  const char **argv = malloc((size_t)argc * sizeof *argv);
  size_t *lens = malloc((size_t)argc * sizeof *lens);
  int rc = -1;
  if (argv && lens) {
    argv[0] = s->pattern ? "PSUBSCRIBE" : "SUBSCRIBE";
    lens[0] = strlen(argv[0]);
    for (int i = 0; i < s->nnames; i++) {
      argv[i + 1] = s->names[i];
      lens[i + 1] = s->lens[i];
    }
    s->sub.pending = s->nnames;
    rc = lr_redis_subscribe(s->conn, argc, argv, lens, on_sub_reply, s, err, errlen);
  } else {
    snprintf(err, errlen, "out of memory");
  }
  free(argv);
  free(lens);
  return rc;
}

static void sub_close_conn(lr_sub_t *sub) {
  sub_t *s = (sub_t *)sub;
  if (s->conn) lr_redis_conn_free(s->conn);
  s->conn = NULL;
}

static void sub_destroy(lr_sub_t *sub) {
  sub_t *s = (sub_t *)sub;
  for (int i = 0; i < s->nnames; i++) free(s->names[i]);
  free(s->names);
  free(s->lens);
  free(s);
}

static const lr_sub_driver_t subscribe_driver = {
    "redis", message_push, message_free, sub_send, sub_close_conn, sub_destroy,
};

static int do_subscribe(lua_State *L, int pattern) {
  r_box_t *b = check_r(L);
  int n = lua_gettop(L) - 1;
  if (n < 1) return luaL_error(L, "redis: subscribe: at least one channel");
  client_t *cl = client_of(L, b);
  lr_co_t *co = lr_co_current(L);
  if (co == NULL || co->L != L || !lua_isyieldable(L))
    return luaL_error(L, "redis: subscribe runs in a handler's coroutine (or one from lariat.spawn)");
  for (int i = 0; i < n; i++) luaL_checkstring(L, i + 2); /* raise before anything is allocated */
  sub_t *s = calloc(1, sizeof *s);
  if (s == NULL) return luaL_error(L, "out of memory");
  s->sub.drv = &subscribe_driver;
  s->sub.wait_ms = timeout_of(b, cl);
  s->cl = cl;
  s->loop = &co->app->lw->w->loop;
  s->pattern = pattern;
  s->names = calloc((size_t)n, sizeof *s->names);
  s->lens = calloc((size_t)n, sizeof *s->lens);
  for (int i = 0; s->names && s->lens && i < n; i++) {
    size_t len;
    const char *name = lua_tolstring(L, i + 2, &len);
    if ((s->names[i] = malloc(len + 1)) == NULL) break;
    memcpy(s->names[i], name, len + 1);
    s->lens[i] = len;
    s->nnames++;
  }
  if (s->nnames < n) {
    sub_destroy(&s->sub);
    return luaL_error(L, "out of memory");
  }
  return lr_sub_start(L, SUB_MT, &s->sub);
}

static int m_subscribe(lua_State *L) { return do_subscribe(L, 0); }
static int m_psubscribe(lua_State *L) { return do_subscribe(L, 1); }

/* ---- connect ---- */

static int l_connect(lua_State *L) {
  size_t len;
  const char *url = luaL_checklstring(L, 1, &len);
  lr_redis_url_t u;
  char err[256];
  if (lr_redis_url_parse(url, &u, err, sizeof err)) {
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  r_box_t *b = lua_newuserdatauv(L, sizeof *b + len + 1, 0);
  memset(b, 0, sizeof *b);
  memcpy(b->url, url, len + 1);
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "timeout");
    if (!lua_isnil(L, -1)) {
      double t = luaL_checknumber(L, -1);
      b->has_timeout = 1;
      b->timeout_ms = t > 0 ? (uint64_t)(t * 1000 + 0.5) : 0;
    }
    lua_pop(L, 1);
  }
  luaL_setmetatable(L, R_MT);
  return 1;
}

static int r_tostring(lua_State *L) {
  r_box_t *b = check_r(L);
  lua_pushfstring(L, "redis client (%s)", b->url);
  return 1;
}

void lr_redis_lua_open(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"call", m_call}, {"pipeline", m_pipeline}, {"subscribe", m_subscribe}, {"psubscribe", m_psubscribe},
      {NULL, NULL},
  };
  luaL_newmetatable(L, R_MT);
  luaL_newlib(L, methods);
  lua_newtable(L); /* cache of r:anything functions */
  lua_pushcclosure(L, r_index, 2);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, r_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);

  luaL_newmetatable(L, PIPE_MT);
  lua_newtable(L);
  lua_pushcclosure(L, p_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);

  lr_sub_metatable(L, SUB_MT, "redis");

  lua_pushcfunction(L, l_connect);
  lua_setfield(L, -2, "redis_connect");
}

void lr_redis_lua_free_all(void) {
  lr_redis_free_all(); /* every connection, the clients' and the subscriptions' */
  while (all_clients) {
    client_t *c = all_clients;
    all_clients = c->next_all;
    free(c->url);
    free(c);
  }
}
