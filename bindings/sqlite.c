/* lariat.sqlite: the embedded database, queries run on the database's own
 * thread (core/data/sqlite.c) while the handler's coroutine waits.
 *
 *   lariat.sqlite.open(path[, {timeout=30, busy_timeout=5000, cache=64, readonly=false}]) → db
 *   db:query(sql, ...) → rows | nil, err      rows[i] = {column = value}; for writes
 *                                              rows.changes, rows.last_insert_id
 *   db:exec(script) → true | nil, err
 *   db:transaction(function(tx) … end) → fn's results | nil, err
 *
 * A transaction pins the database's one connection: other coroutines' queries
 * wait until it commits or rolls back. An error raised inside fn rolls back and
 * is RETURNED as nil, err (it is not re-raised), as pg's transaction does; a
 * handler stopped by the server (client gone, over budget) rolls back too.
 * Inside fn, db:query and tx:query are the same thing.
 *
 * Outside a coroutine (the app's main chunk, at load time, on the main thread)
 * a call blocks until the thread answers, so a schema can be created before
 * the app serves. */
#include <stdlib.h>
#include <string.h>

#include "../core/data/data.h"
#include "bindings.h"

#define DB_MT "lariat.sqlite.db"
#define TX_MT "lariat.sqlite.tx"

typedef struct db_box_s {
  lr_sqlite_t *db;
  uint64_t timeout_ms;
} db_box_t;

typedef struct tx_box_s {
  lr_sqlite_t *db;
  uint64_t txn;
  uint64_t timeout_ms;
  int open;         /* BEGIN succeeded; no COMMIT/ROLLBACK yet */
  lr_co_t *co;      /* the coroutine running fn: its db:query calls join the transaction */
  struct tx_box_s *next;
} tx_box_t;

static __thread tx_box_t *open_txs;
static uint64_t next_txn = 1;

/* ---- values ---- */

/* Lua arguments first..top become the job's parameters: nil and lariat.null
 * are NULL, booleans 1/0, strings TEXT (BLOB when not UTF-8) */
static void add_params(lua_State *L, lr_sqlite_job_t *job, int first) {
  int n = lua_gettop(L) - first + 1;
  if (n <= 0) return;
  job->params = calloc((size_t)n, sizeof *job->params);
  if (job->params == NULL) {
    lr_sqlite_job_free(job);
    luaL_error(L, "out of memory");
  }
  job->nparams = n;
  for (int i = 0; i < n; i++) {
    int idx = first + i;
    lr_dval_t *p = &job->params[i];
    switch (lua_type(L, idx)) {
    case LUA_TNIL: p->type = LR_DV_NULL; break;
    case LUA_TBOOLEAN:
      p->type = LR_DV_INT;
      p->v.i = lua_toboolean(L, idx);
      break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        p->type = LR_DV_INT;
        p->v.i = lua_tointeger(L, idx);
      } else {
        p->type = LR_DV_REAL;
        p->v.d = lua_tonumber(L, idx);
      }
      break;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      p->type = lr_utf8_valid(s, len) && !memchr(s, 0, len) ? LR_DV_TEXT : LR_DV_BLOB;
      p->v.s.off = job->bytes.len;
      p->v.s.len = len;
      if (len && lr_buf_append(&job->bytes, s, len)) {
        lr_sqlite_job_free(job);
        luaL_error(L, "out of memory");
      }
      break;
    }
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == NULL) {
        p->type = LR_DV_NULL;
        break;
      }
      /* fallthrough */
    default: {
      const char *tn = luaL_typename(L, idx);
      lr_sqlite_job_free(job);
      luaL_error(L, "query: parameter %d: cannot bind a %s", i + 1, tn);
    }
    }
  }
}

static void push_cell(lua_State *L, const lr_sqlite_job_t *job, const lr_dval_t *v) {
  switch (v->type) {
  case LR_DV_INT: lua_pushinteger(L, (lua_Integer)v->v.i); break;
  case LR_DV_REAL: lua_pushnumber(L, v->v.d); break;
  case LR_DV_TEXT:
  case LR_DV_BLOB: lua_pushlstring(L, job->bytes.base + v->v.s.off, v->v.s.len); break;
  default: lua_pushlightuserdata(L, NULL); break; /* lariat.null */
  }
}

/* rows, or nil, err; frees the job */
static int push_result(lua_State *L, lr_sqlite_job_t *job) {
  if (job->rc) {
    luaL_pushfail(L);
    lua_pushstring(L, job->err);
    lr_sqlite_job_free(job);
    return 2;
  }
  if (job->op != LR_SQ_QUERY) {
    lr_sqlite_job_free(job);
    lua_pushboolean(L, 1);
    return 1;
  }
  int ncols = job->ncols;
  size_t nrows = ncols ? (job->ncells - (size_t)ncols) / (size_t)ncols : 0;
  luaL_checkstack(L, ncols + 4, "too many columns");
  lua_createtable(L, nrows > INT32_MAX ? 0 : (int)nrows, 2);
  int rows = lua_gettop(L);
  for (int c = 0; c < ncols; c++) push_cell(L, job, &job->cells[c]);
  const lr_dval_t *v = job->cells + ncols;
  for (size_t r = 0; r < nrows; r++) {
    lua_createtable(L, 0, ncols);
    for (int c = 0; c < ncols; c++, v++) {
      lua_pushvalue(L, rows + 1 + c);
      push_cell(L, job, v);
      lua_rawset(L, -3);
    }
    lua_rawseti(L, rows, (lua_Integer)r + 1);
  }
  lua_settop(L, rows);
  if (job->wrote) {
    lua_pushinteger(L, job->changes);
    lua_setfield(L, rows, "changes");
    lua_pushinteger(L, job->last_id);
    lua_setfield(L, rows, "last_insert_id");
  }
  lr_sqlite_job_free(job);
  return 1;
}

/* ---- waiting for the thread ---- */

static void on_job_done(lr_sqlite_job_t *job) { lr_co_wake(job->data); }

/* a BEGIN that may have run must not leave the connection pinned for nobody */
static void cancel_job(lr_sqlite_job_t *job) {
  lr_sqlite_t *db = job->db;
  uint64_t txn = job->txn;
  int begin = job->op == LR_SQ_BEGIN;
  lr_sqlite_job_cancel(job);
  if (begin) {
    lr_sqlite_job_t *rb = lr_sqlite_job_new(LR_SQ_ROLLBACK, "", 0);
    if (rb) {
      rb->txn = txn;
      lr_sqlite_submit_detached(db, rb);
    }
  }
}

static void on_cancel(lr_co_t *co, void *arg) {
  (void)co;
  cancel_job(arg);
}

static int on_worker_thread(lua_State *L) {
  lr_app_t *app;
  lua_getallocf(L, (void **)&app);
  uv_thread_t self = uv_thread_self();
  return uv_thread_equal(&self, &app->lw->w->thread);
}

/* Run job and call k with the job pushed on the stack: after a wait in a
 * coroutine, or at once after blocking when no loop is ours (load time). */
static int await_job(lua_State *L, lr_sqlite_t *db, lr_sqlite_job_t *job, uint64_t timeout_ms, lua_KFunction k) {
  lr_co_t *co = lr_co_current(L);
  if (co && co->L == L && lua_isyieldable(L)) {
    job->done = on_job_done;
    job->data = co;
    job->timeout_ms = timeout_ms;
    if (lr_sqlite_submit(db, job, &co->app->lw->w->loop)) {
      lr_sqlite_job_free(job);
      luaL_pushfail(L);
      lua_pushliteral(L, "stopping");
      return 2;
    }
    lua_pushlightuserdata(L, job);
    return lr_co_wait(L, co, timeout_ms, on_cancel, job, k);
  }
  if (on_worker_thread(L)) {
    lr_sqlite_job_free(job);
    return luaL_error(L, "sqlite: cannot wait here (not in a handler's coroutine, or inside a metamethod)");
  }
  if (lr_sqlite_run_sync(db, job)) {
    lr_sqlite_job_free(job);
    luaL_pushfail(L);
    lua_pushliteral(L, "stopping");
    return 2;
  }
  lua_pushlightuserdata(L, job);
  return k(L, LUA_OK, 0);
}

/* In a continuation: *out = the finished job, or NULL with nil, "timeout"
 * pushed (the job cancelled). Woken early because the server is stopping, it
 * waits again (lr_co_wait does not return): a query still finishes during a
 * drain, so a write is not lost halfway. */
static int job_back(lua_State *L, lua_KFunction k, lr_sqlite_job_t **out) {
  lr_sqlite_job_t *job = lua_touserdata(L, -1);
  lr_co_t *co = lr_co_current(L);
  *out = NULL;
  if (!lr_sqlite_job_ready(job)) {
    if (!co->timed_out) return lr_co_wait(L, co, job->timeout_ms, on_cancel, job, k);
    lua_pop(L, 1);
    cancel_job(job);
    luaL_pushfail(L);
    lua_pushliteral(L, "timeout");
    return 2;
  }
  lua_pop(L, 1);
  *out = job;
  return 0;
}

static int result_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lr_sqlite_job_t *job;
  int r = job_back(L, result_k, &job);
  return job ? push_result(L, job) : r;
}

/* ---- transactions ---- */

static tx_box_t *tx_of(lr_co_t *co, lr_sqlite_t *db) {
  for (tx_box_t *t = open_txs; t; t = t->next)
    if (t->co == co && t->db == db) return t;
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

/* fn's coroutine went away (closed, or an error went past us): roll back */
static int tx_close(lua_State *L) {
  tx_box_t *tx = luaL_checkudata(L, 1, TX_MT);
  if (!tx->open) return 0;
  tx_forget(tx);
  lr_sqlite_job_t *rb = lr_sqlite_job_new(LR_SQ_ROLLBACK, "", 0);
  if (rb) {
    rb->txn = tx->txn;
    lr_sqlite_submit_detached(tx->db, rb);
  }
  return 0;
}

/* stack in the continuations below: 1 db, 2 fn, 3 tx (to-be-closed), 4… fn's results or error */

static int tx_end(lua_State *L, int committing, lua_KFunction k) {
  tx_box_t *tx = lua_touserdata(L, 3);
  lr_sqlite_job_t *job;
  job_back(L, k, &job);
  if (job == NULL) {
    /* timed out: the transaction's fate is unknown to us, roll it back */
    lua_pushcfunction(L, tx_close);
    lua_pushvalue(L, 3);
    lua_call(L, 1, 0);
    return 2;
  }
  if (committing && job->rc) {
    lua_pushnil(L);
    lua_pushstring(L, job->err);
    lr_sqlite_job_free(job);
    lua_pushcfunction(L, tx_close); /* COMMIT failed: the transaction is still open; drop it */
    lua_pushvalue(L, 3);
    lua_call(L, 1, 0);
    return 2;
  }
  lr_sqlite_job_free(job);
  tx_forget(tx);
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
  if (!ok && lua_touserdata(L, -1) == &lr_stop_handler) return lua_error(L); /* __close rolls back */
  if (!ok) lua_settop(L, 4); /* the error object */
  lr_sqlite_job_t *job = lr_sqlite_job_new(ok ? LR_SQ_COMMIT : LR_SQ_ROLLBACK, "", 0);
  if (job == NULL) return luaL_error(L, "out of memory");
  job->txn = tx->txn;
  return await_job(L, tx->db, job, tx->timeout_ms, ok ? tx_commit_k : tx_rollback_k);
}

static int tx_begin_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  tx_box_t *tx = lua_touserdata(L, 3);
  lr_sqlite_job_t *job;
  int r = job_back(L, tx_begin_k, &job);
  if (job == NULL) return r;
  if (job->rc) return push_result(L, job);
  lr_sqlite_job_free(job);
  tx->open = 1;
  tx->co = lr_co_current(L);
  tx->next = open_txs;
  open_txs = tx;
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 3);
  status = lua_pcallk(L, 1, LUA_MULTRET, 0, 0, tx_body_k);
  return tx_body_k(L, status, 0);
}

/* ---- methods ---- */

/* the database behind a db or tx handle, and the transaction a job joins */
static lr_sqlite_t *target(lua_State *L, uint64_t *txn, uint64_t *timeout_ms) {
  db_box_t *b = luaL_testudata(L, 1, DB_MT);
  if (b) {
    if (b->db == NULL) luaL_error(L, "sqlite: database is closed");
    tx_box_t *tx = tx_of(lr_co_current(L), b->db);
    *txn = tx ? tx->txn : 0;
    *timeout_ms = b->timeout_ms;
    return b->db;
  }
  tx_box_t *tx = luaL_checkudata(L, 1, TX_MT);
  if (!tx->open) luaL_error(L, "sqlite: transaction is over");
  *txn = tx->txn;
  *timeout_ms = tx->timeout_ms;
  return tx->db;
}

/* db:query(sql, ...) and db:exec(script): one job on the database's thread;
 * only a query binds parameters */
static int submit(lua_State *L, int kind) {
  uint64_t txn, timeout_ms;
  lr_sqlite_t *db = target(L, &txn, &timeout_ms);
  size_t len;
  const char *sql = luaL_checklstring(L, 2, &len);
  lr_sqlite_job_t *job = lr_sqlite_job_new(kind, sql, len);
  if (job == NULL) return luaL_error(L, "out of memory");
  job->txn = txn;
  if (kind == LR_SQ_QUERY) add_params(L, job, 3);
  lua_settop(L, 0);
  return await_job(L, db, job, timeout_ms, result_k);
}

static int m_query(lua_State *L) { return submit(L, LR_SQ_QUERY); }
static int m_exec(lua_State *L) { return submit(L, LR_SQ_EXEC); }

static int m_transaction(lua_State *L) {
  db_box_t *b = luaL_checkudata(L, 1, DB_MT);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (b->db == NULL) return luaL_error(L, "sqlite: database is closed");
  if (tx_of(lr_co_current(L), b->db)) return luaL_error(L, "sqlite: transactions do not nest");
  lua_settop(L, 2);
  tx_box_t *tx = lua_newuserdatauv(L, sizeof *tx, 0);
  memset(tx, 0, sizeof *tx);
  tx->db = b->db;
  tx->timeout_ms = b->timeout_ms;
  tx->txn = __atomic_fetch_add(&next_txn, 1, __ATOMIC_RELAXED);
  luaL_setmetatable(L, TX_MT);
  lua_toclose(L, 3);
  lr_sqlite_job_t *job = lr_sqlite_job_new(LR_SQ_BEGIN, "", 0);
  if (job == NULL) return luaL_error(L, "out of memory");
  job->txn = tx->txn;
  return await_job(L, b->db, job, b->timeout_ms, tx_begin_k);
}

static int m_close(lua_State *L) {
  db_box_t *b = luaL_checkudata(L, 1, DB_MT);
  b->db = NULL; /* the file stays open for the other handles; it closes at exit */
  return 0;
}

static int m_tostring(lua_State *L) {
  if (luaL_testudata(L, 1, TX_MT)) {
    lua_pushfstring(L, "sqlite transaction (%p)", lua_touserdata(L, 1));
  } else {
    db_box_t *b = luaL_checkudata(L, 1, DB_MT);
    lua_pushfstring(L, "sqlite database (%s)", b->db ? "open" : "closed");
  }
  return 1;
}

/* lariat.sqlite.open(path[, opts]) */
static int l_open(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lr_sqlite_opts_t o = {.busy_timeout_ms = 5000, .cache_size = 64};
  double timeout = 30;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    if (lua_getfield(L, 2, "timeout") != LUA_TNIL) timeout = luaL_checknumber(L, -1);
    if (lua_getfield(L, 2, "busy_timeout") != LUA_TNIL) o.busy_timeout_ms = (int)(luaL_checknumber(L, -1) * 1000);
    if (lua_getfield(L, 2, "cache") != LUA_TNIL) o.cache_size = (int)luaL_checkinteger(L, -1);
    lua_getfield(L, 2, "readonly");
    o.readonly = lua_toboolean(L, -1);
    lua_settop(L, 2);
  }
  char err[512];
  lr_sqlite_t *db = lr_sqlite_get(path, &o, err, sizeof err);
  if (db == NULL) {
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  db_box_t *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->db = db;
  b->timeout_ms = timeout > 0 ? (uint64_t)(timeout * 1000 + 0.5) : 0;
  luaL_setmetatable(L, DB_MT);
  return 1;
}

static const luaL_Reg db_methods[] = {
    {"query", m_query}, {"exec", m_exec}, {"transaction", m_transaction}, {"close", m_close}, {NULL, NULL},
};
static const luaL_Reg tx_methods[] = {{"query", m_query}, {"exec", m_exec}, {NULL, NULL}};

void lr_sqlite_lua_open(lua_State *L) {
  luaL_newmetatable(L, DB_MT);
  luaL_newlib(L, db_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, m_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  luaL_newmetatable(L, TX_MT);
  luaL_newlib(L, tx_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, tx_close);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, tx_close);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, m_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_open);
  lua_setfield(L, -2, "sqlite_open");
}
