/* lariat --redis URL: lariat.shared dictionaries and lariat.channel messages
 * kept in one Redis, so that every lariat instance using it shares them.
 *
 * Each worker has two connections (core/data/redis.c, on its own loop): one
 * for commands, pipelined by every handler of the worker, and one subscribed
 * to the pattern lariat:<db>:channel:* . A failed connection is replaced by the
 * next command; the subscription is taken again by a timer, so subscribers
 * need do nothing when Redis comes back.
 *
 * Dictionary entries are the keys lariat:shared:<dict>:<key>. Numbers are
 * stored as Redis numbers (so INCRBY works on them and redis-cli shows them);
 * every other value in shared.c's encoding, whose first byte is a tag below
 * 0x20. incr is one Lua script (read, create, expire and add atomically).
 *
 * Channel messages are published on lariat:<db>:channel:<name> with a header
 * naming this process; the publishing process delivers its own message from
 * memory once Redis has taken it (channel.c), and its subscription drops the
 * copy Redis sends back, so each subscriber sees a message once. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "../core/data/data.h"
#include "bindings.h"

#define DICT_MT "lariat.shared.redis"
#define REPLY_MT "lariat.cluster.reply"
#define KEY_PREFIX "lariat:shared:"
#define MAGIC "\0LR1" /* then 8 bytes of origin, then the message */
#define MAGIC_LEN 4
#define HEADER_LEN (MAGIC_LEN + 8)
#define RETRY_MS 200

static int enabled;
static lr_redis_url_t url;
static unsigned char origin[8]; /* this process, among every instance */
/* lariat:<db>:channel: -- Redis pub/sub ignores the database number, so it is
 * in the channel's name: clusters on different databases stay apart */
static char ch_prefix[48];
static size_t ch_plen;

typedef struct cworker_s {
  uv_loop_t *loop;
  lr_redis_conn_t *cmd;
  lr_redis_conn_t *sub;
  int sub_state;         /* SUB_* */
  char sub_err[128];     /* why the last subscription attempt failed */
  lr_link_t sub_waiters; /* ch:subscribe calls waiting for SUB_ON */
  uv_timer_t *retry;
  struct cworker_s *next_all;
} cworker_t;

enum { SUB_OFF, SUB_PENDING, SUB_ON };

static __thread cworker_t *cw;
static cworker_t *all;
static pthread_mutex_t all_mu = PTHREAD_MUTEX_INITIALIZER;

int lr_cluster_enabled(void) { return enabled; }

static lr_co_t *co_or_raise(lua_State *L, const char *what) {
  lr_co_t *co = lr_co_current(L);
  if (co == NULL || co->L != L || !lua_isyieldable(L))
    luaL_error(L, "%s: with --redis this waits for Redis: call it from a handler, a hook, a timer or "
               "lariat.spawn (not while the app loads)", what);
  return co;
}

static cworker_t *worker_of(lua_State *L, lr_co_t *co) {
  if (cw) return cw;
  cworker_t *w = calloc(1, sizeof *w);
  if (w == NULL) luaL_error(L, "out of memory");
  w->loop = &co->app->lw->w->loop;
  lr_list_init(&w->sub_waiters);
  w->cmd = lr_redis_conn_new(w->loop, &url);
  w->sub = lr_redis_conn_new(w->loop, &url);
  w->retry = malloc(sizeof *w->retry);
  if (w->cmd == NULL || w->sub == NULL || w->retry == NULL) luaL_error(L, "out of memory");
  uv_timer_init(w->loop, w->retry);
  uv_unref((uv_handle_t *)w->retry);
  w->retry->data = w;
  pthread_mutex_lock(&all_mu);
  w->next_all = all;
  all = w;
  pthread_mutex_unlock(&all_mu);
  return cw = w;
}

static int unavailable(lua_State *L, const char *why) {
  luaL_pushfail(L);
  lua_pushfstring(L, "redis unavailable: %s", why);
  return 2;
}

/* ---- one command, waited for ---- */

/* pushes the results for a reply (never NULL; maybe an error reply) */
typedef int (*reply_fn)(lua_State *L, redisReply *r);

typedef struct cwait_s {
  lr_co_t *co;
  lr_redis_pending_t *p; /* NULL once the reply came */
  redisReply *reply;
  reply_fn fn;
  char err[128];
} cwait_t;

static void on_reply(void *data, redisReply *r, const char *err) {
  cwait_t *w = data;
  w->p = NULL;
  w->reply = r;
  if (r == NULL) snprintf(w->err, sizeof w->err, "%s", err);
  lr_co_wake(w->co);
}

static void on_cancel(lr_co_t *co, void *arg) {
  cwait_t *w = arg;
  (void)co;
  if (w->p) lr_redis_pending_drop(w->p);
  lr_redis_reply_free(w->reply);
  free(w);
}

static int reply_gc(lua_State *L) {
  redisReply **box = luaL_checkudata(L, 1, REPLY_MT);
  lr_redis_reply_free(*box);
  *box = NULL;
  return 0;
}

static int call_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  cwait_t *w = lua_touserdata(L, -1);
  lr_co_t *co = lr_co_current(L);
  if (w->p) {
    /* a drain (co->stopping) lets a command finish; a timeout gives up on the server */
    if (!co->timed_out) return lr_co_wait(L, co, url.timeout_ms, on_cancel, w, call_k);
    lua_pop(L, 1);
    lr_redis_pending_drop(w->p);
    free(w);
    lr_redis_conn_reset(cw->cmd, "timeout"); /* a server that does not answer: start over */
    return unavailable(L, "timeout");
  }
  lua_pop(L, 1);
  redisReply *r = w->reply;
  reply_fn fn = w->fn;
  if (r == NULL) {
    int n = unavailable(L, w->err);
    free(w);
    return n;
  }
  free(w);
  /* the reply belongs to Lua from here: fn may raise or wait again */
  redisReply **box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = r;
  if (luaL_newmetatable(L, REPLY_MT)) {
    lua_pushcfunction(L, reply_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return fn(L, r);
}

/* send argv on this worker's command connection; fn gets the reply in the
 * continuation (stack as the caller left it) */
static int call(lua_State *L, const char *what, int argc, const char **argv, const size_t *lens, reply_fn fn) {
  lr_co_t *co = co_or_raise(L, what);
  cworker_t *w = worker_of(L, co);
  cwait_t *cwt = calloc(1, sizeof *cwt);
  if (cwt == NULL) return luaL_error(L, "out of memory");
  cwt->co = co;
  cwt->fn = fn;
  char err[128];
  cwt->p = lr_redis_send(w->cmd, argc, argv, lens, on_reply, cwt, err, sizeof err);
  if (cwt->p == NULL) {
    free(cwt);
    return unavailable(L, err);
  }
  lua_pushlightuserdata(L, cwt);
  return lr_co_wait(L, co, url.timeout_ms, on_cancel, cwt, call_k);
}

static int error_reply(lua_State *L, redisReply *r) {
  luaL_pushfail(L);
  lua_pushlstring(L, r->str ? r->str : "error", r->len);
  return 2;
}

/* ---- dictionaries ---- */

typedef struct dict_s {
  size_t nl;
  char name[];
} dict_t;

static dict_t *check_dict(lua_State *L) { return luaL_checkudata(L, 1, DICT_MT); }

/* pushes lariat:shared:<dict>:<key> and returns it */
static const char *push_key(lua_State *L, dict_t *d, const char *k, size_t kn, size_t *len) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, KEY_PREFIX);
  luaL_addlstring(&b, d->name, d->nl);
  luaL_addchar(&b, ':');
  luaL_addlstring(&b, k, kn);
  luaL_pushresult(&b);
  return lua_tolstring(L, -1, len);
}

/* a number as Redis writes numbers, so INCRBY/INCRBYFLOAT take it; a float
 * keeps a '.' so that it reads back as a float */
static int number_text(lua_State *L, int idx, char *buf, size_t n) {
  if (lua_isinteger(L, idx)) return snprintf(buf, n, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, idx));
  lua_Number v = lua_tonumber(L, idx);
  if (!isfinite(v)) return -1;
  int len = snprintf(buf, n, "%.17g", (double)v);
  if (strpbrk(buf, ".e") == NULL && len + 2 < (int)n) len += snprintf(buf + len, n - (size_t)len, ".0");
  return len;
}

/* pushes the stored form of the value at idx */
static const char *push_value(lua_State *L, int idx, size_t *len) {
  char num[64];
  int n;
  if (lua_type(L, idx) == LUA_TNUMBER && (n = number_text(L, idx, num, sizeof num)) > 0) {
    lua_pushlstring(L, num, (size_t)n);
  } else {
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    lr__shared_ser(L, idx, &b, 0);
    luaL_pushresult(&b);
  }
  return lua_tolstring(L, -1, len);
}

static void push_decoded(lua_State *L, const char *s, size_t n) {
  if (n && (unsigned char)s[0] < 0x20) {
    lr__shared_deser(L, &s, s + n);
    return;
  }
  /* a number, or a plain string another Redis client wrote */
  if (n && n < 64 && lua_stringtonumber(L, s) == n + 1) return;
  lua_pushlstring(L, s, n);
}

/* cmd <the key of argument 2>: GET, DEL, PTTL */
static int key_command(lua_State *L, const char *cmd, const char *what, reply_fn fn) {
  dict_t *d = check_dict(L);
  size_t kn, n;
  const char *k = luaL_checklstring(L, 2, &kn);
  lua_settop(L, 2);
  const char *argv[2] = {cmd, push_key(L, d, k, kn, &n)};
  size_t lens[2] = {strlen(cmd), n};
  return call(L, what, 2, argv, lens, fn);
}

static int get_done(lua_State *L, redisReply *r) {
  if (r->type == REDIS_REPLY_ERROR) return error_reply(L, r);
  if (r->type != REDIS_REPLY_STRING) {
    lua_pushnil(L);
    return 1;
  }
  push_decoded(L, r->str, r->len);
  return 1;
}

static int d_get(lua_State *L) { return key_command(L, "GET", "shared:get", get_done); }

static uint64_t ttl_ms(lua_State *L, int idx) {
  lua_Number ttl = luaL_optnumber(L, idx, 0);
  if (ttl < 0) luaL_argerror(L, idx, "ttl must be >= 0");
  if (ttl <= 0) return 0;
  uint64_t ms = (uint64_t)(ttl * 1000 + 0.5);
  return ms ? ms : 1;
}

static int set_done(lua_State *L, redisReply *r) {
  if (r->type == REDIS_REPLY_ERROR) return error_reply(L, r);
  if (r->type == REDIS_REPLY_NIL) { /* SET NX: there already */
    luaL_pushfail(L);
    lua_pushliteral(L, "exists");
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int set_or_add(lua_State *L, int only_if_absent) {
  dict_t *d = check_dict(L);
  size_t kn, n, vn;
  const char *k = luaL_checklstring(L, 2, &kn);
  luaL_checkany(L, 3);
  uint64_t ms = ttl_ms(L, 4);
  lua_settop(L, 4);
  const char *key = push_key(L, d, k, kn, &n);
  if (lua_isnil(L, 3)) {
    if (only_if_absent) return luaL_argerror(L, 3, "value expected");
    const char *argv[2] = {"DEL", key};
    size_t lens[2] = {3, n};
    return call(L, "shared:set", 2, argv, lens, set_done);
  }
  const char *v = push_value(L, 3, &vn);
  char msbuf[32];
  const char *argv[6] = {"SET", key, v};
  size_t lens[6] = {3, n, vn};
  int argc = 3;
  if (only_if_absent) {
    argv[argc] = "NX";
    lens[argc++] = 2;
  }
  if (ms) {
    argv[argc] = "PX";
    lens[argc++] = 2;
    lens[argc] = (size_t)snprintf(msbuf, sizeof msbuf, "%llu", (unsigned long long)ms);
    argv[argc++] = msbuf;
  }
  return call(L, only_if_absent ? "shared:add" : "shared:set", argc, argv, lens, set_done);
}

static int d_set(lua_State *L) { return set_or_add(L, 0); }
static int d_add(lua_State *L) { return set_or_add(L, 1); }

/* KEYS[1]; ARGV: delta, init ("" = none), ttl ms ("" = keep), "1" if delta is
 * an integer. A float result comes back as a one-element array, to tell it
 * from an integer. Nothing is changed before the checks pass. */
static const char incr_script[] =
    "local k, v = KEYS[1], redis.call('GET', KEYS[1])\n"
    "if not v then\n"
    "  if ARGV[2] == '' then return redis.error_reply('not found') end\n"
    "  redis.call('SET', k, ARGV[2])\n"
    "  if ARGV[3] ~= '' and ARGV[3] ~= '0' then redis.call('PEXPIRE', k, ARGV[3]) end\n"
    "else\n"
    "  if not tonumber(v) then return redis.error_reply('not a number') end\n"
    "  if ARGV[3] == '0' then redis.call('PERSIST', k)\n"
    "  elseif ARGV[3] ~= '' then redis.call('PEXPIRE', k, ARGV[3]) end\n"
    "end\n"
    "if ARGV[4] == '1' then\n"
    "  local r = redis.pcall('INCRBY', k, ARGV[1])\n"
    "  if type(r) == 'number' then return r end\n"
    "end\n"
    "local r = redis.pcall('INCRBYFLOAT', k, ARGV[1])\n"
    "if type(r) == 'table' and r.err then return redis.error_reply('not a number') end\n"
    "return {r}\n";

static int incr_done(lua_State *L, redisReply *r) {
  if (r->type == REDIS_REPLY_ERROR) return error_reply(L, r);
  if (r->type == REDIS_REPLY_INTEGER) {
    lua_pushinteger(L, (lua_Integer)r->integer);
    return 1;
  }
  if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 && r->element[0]->str) {
    lua_pushnumber(L, (lua_Number)strtod(r->element[0]->str, NULL));
    return 1;
  }
  luaL_pushfail(L);
  lua_pushliteral(L, "unexpected reply");
  return 2;
}

/* incr(key, delta=1, init=nil, ttl=nil) → new value; atomic across instances */
static int d_incr(lua_State *L) {
  dict_t *d = check_dict(L);
  size_t kn, n;
  const char *k = luaL_checklstring(L, 2, &kn);
  lua_settop(L, 5);
  if (lua_isnil(L, 3)) {
    lua_pushinteger(L, 1);
    lua_replace(L, 3);
  }
  luaL_checknumber(L, 3);
  if (!lua_isnil(L, 4)) luaL_checknumber(L, 4);
  int keep_ttl = lua_isnil(L, 5);
  uint64_t ms = ttl_ms(L, 5);
  const char *key = push_key(L, d, k, kn, &n);
  char delta[64], init[64] = "", ttl[32] = "";
  int dl = number_text(L, 3, delta, sizeof delta), il = 0;
  if (dl < 0) return luaL_argerror(L, 3, "delta must be finite");
  if (!lua_isnil(L, 4) && (il = number_text(L, 4, init, sizeof init)) < 0)
    return luaL_argerror(L, 4, "init must be finite");
  if (!keep_ttl) snprintf(ttl, sizeof ttl, "%llu", (unsigned long long)ms);
  const char *is_int = lua_isinteger(L, 3) ? "1" : "0";
  const char *argv[] = {"EVAL", incr_script, "1", key, delta, init, ttl, is_int};
  size_t lens[] = {4, sizeof incr_script - 1, 1, n, (size_t)dl, (size_t)il, strlen(ttl), 1};
  return call(L, "shared:incr", 8, argv, lens, incr_done);
}

static int delete_done(lua_State *L, redisReply *r) {
  if (r->type == REDIS_REPLY_ERROR) return error_reply(L, r);
  lua_pushboolean(L, r->type == REDIS_REPLY_INTEGER && r->integer > 0);
  return 1;
}

static int d_delete(lua_State *L) { return key_command(L, "DEL", "shared:delete", delete_done); }

static int ttl_done(lua_State *L, redisReply *r) {
  if (r->type == REDIS_REPLY_ERROR) return error_reply(L, r);
  if (r->type != REDIS_REPLY_INTEGER || r->integer == -2) {
    luaL_pushfail(L);
    lua_pushliteral(L, "not found");
    return 2;
  }
  lua_pushnumber(L, r->integer < 0 ? 0 : (lua_Number)r->integer / 1000);
  return 1;
}

/* ttl(key) → seconds left, 0 for no expiry, or nil, "not found" */
static int d_ttl(lua_State *L) { return key_command(L, "PTTL", "shared:ttl", ttl_done); }

/* keys: stack 1 dict, 2 max, 3 result, 4 MATCH pattern, then the reply */
static int scan_next(lua_State *L, const char *cursor, size_t cl);

static int scan_done(lua_State *L, redisReply *r) {
  if (r->type == REDIS_REPLY_ERROR) return error_reply(L, r);
  if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[1]->type != REDIS_REPLY_ARRAY)
    return luaL_error(L, "shared:keys: unexpected reply to SCAN");
  dict_t *d = check_dict(L);
  lua_Integer max = lua_tointeger(L, 2);
  size_t skip = sizeof KEY_PREFIX - 1 + d->nl + 1;
  lua_Integer n = (lua_Integer)luaL_len(L, 3);
  redisReply *keys = r->element[1];
  for (size_t i = 0; i < keys->elements && (max <= 0 || n < max); i++) {
    redisReply *k = keys->element[i];
    if (k->type != REDIS_REPLY_STRING || k->len < skip) continue;
    lua_pushlstring(L, k->str + skip, k->len - skip);
    lua_rawseti(L, 3, ++n);
  }
  const char *cursor = r->element[0]->str;
  if ((max > 0 && n >= max) || cursor == NULL || strcmp(cursor, "0") == 0) {
    lua_pushvalue(L, 3);
    return 1;
  }
  return scan_next(L, cursor, r->element[0]->len);
}

static int scan_next(lua_State *L, const char *cursor, size_t cl) {
  size_t pl;
  const char *pattern = lua_tolstring(L, 4, &pl);
  const char *argv[] = {"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"};
  size_t lens[] = {4, cl, 5, pl, 5, 4};
  return call(L, "shared:keys", 6, argv, lens, scan_done);
}

/* keys([max=1024]) → array of keys (in no particular order; SCAN may repeat a
 * key that was written meanwhile) */
static int d_keys(lua_State *L) {
  dict_t *d = check_dict(L);
  lua_Integer max = luaL_optinteger(L, 2, 1024);
  lua_settop(L, 1);
  lua_pushinteger(L, max);
  lua_newtable(L);
  luaL_Buffer b; /* the dictionary's prefix, glob characters escaped */
  luaL_buffinit(L, &b);
  luaL_addstring(&b, KEY_PREFIX);
  for (size_t i = 0; i < d->nl; i++) {
    if (strchr("*?[]\\", d->name[i])) luaL_addchar(&b, '\\');
    luaL_addchar(&b, d->name[i]);
  }
  luaL_addstring(&b, ":*");
  luaL_pushresult(&b);
  return scan_next(L, "0", 1);
}

static int d_tostring(lua_State *L) {
  dict_t *d = check_dict(L);
  lua_pushfstring(L, "lariat.shared(%s, redis)", d->name);
  return 1;
}

int lr_cluster_dict_push(lua_State *L, const char *name, size_t len) {
  dict_t *d = lua_newuserdatauv(L, sizeof *d + len + 1, 0);
  d->nl = len;
  memcpy(d->name, name, len + 1);
  if (luaL_newmetatable(L, DICT_MT)) {
    static const luaL_Reg methods[] = {
        {"get", d_get}, {"set", d_set}, {"add", d_add}, {"incr", d_incr},
        {"delete", d_delete}, {"ttl", d_ttl}, {"keys", d_keys}, {NULL, NULL},
    };
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, d_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_setmetatable(L, -2);
  return 1;
}

/* ---- channels ---- */

static void subscribe_now(cworker_t *w);

static void on_retry(uv_timer_t *t) { subscribe_now(t->data); }

static void sub_failed(cworker_t *w, const char *why) {
  w->sub_state = SUB_OFF;
  snprintf(w->sub_err, sizeof w->sub_err, "%s", why);
  lr_wq_wake_all(&w->sub_waiters);
  uv_timer_start(w->retry, on_retry, RETRY_MS, 0);
}

/* every reply on the subscription: the confirmation, then messages; NULL once lost */
static void on_sub(void *data, redisReply *r, const char *err) {
  cworker_t *w = data;
  if (r == NULL) {
    sub_failed(w, err);
    return;
  }
  if (r->type == REDIS_REPLY_ARRAY && r->elements >= 3 && r->element[0]->type == REDIS_REPLY_STRING) {
    const char *kind = r->element[0]->str;
    if (strcmp(kind, "psubscribe") == 0) {
      w->sub_state = SUB_ON;
      lr_wq_wake_all(&w->sub_waiters);
    } else if (strcmp(kind, "pmessage") == 0 && r->elements == 4 && r->element[2]->str && r->element[3]->str) {
      const redisReply *ch = r->element[2], *m = r->element[3];
      const char *msg = m->str;
      size_t ml = m->len;
      if (ml >= HEADER_LEN && memcmp(msg, MAGIC, MAGIC_LEN) == 0) {
        if (memcmp(msg + MAGIC_LEN, origin, sizeof origin) == 0) goto done; /* ours: delivered from memory */
        msg += HEADER_LEN;
        ml -= HEADER_LEN;
      }
      if (ch->len > ch_plen) lr__channel_deliver(-1, ch->str + ch_plen, ch->len - ch_plen, msg, ml);
    }
  } else if (r->type == REDIS_REPLY_ERROR) {
    char why[128];
    snprintf(why, sizeof why, "%.*s", (int)r->len, r->str);
    lr_redis_reply_free(r);
    lr_redis_conn_reset(w->sub, why); /* NOAUTH and the like: try again later */
    return;
  }
done:
  lr_redis_reply_free(r);
}

static void subscribe_now(cworker_t *w) {
  if (w->sub_state != SUB_OFF) return;
  char pattern[sizeof ch_prefix + 1];
  snprintf(pattern, sizeof pattern, "%s*", ch_prefix);
  const char *argv[2] = {"PSUBSCRIBE", pattern};
  size_t lens[2] = {10, ch_plen + 1};
  char err[128];
  w->sub_state = SUB_PENDING;
  if (lr_redis_subscribe(w->sub, 2, argv, lens, on_sub, w, err, sizeof err)) sub_failed(w, err);
}

/* the subscription on top is closed; nil, why */
static int subscribe_failed(lua_State *L, const char *why) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s", why);
  lua_getfield(L, -1, "close");
  lua_pushvalue(L, -2);
  lua_call(L, 1, 0);
  if (strcmp(msg, "stopping") == 0) {
    luaL_pushfail(L);
    lua_pushliteral(L, "stopping");
    return 2;
  }
  return unavailable(L, msg);
}

static int subscribed_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lr_co_t *co = lr_co_current(L);
  lr_link_unlink(&co->wq);
  if (cw->sub_state == SUB_ON) return 1; /* the subscription, still on top */
  if (cw->sub_state == SUB_OFF) return subscribe_failed(L, cw->sub_err);
  if (co->timed_out) return subscribe_failed(L, "timeout");
  if (co->stopping) return subscribe_failed(L, "stopping");
  return lr_wq_wait(L, co, &cw->sub_waiters, url.timeout_ms, subscribed_k);
}

/* ch:subscribe with --redis: the subscription is returned once this worker
 * listens to Redis, so that a message published anywhere after it returned
 * reaches it; nil, "redis unavailable: …" (and no subscription) otherwise */
int lr_cluster_subscribed(lua_State *L) {
  lr_co_t *co = co_or_raise(L, "channel:subscribe");
  cworker_t *w = worker_of(L, co);
  if (w->sub_state == SUB_ON) return 1;
  if (w->sub_state == SUB_OFF) {
    uv_timer_stop(w->retry);
    subscribe_now(w);
    if (w->sub_state == SUB_OFF) return subscribe_failed(L, w->sub_err);
  }
  return lr_wq_wait(L, co, &w->sub_waiters, url.timeout_ms, subscribed_k);
}

static int publish_done(lua_State *L, redisReply *r) {
  if (r->type == REDIS_REPLY_ERROR) return error_reply(L, r);
  /* Redis has it: this process's subscribers get it from here */
  size_t nl, ml;
  const char *name = lua_tolstring(L, 1, &nl);
  const char *msg = lua_tolstring(L, 2, &ml);
  lr_app_t *app;
  lua_getallocf(L, (void **)&app);
  lua_pushinteger(L, (lua_Integer)lr__channel_deliver(app->lw->w->id, name, nl, msg, ml));
  return 1;
}

/* ch:publish with --redis: returns once Redis has the message (then this
 * process delivers it), or nil, "redis unavailable: …" and nobody gets it */
int lr_cluster_publish(lua_State *L, const char *name, size_t nl, const char *msg, size_t ml) {
  lua_settop(L, 2);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, ch_prefix, ch_plen);
  luaL_addlstring(&b, name, nl);
  luaL_pushresult(&b);
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, MAGIC, MAGIC_LEN);
  luaL_addlstring(&b, (const char *)origin, sizeof origin);
  luaL_addlstring(&b, msg, ml);
  luaL_pushresult(&b);
  const char *argv[3] = {"PUBLISH"};
  size_t lens[3] = {7};
  argv[1] = lua_tolstring(L, 3, &lens[1]);
  argv[2] = lua_tolstring(L, 4, &lens[2]);
  return call(L, "channel:publish", 3, argv, lens, publish_done);
}

/* ---- process ---- */

int lr_cluster_init(const char *u, char *err, size_t errlen) {
  if (u == NULL) return 0;
  if (lr_redis_url_parse(u, &url, err, errlen)) return -1;
  ch_plen = (size_t)snprintf(ch_prefix, sizeof ch_prefix, "lariat:%d:channel:", url.db);
  if (getrandom(origin, sizeof origin, 0) != (ssize_t)sizeof origin) {
    uint64_t x = (uint64_t)uv_hrtime() ^ ((uint64_t)getpid() << 32);
    memcpy(origin, &x, sizeof origin);
  }
  enabled = 1;
  return 0;
}

static void on_timer_closed(uv_handle_t *h) { free(h); }

/* after lr_redis_lua_free_all, which freed every connection (ours too)
 * without calling anyone back */
void lr_cluster_free_all(void) {
  pthread_mutex_lock(&all_mu);
  while (all) {
    cworker_t *w = all;
    all = w->next_all;
    uv_close((uv_handle_t *)w->retry, on_timer_closed);
    free(w);
  }
  pthread_mutex_unlock(&all_mu);
}
