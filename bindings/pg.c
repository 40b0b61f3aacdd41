/* lariat.pg: PostgreSQL from handlers, over this worker's pool for a server
 * (core/data/pg.c).
 *
 *   lariat.pg.connect(url_or_conninfo[, {pool=10, timeout=30}]) → db   (cheap: a handle)
 *   db:query(sql, ...) → rows | nil, err, sqlstate   ($1, $2 … parameters)
 *   db:exec(script) → true | nil, err, sqlstate
 *   db:transaction(function(tx) … end) → fn's results | nil, err
 *   db:listen(channel) → sub;  sub:recv([timeout]) → payload, channel | nil, err;  sub:close()
 *
 * Values: int2/4/8 and oid → integer, float4/8 → number, numeric → string
 * (exact), bool → boolean, json/jsonb → decoded (lariat.json), bytea → string,
 * timestamps → ISO 8601 strings, other types → their text, NULL → lariat.null.
 * Parameters: nil and lariat.null are NULL, booleans and numbers as SQL
 * literals, tables JSON-encoded, strings as text (bytes that are not UTF-8 go
 * in binary format: bytea).
 *
 * A transaction keeps one connection while fn(tx) runs (db:query inside fn
 * uses it too); an error in fn rolls back and is returned as nil, err. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "../core/data/data.h"
#include "bindings.h"

#define PG_MT "lariat.pg"
#define TX_MT "lariat.pg.tx"
#define SUB_MT "lariat.pg.sub"

/* this worker's pool for one server and size */
typedef struct pool_ref_s {
  char *key;
  int size;
  lr_pg_pool_t *pool;
  struct pool_ref_s *next;     /* this worker's */
  struct pool_ref_s *next_all; /* every worker's, freed at exit */
} pool_ref_t;

static __thread pool_ref_t *pools;
static pool_ref_t *all_refs;
static pthread_mutex_t all_mu = PTHREAD_MUTEX_INITIALIZER;

typedef struct db_box_s {
  lr_pg_pool_t *pool; /* found on first use, on the worker's thread */
  int size;
  uint64_t timeout_ms;
  char conninfo[];
} db_box_t;

typedef struct tx_box_s {
  lr_pg_pool_t *pool;
  lr_pg_conn_t *conn; /* kept while open */
  lr_co_t *co;
  uint64_t timeout_ms;
  int open;
  struct tx_box_s *next;
} tx_box_t;

static __thread tx_box_t *open_txs;

/* ---- values ---- */

/* OIDs from PostgreSQL's pg_type.dat: stable across versions */
enum {
  OID_BOOL = 16, OID_BYTEA = 17, OID_INT8 = 20, OID_INT2 = 21, OID_INT4 = 23, OID_OID = 26, OID_JSON = 114,
  OID_FLOAT4 = 700, OID_FLOAT8 = 701, OID_TIMESTAMP = 1114, OID_TIMESTAMPTZ = 1184, OID_JSONB = 3802,
};

static int json_fn(lua_State *L, const char *name) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "lariat.json");
  lua_remove(L, -2);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
  return lua_isfunction(L, -1) ? 1 : (lua_pop(L, 1), 0);
}

static void push_cell(lua_State *L, PGresult *res, int r, int c, int decode_idx) {
  if (PQgetisnull(res, r, c)) {
    lua_pushlightuserdata(L, NULL); /* lariat.null */
    return;
  }
  const char *v = PQgetvalue(res, r, c);
  int len = PQgetlength(res, r, c);
  switch (PQftype(res, c)) {
  case OID_INT2:
  case OID_INT4:
  case OID_INT8:
  case OID_OID: lua_pushinteger(L, (lua_Integer)strtoll(v, NULL, 10)); return;
  case OID_FLOAT4:
  case OID_FLOAT8: lua_pushnumber(L, strtod(v, NULL)); return;
  case OID_BOOL: lua_pushboolean(L, v[0] == 't'); return;
  case OID_BYTEA: {
    size_t n;
    unsigned char *b = PQunescapeBytea((const unsigned char *)v, &n);
    if (b == NULL) luaL_error(L, "out of memory");
    lua_pushlstring(L, (const char *)b, n);
    PQfreemem(b);
    return;
  }
  case OID_TIMESTAMP:
  case OID_TIMESTAMPTZ: { /* "2024-01-02 03:04:05.6+00" → "2024-01-02T03:04:05.6+00" */
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, v, (size_t)len);
    luaL_pushresult(&b);
    const char *s = lua_tostring(L, -1);
    const char *sp = strchr(s, ' ');
    if (sp && sp - s == 10) {
      lua_pushlstring(L, s, 10);
      lua_pushliteral(L, "T");
      lua_pushstring(L, sp + 1);
      lua_concat(L, 3);
      lua_remove(L, -2);
    }
    return;
  }
  case OID_JSON:
  case OID_JSONB:
    if (decode_idx) {
      lua_pushvalue(L, decode_idx);
      lua_pushlstring(L, v, (size_t)len);
      lua_call(L, 1, 1);
      if (!lua_isnil(L, -1)) return;
      lua_pop(L, 1);
    }
    lua_pushlstring(L, v, (size_t)len); /* undecodable JSON stays text */
    return;
  default: lua_pushlstring(L, v, (size_t)len); return;
  }
}

static int push_rows(lua_State *L, PGresult *res) {
  int nrows = PQntuples(res), ncols = PQnfields(res);
  int decode_idx = 0;
  for (int c = 0; c < ncols && !decode_idx; c++)
    if (PQftype(res, c) == OID_JSON || PQftype(res, c) == OID_JSONB) {
      if (json_fn(L, "decode")) decode_idx = lua_gettop(L);
    }
  luaL_checkstack(L, ncols + 8, "too many columns");
  lua_createtable(L, nrows, 1);
  int rows = lua_gettop(L);
  for (int c = 0; c < ncols; c++) lua_pushstring(L, PQfname(res, c));
  for (int r = 0; r < nrows; r++) {
    lua_createtable(L, 0, ncols);
    for (int c = 0; c < ncols; c++) {
      lua_pushvalue(L, rows + 1 + c);
      push_cell(L, res, r, c, decode_idx);
      lua_rawset(L, -3);
    }
    lua_rawseti(L, rows, r + 1);
  }
  lua_settop(L, rows);
  const char *n = PQcmdTuples(res);
  if (n && *n && strncmp(PQcmdStatus(res), "SELECT", 6) != 0) { /* INSERT/UPDATE/DELETE (RETURNING too) */
    lua_pushinteger(L, strtoll(n, NULL, 10));
    lua_setfield(L, rows, "changes");
  }
  if (decode_idx) lua_remove(L, decode_idx);
  return 1;
}

/* arguments first..top → params (strings anchored on the stack) */
static lr_pg_param_t *collect_params(lua_State *L, int first, int *n) {
  int top = lua_gettop(L);
  *n = top - first + 1;
  if (*n <= 0) {
    *n = 0;
    return NULL;
  }
  lr_pg_param_t *p = lua_newuserdatauv(L, (size_t)*n * sizeof *p, 0);
  memset(p, 0, (size_t)*n * sizeof *p);
  for (int i = 0; i < *n; i++) {
    int idx = first + i;
    switch (lua_type(L, idx)) {
    case LUA_TNIL: continue;
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == NULL) continue;
      return luaL_error(L, "query: parameter %d: cannot send a light userdata", i + 1), NULL;
    case LUA_TBOOLEAN: lua_pushstring(L, lua_toboolean(L, idx) ? "true" : "false"); break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx))
        lua_pushfstring(L, "%I", (LUAI_UACINT)lua_tointeger(L, idx));
      else {
        char buf[64];
        snprintf(buf, sizeof buf, "%.17g", lua_tonumber(L, idx));
        lua_pushstring(L, buf);
      }
      break;
    case LUA_TSTRING: lua_pushvalue(L, idx); break;
    case LUA_TTABLE:
      if (!json_fn(L, "encode")) return luaL_error(L, "query: lariat.json is not loaded"), NULL;
      lua_pushvalue(L, idx);
      lua_call(L, 1, 1);
      break;
    default: return luaL_error(L, "query: parameter %d: cannot send a %s", i + 1, luaL_typename(L, idx)), NULL;
    }
    lua_replace(L, idx); /* anchored where it was */
    size_t len;
    p[i].value = lua_tolstring(L, idx, &len);
    p[i].len = (int)len;
    p[i].binary = !lr_utf8_valid(p[i].value, len) || memchr(p[i].value, 0, len) != NULL; /* bytea */
  }
  return p;
}

/* ---- pools ---- */

static lr_pg_pool_t *pool_of(lua_State *L, db_box_t *b) {
  if (b->pool) return b->pool;
  lr_co_t *co = lr_co_current(L);
  if (co == NULL) luaL_error(L, "pg: queries run in a handler's coroutine (or one from lariat.spawn)");
  for (pool_ref_t *r = pools; r; r = r->next)
    if (r->size == b->size && strcmp(r->key, b->conninfo) == 0) return b->pool = r->pool;
  pool_ref_t *r = calloc(1, sizeof *r);
  if (r == NULL || (r->key = strdup(b->conninfo)) == NULL) {
    free(r);
    luaL_error(L, "out of memory");
  }
  r->size = b->size;
  r->pool = lr_pg_pool_new(&co->app->lw->w->loop, b->conninfo, b->size);
  if (r->pool == NULL) {
    free(r->key);
    free(r);
    luaL_error(L, "out of memory");
  }
  r->next = pools;
  pools = r;
  pthread_mutex_lock(&all_mu);
  r->next_all = all_refs;
  all_refs = r;
  pthread_mutex_unlock(&all_mu);
  return b->pool = r->pool;
}

/* ---- waiting ---- */

typedef struct pgwait_s {
  lr_co_t *co;
  lr_pg_op_t *op; /* until done */
  int done;
  PGresult *res;
  lr_pg_conn_t *kept;
  uint64_t timeout_ms;
  char err[256];
  char sqlstate[6];
} pgwait_t;

static void on_result(void *data, PGresult *res, const char *err, const char *sqlstate, lr_pg_conn_t *kept) {
  pgwait_t *w = data;
  w->op = NULL;
  w->done = 1;
  w->res = res;
  w->kept = kept;
  if (err) snprintf(w->err, sizeof w->err, "%s", err);
  snprintf(w->sqlstate, sizeof w->sqlstate, "%s", sqlstate ? sqlstate : "");
  lr_co_wake(w->co);
}

static void wait_free(pgwait_t *w) {
  PQclear(w->res);
  free(w);
}

static void wait_abandon(pgwait_t *w) {
  if (!w->done)
    lr_pg_op_cancel(w->op); /* cancelled on the server too */
  else if (w->kept)
    lr_pg_conn_release(w->kept); /* a transaction that will never run: closed, rolled back */
  wait_free(w);
}

static void on_cancel(lr_co_t *co, void *arg) {
  (void)co;
  wait_abandon(arg);
}

static int run(lua_State *L, lr_pg_pool_t *pool, lr_pg_conn_t *pinned, const char *sql, lr_pg_param_t *params,
               int n, int flags, uint64_t timeout_ms, lua_KFunction k) {
  lr_co_t *co = lr_co_current(L);
  if (co == NULL || co->L != L || !lua_isyieldable(L))
    return luaL_error(L, "pg: queries run in a handler's coroutine (or one from lariat.spawn)");
  pgwait_t *w = calloc(1, sizeof *w);
  if (w == NULL) return luaL_error(L, "out of memory");
  w->co = co;
  w->timeout_ms = timeout_ms;
  char err[256];
  w->op = lr_pg_query(pool, pinned, sql, params, n, flags, on_result, w, err, sizeof err);
  if (w->op == NULL) {
    free(w);
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_pushlightuserdata(L, w);
  return lr_co_wait(L, co, timeout_ms, on_cancel, w, k);
}

/* in k: the finished wait, or NULL with nil, "timeout" pushed; a wake for a
 * drain waits again (a query still finishes) */
static pgwait_t *wait_back(lua_State *L, lua_KFunction k) {
  pgwait_t *w = lua_touserdata(L, -1);
  lr_co_t *co = lr_co_current(L);
  if (!w->done) {
    if (!co->timed_out) {
      lr_co_wait(L, co, w->timeout_ms, on_cancel, w, k);
      return NULL; /* not reached */
    }
    lua_pop(L, 1);
    wait_abandon(w);
    luaL_pushfail(L);
    lua_pushliteral(L, "timeout");
    return NULL;
  }
  lua_pop(L, 1);
  return w;
}

static int push_outcome(lua_State *L, pgwait_t *w, int rows) {
  if (w->err[0]) {
    luaL_pushfail(L);
    lua_pushstring(L, w->err);
    lua_pushstring(L, w->sqlstate);
    return 3;
  }
  if (rows && w->res)
    push_rows(L, w->res);
  else
    lua_pushboolean(L, 1);
  return 1;
}

static int query_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  pgwait_t *w = wait_back(L, query_k);
  if (w == NULL) return 2;
  int n = push_outcome(L, w, 1);
  wait_free(w);
  return n;
}

static int exec_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  pgwait_t *w = wait_back(L, exec_k);
  if (w == NULL) return 2;
  int n = push_outcome(L, w, 0);
  wait_free(w);
  return n;
}

/* ---- db and tx methods ---- */

static tx_box_t *tx_of(lr_co_t *co, lr_pg_pool_t *pool) {
  for (tx_box_t *t = open_txs; t; t = t->next)
    if (t->co == co && t->pool == pool) return t;
  return NULL;
}

static void tx_forget(tx_box_t *tx) {
  tx->open = 0;
  for (tx_box_t **pp = &open_txs; *pp; pp = &(*pp)->next)
    if (*pp == tx) {
      *pp = tx->next;
      break;
    }
}

/* where a statement runs: (pool, pinned connection or NULL) */
static lr_pg_pool_t *target(lua_State *L, lr_pg_conn_t **pinned, uint64_t *timeout_ms, int *flags) {
  db_box_t *b = luaL_testudata(L, 1, PG_MT);
  if (b) {
    lr_pg_pool_t *pool = pool_of(L, b);
    tx_box_t *tx = tx_of(lr_co_current(L), pool);
    *pinned = tx ? tx->conn : NULL;
    *flags = tx ? LR_PG_KEEP : 0;
    *timeout_ms = b->timeout_ms;
    if (tx && tx->conn == NULL) luaL_error(L, "pg: transaction lost its connection");
    return pool;
  }
  tx_box_t *tx = luaL_checkudata(L, 1, TX_MT);
  if (!tx->open || tx->conn == NULL) luaL_error(L, "pg: transaction is over");
  *pinned = tx->conn;
  *flags = LR_PG_KEEP;
  *timeout_ms = tx->timeout_ms;
  return tx->pool;
}

static int m_query(lua_State *L) {
  lr_pg_conn_t *pinned;
  uint64_t timeout_ms;
  int flags;
  lr_pg_pool_t *pool = target(L, &pinned, &timeout_ms, &flags);
  const char *sql = luaL_checkstring(L, 2);
  int n;
  lr_pg_param_t *p = collect_params(L, 3, &n);
  return run(L, pool, pinned, sql, p, n, flags, timeout_ms, query_k);
}

static int m_exec(lua_State *L) {
  lr_pg_conn_t *pinned;
  uint64_t timeout_ms;
  int flags;
  lr_pg_pool_t *pool = target(L, &pinned, &timeout_ms, &flags);
  const char *sql = luaL_checkstring(L, 2);
  return run(L, pool, pinned, sql, NULL, 0, flags | LR_PG_SCRIPT, timeout_ms, exec_k);
}

/* tx's connection goes back (closed if still inside the transaction) */
static int tx_close(lua_State *L) {
  tx_box_t *tx = luaL_checkudata(L, 1, TX_MT);
  if (tx->open) tx_forget(tx);
  if (tx->conn) {
    lr_pg_conn_t *c = tx->conn;
    tx->conn = NULL;
    lr_pg_conn_release(c);
  }
  return 0;
}

/* stack in the continuations: 1 db, 2 fn, 3 tx (to-be-closed), 4… fn's results or error */

static int tx_end(lua_State *L, int committing, lua_KFunction k) {
  tx_box_t *tx = lua_touserdata(L, 3);
  pgwait_t *w = wait_back(L, k);
  tx->conn = NULL; /* COMMIT/ROLLBACK ran without KEEP: the connection went back (or, failed, was closed) */
  tx_forget(tx);
  if (w == NULL) return 2;
  if (w->err[0]) {
    int n = push_outcome(L, w, 0);
    wait_free(w);
    return n;
  }
  wait_free(w);
  if (committing) return lua_gettop(L) - 3;
  luaL_pushfail(L);
  lua_pushvalue(L, 4);
  return 2;
}

static int tx_commit_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return tx_end(L, 1, tx_commit_k);
}

static int tx_rollback_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return tx_end(L, 0, tx_rollback_k);
}

static int tx_body_k(lua_State *L, int status, lua_KContext ctx) {
  (void)ctx;
  tx_box_t *tx = lua_touserdata(L, 3);
  int ok = status == LUA_OK || status == LUA_YIELD;
  if (!ok && lua_touserdata(L, -1) == &lr_stop_handler) return lua_error(L); /* __close closes the connection */
  if (!ok) lua_settop(L, 4);
  if (tx->conn == NULL) { /* lost its connection (a timeout, the server): rolled back already */
    tx_forget(tx);
    luaL_pushfail(L);
    if (ok)
      lua_pushliteral(L, "closed");
    else
      lua_pushvalue(L, 4);
    return 2;
  }
  return run(L, tx->pool, tx->conn, ok ? "COMMIT" : "ROLLBACK", NULL, 0, 0, tx->timeout_ms,
             ok ? tx_commit_k : tx_rollback_k);
}

static int tx_begin_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  tx_box_t *tx = lua_touserdata(L, 3);
  pgwait_t *w = wait_back(L, tx_begin_k);
  if (w == NULL) return 2;
  if (w->err[0]) {
    if (w->kept) lr_pg_conn_release(w->kept);
    int n = push_outcome(L, w, 0);
    wait_free(w);
    return n;
  }
  tx->conn = w->kept;
  wait_free(w);
  tx->open = 1;
  tx->co = lr_co_current(L);
  tx->next = open_txs;
  open_txs = tx;
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 3);
  status = lua_pcallk(L, 1, LUA_MULTRET, 0, 0, tx_body_k);
  return tx_body_k(L, status, 0);
}

static int m_transaction(lua_State *L) {
  db_box_t *b = luaL_checkudata(L, 1, PG_MT);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lr_pg_pool_t *pool = pool_of(L, b);
  if (tx_of(lr_co_current(L), pool)) return luaL_error(L, "pg: transactions do not nest");
  lua_settop(L, 2);
  tx_box_t *tx = lua_newuserdatauv(L, sizeof *tx, 0);
  memset(tx, 0, sizeof *tx);
  tx->pool = pool;
  tx->timeout_ms = b->timeout_ms;
  luaL_setmetatable(L, TX_MT);
  lua_toclose(L, 3);
  return run(L, pool, NULL, "BEGIN", NULL, 0, LR_PG_KEEP, b->timeout_ms, tx_begin_k);
}

/* ---- LISTEN (the queue, waits and sub object are subscription.c's) ---- */

typedef struct note_s {
  char *channel, *payload;
} note_t;

typedef struct sub_s {
  lr_sub_t sub; /* first: subscription.c hands us back this */
  lr_pg_pool_t *pool;
  lr_pg_conn_t *conn; /* NULL once lost or closed */
  char *channel;
} sub_t;

static void on_notify(void *data, const char *channel, const char *payload, const char *err) {
  sub_t *s = data;
  if (channel == NULL) {
    if (err) {
      s->conn = NULL; /* the core closed it */
      lr_sub_lost(&s->sub, err);
    } else {
      lr_sub_confirmed(&s->sub);
    }
    return;
  }
  note_t *n = malloc(sizeof *n);
  if (n == NULL) return;
  n->channel = strdup(channel);
  n->payload = strdup(payload ? payload : "");
  lr_sub_message(&s->sub, n);
}

static int note_push(lua_State *L, void *msg) {
  note_t *n = msg;
  lua_pushstring(L, n->payload ? n->payload : "");
  lua_pushstring(L, n->channel ? n->channel : "");
  return 2;
}

static void note_free(void *msg) {
  note_t *n = msg;
  free(n->channel);
  free(n->payload);
  free(n);
}

static int sub_listen(lua_State *L, lr_sub_t *sub, char *err, size_t errlen) {
  (void)L;
  sub_t *s = (sub_t *)sub;
  s->sub.pending = 1;
  s->conn = lr_pg_listen(s->pool, s->channel, on_notify, s, err, errlen);
  return s->conn ? 0 : -1;
}

static void sub_close_conn(lr_sub_t *sub) {
  sub_t *s = (sub_t *)sub;
  if (s->conn) lr_pg_listen_close(s->conn);
  s->conn = NULL;
}

static void sub_destroy(lr_sub_t *sub) {
  sub_t *s = (sub_t *)sub;
  free(s->channel);
  free(s);
}

static const lr_sub_driver_t listen_driver = {
    "pg", note_push, note_free, sub_listen, sub_close_conn, sub_destroy,
};

static int m_listen(lua_State *L) {
  db_box_t *b = luaL_checkudata(L, 1, PG_MT);
  const char *channel = luaL_checkstring(L, 2);
  lr_pg_pool_t *pool = pool_of(L, b);
  sub_t *s = calloc(1, sizeof *s);
  if (s == NULL || (s->channel = strdup(channel)) == NULL) {
    free(s);
    return luaL_error(L, "out of memory");
  }
  s->sub.drv = &listen_driver;
  s->sub.wait_ms = b->timeout_ms;
  s->pool = pool;
  return lr_sub_start(L, SUB_MT, &s->sub);
}

/* ---- connect ---- */

static int l_connect(lua_State *L) {
  size_t len;
  const char *ci = luaL_checklstring(L, 1, &len);
  int size = 10;
  double timeout = 30;
  if (lua_istable(L, 2)) {
    if (lua_getfield(L, 2, "pool") != LUA_TNIL) size = (int)luaL_checkinteger(L, -1);
    if (lua_getfield(L, 2, "timeout") != LUA_TNIL) timeout = luaL_checknumber(L, -1);
    lua_settop(L, 2);
  }
  if (size < 1) return luaL_argerror(L, 2, "pool must be at least 1");
  char *err = NULL;
  PQconninfoOption *o = PQconninfoParse(ci, &err); /* parse only: no connection here */
  if (o == NULL) {
    luaL_pushfail(L);
    lua_pushfstring(L, "bad conninfo: %s", err ? err : "out of memory");
    PQfreemem(err);
    return 2;
  }
  PQconninfoFree(o);
  db_box_t *b = lua_newuserdatauv(L, sizeof *b + len + 1, 0);
  memset(b, 0, sizeof *b);
  memcpy(b->conninfo, ci, len + 1);
  b->size = size;
  b->timeout_ms = timeout > 0 ? (uint64_t)(timeout * 1000 + 0.5) : 0;
  luaL_setmetatable(L, PG_MT);
  return 1;
}

void lr_pg_lua_open(lua_State *L) {
  static const luaL_Reg db_methods[] = {
      {"query", m_query}, {"exec", m_exec}, {"transaction", m_transaction}, {"listen", m_listen}, {NULL, NULL},
  };
  static const luaL_Reg tx_methods[] = {{"query", m_query}, {"exec", m_exec}, {NULL, NULL}};
  luaL_newmetatable(L, PG_MT);
  luaL_newlib(L, db_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newmetatable(L, TX_MT);
  luaL_newlib(L, tx_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, tx_close);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, tx_close);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lr_sub_metatable(L, SUB_MT, "pg");
  lua_pushcfunction(L, l_connect);
  lua_setfield(L, -2, "pg_connect");
}

void lr_pg_lua_free_all(void) {
  lr_pg_free_all(); /* every worker's pools and connections */
  while (all_refs) {
    pool_ref_t *r = all_refs;
    all_refs = r->next_all;
    free(r->key);
    free(r);
  }
}
