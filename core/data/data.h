/* core/data/: database drivers, C only (no Lua). The bindings in bindings/
 * (sqlite.c, redis.c, pg.c) turn these into Lua values and coroutine waits.
 *
 * SQLite: one thread per open database file, fed by a queue; a finished job
 * comes back to the worker that submitted it through that worker's port (a
 * uv_async_t), or to a blocked caller when no loop is involved (app load). */
#ifndef LARIAT_DATA_H
#define LARIAT_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "../lariat.h"

/* a value crossing between a driver and a binding: parameters in, cells out.
 * Text and blobs live in the owner's byte buffer at off/len, so the buffer may
 * grow while values are added. */
enum lr_dval_type { LR_DV_NULL, LR_DV_INT, LR_DV_REAL, LR_DV_TEXT, LR_DV_BLOB };
typedef struct lr_dval_s {
  int type;
  union {
    int64_t i;
    double d;
    struct {
      size_t off, len;
    } s;
  } v;
} lr_dval_t;

/* ---- SQLite ---- */

typedef struct lr_sqlite_s lr_sqlite_t; /* an open database file: thread + queue + connection */
typedef struct lr_sqlite_job_s lr_sqlite_job_t;
typedef void (*lr_sqlite_done_cb)(lr_sqlite_job_t *job);

enum lr_sqlite_op { LR_SQ_QUERY, LR_SQ_EXEC, LR_SQ_BEGIN, LR_SQ_COMMIT, LR_SQ_ROLLBACK };

typedef struct lr_sqlite_opts_s {
  int busy_timeout_ms; /* waits for another process's lock; default 5000 */
  int cache_size;      /* prepared statements kept per database; default 64 */
  int readonly;
} lr_sqlite_opts_t;

struct lr_sqlite_job_s {
  /* written by the submitter before lr_sqlite_submit, then read-only */
  int op;
  uint64_t txn;          /* 0, or the transaction this job belongs to (LR_SQ_BEGIN opens it) */
  lr_buf_t bytes;        /* the SQL (NUL-terminated) at 0, parameter bytes, then result bytes */
  size_t sql_len;
  lr_dval_t *params;     /* owned by the job */
  int nparams;
  lr_sqlite_done_cb done; /* on the submitter's loop; never called for a cancelled job */
  void *data;
  uint64_t timeout_ms;   /* the submitter's, kept for a wait that starts again */
  /* written by the database thread, read by `done` */
  int rc;                /* 0 or -1 */
  char err[256];
  int ncols;
  lr_dval_t *cells;      /* ncols column names (TEXT), then the rows' values, row after row */
  size_t ncells, cap;
  int wrote;             /* the statement may write: changes and last_id mean something */
  int64_t changes, last_id;
  /* private to core/data/sqlite.c */
  lr_link_t link;        /* in the database's queue */
  lr_sqlite_job_t *next_done;
  lr_sqlite_t *db;
  struct lr_sqlite_port_s *port;
  int state;
  int cancelled;
};

/* The database for path (":memory:" is one in-memory database shared by the
 * workers), opened on first use with opts and kept until lr_sqlite_stop_all;
 * later opens of the same file share it and ignore opts. */
lr_sqlite_t *lr_sqlite_get(const char *path, const lr_sqlite_opts_t *opts, char *err, size_t errlen);
lr_sqlite_job_t *lr_sqlite_job_new(int op, const char *sql, size_t len);
void lr_sqlite_job_free(lr_sqlite_job_t *job);
/* Queue job; `done` runs later on loop. Returns -1 (job untouched) once the
 * databases are stopping. */
int lr_sqlite_submit(lr_sqlite_t *db, lr_sqlite_job_t *job, uv_loop_t *loop);
/* Queue job and block the calling thread until it ran (no loop: app load). */
int lr_sqlite_run_sync(lr_sqlite_t *db, lr_sqlite_job_t *job);
/* the job ran and its results are the submitter's to read (done was called,
 * or lr_sqlite_run_sync returned) */
int lr_sqlite_job_ready(const lr_sqlite_job_t *job);
/* The submitter no longer wants the result: a queued job is dropped, a running
 * one interrupted (sqlite3_interrupt); the job is freed when the thread is done
 * with it (at once if it is already back). Call on the submitter's loop; the job must not be touched after. */
void lr_sqlite_job_cancel(lr_sqlite_job_t *job);
/* Queue a job nobody waits for (a rollback of an abandoned transaction). */
void lr_sqlite_submit_detached(lr_sqlite_t *db, lr_sqlite_job_t *job);
/* process exit: stop and join every database thread (workers already stopped),
 * then, after the workers' loops are closed, free what is left */
void lr_sqlite_stop_all(void);
void lr_sqlite_free_all(void);

/* ---- Redis (hiredis async, on the worker's loop) ---- */

struct redisReply;

typedef struct lr_redis_url_s {
  char host[256];
  int port;
  char user[128], password[256];
  int db;
  uint64_t connect_timeout_ms; /* ?timeout= (seconds) also bounds each command */
  uint64_t timeout_ms;
} lr_redis_url_t;

/* redis://[[user]:password@]host[:port][/db][?timeout=seconds] */
int lr_redis_url_parse(const char *url, lr_redis_url_t *u, char *err, size_t errlen);

typedef struct lr_redis_conn_s lr_redis_conn_t; /* one connection; reconnects when used after a failure */
typedef struct lr_redis_pending_s lr_redis_pending_t;
/* a reply (owned by the callee: freeReplyObject) or NULL and a short error
 * ("connection refused", "closed", "timeout"...); runs from the loop, outside
 * hiredis, so it may send more commands or close the connection */
typedef void (*lr_redis_cb)(void *data, struct redisReply *reply, const char *err);

lr_redis_conn_t *lr_redis_conn_new(uv_loop_t *loop, const lr_redis_url_t *u);
/* Send a command (connecting first if needed). Returns the pending command,
 * or NULL with err filled (cb is then never called). */
lr_redis_pending_t *lr_redis_send(lr_redis_conn_t *c, int argc, const char **argv, const size_t *lens,
                                  lr_redis_cb cb, void *data, char *err, size_t errlen);
/* SUBSCRIBE/PSUBSCRIBE: cb runs for every reply on the subscription (the
 * confirmations too), and with NULL once the connection is lost */
int lr_redis_subscribe(lr_redis_conn_t *c, int argc, const char **argv, const size_t *lens, lr_redis_cb cb,
                       void *data, char *err, size_t errlen);
/* the reply is no longer wanted: cb will not run for it (valid until its cb ran) */
void lr_redis_pending_drop(lr_redis_pending_t *p);
/* drop the connection now: every pending command fails with why */
void lr_redis_conn_reset(lr_redis_conn_t *c, const char *why);
int lr_redis_conn_usable(const lr_redis_conn_t *c); /* connected or connecting, no failure seen */
unsigned lr_redis_conn_pending(const lr_redis_conn_t *c);
void lr_redis_conn_free(lr_redis_conn_t *c); /* pending commands fail first ("closed") */
void lr_redis_reply_free(struct redisReply *r);
/* process exit, after the workers stopped and before their loops close */
void lr_redis_free_all(void);

/* ---- PostgreSQL (libpq async, on the worker's loop) ---- */

struct pg_conn;
struct pg_result;

typedef struct lr_pg_pool_s lr_pg_pool_t; /* one worker's connections to one server */
typedef struct lr_pg_conn_s lr_pg_conn_t;
typedef struct lr_pg_op_s lr_pg_op_t;     /* one query: waiting for a connection, then running */

/* res (owned by the callee: PQclear) or NULL and a short error; sqlstate is
 * the server's code or "". conn is non-NULL only for an LR_PG_KEEP op: the
 * connection stays the caller's (a transaction) until lr_pg_conn_release. */
typedef void (*lr_pg_cb)(void *data, struct pg_result *res, const char *err, const char *sqlstate,
                         lr_pg_conn_t *conn);
/* a notification on a listening connection; channel NULL: the connection is lost (err) */
typedef void (*lr_pg_notify_cb)(void *data, const char *channel, const char *payload, const char *err);

enum { LR_PG_KEEP = 1, LR_PG_SCRIPT = 2 /* simple protocol, many statements, no parameters */ };

typedef struct lr_pg_param_s {
  const char *value; /* NULL: SQL NULL */
  int len;
  int binary;        /* bytes that are not text (bytea) */
} lr_pg_param_t;

lr_pg_pool_t *lr_pg_pool_new(uv_loop_t *loop, const char *conninfo, int size);
/* Run sql on pinned (a kept connection) or on a pooled one (waiting for one,
 * connecting as needed). Parameters are copied. Returns the op (for
 * lr_pg_op_cancel until cb ran), or NULL with err filled (cb never called). */
lr_pg_op_t *lr_pg_query(lr_pg_pool_t *pool, lr_pg_conn_t *pinned, const char *sql, const lr_pg_param_t *params,
                        int nparams, int flags, lr_pg_cb cb, void *data, char *err, size_t errlen);
/* the caller is gone: a waiting op is dropped; a running query is cancelled on
 * the server (PQcancel on the thread pool: it blocks); cb never runs */
void lr_pg_op_cancel(lr_pg_op_t *op);
/* a kept connection back to the pool; one left inside a transaction is closed
 * instead (the server rolls it back) */
void lr_pg_conn_release(lr_pg_conn_t *c);
/* LISTEN channel on a connection of its own; cb(data, NULL, NULL, NULL) once
 * listening, then per notification; lost → cb with err. */
lr_pg_conn_t *lr_pg_listen(lr_pg_pool_t *pool, const char *channel, lr_pg_notify_cb cb, void *data, char *err,
                           size_t errlen);
void lr_pg_listen_close(lr_pg_conn_t *c);
void lr_pg_free_all(void); /* exit, before the workers' loops close */

#endif
