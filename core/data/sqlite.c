/* SQLite off the loop: each open database file has one thread and one
 * connection, fed by a queue of jobs from every worker.
 *
 * Why one connection per file rather than one writer plus WAL readers: SQLite
 * serialises writers anyway, and with a single connection the workers of this
 * process never contend for the file lock, so they never see "database is
 * locked" (the busy timeout only covers other processes). A primary-key read
 * takes a few microseconds; the handoff between threads costs more than the
 * read, so parallel readers would not raise throughput enough to pay for a
 * second statement cache and for lock waits between our own connections.
 *
 * A transaction pins the connection: while one is open, the thread runs only
 * that transaction's jobs; the others wait in the queue.
 *
 * Results go back to the submitting worker through its port: a uv_async_t on
 * the worker's loop and a list of finished jobs. A cancelled job is dropped
 * from the queue, or interrupted and freed when the thread hands it back. */
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"

/* JOB_DONE: handed to the port or the blocked caller; JOB_BACK: the submitter has it */
enum { JOB_NEW, JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_BACK };

typedef struct stmt_slot_s {
  char *sql;
  size_t len;
  uint64_t hash;
  sqlite3_stmt *stmt;
  uint64_t used; /* LRU clock */
} stmt_slot_t;

struct lr_sqlite_s {
  lr_sqlite_t *next_all;
  char *key;
  sqlite3 *conn;
  uv_thread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;      /* the queue has work, or stop */
  pthread_cond_t done_cv; /* a synchronous job finished */
  lr_link_t queue;
  lr_sqlite_job_t *running;
  uint64_t txn_owner; /* the open transaction: only its jobs run */
  int stopping;
  /* the thread's own */
  stmt_slot_t *cache;
  int cache_n, cache_cap;
  uint64_t clock;
};

typedef struct lr_sqlite_port_s {
  uv_async_t async;
  pthread_mutex_t mu;
  lr_sqlite_job_t *head, *tail; /* finished jobs */
  struct lr_sqlite_port_s *next_all;
} lr_sqlite_port_t;

static pthread_mutex_t all_mu = PTHREAD_MUTEX_INITIALIZER;
static lr_sqlite_t *all_dbs;
static lr_sqlite_port_t *all_ports;
static int all_stopped;
static __thread lr_sqlite_port_t *my_port; /* this worker thread's */

/* ---- jobs ---- */

lr_sqlite_job_t *lr_sqlite_job_new(int op, const char *sql, size_t len) {
  lr_sqlite_job_t *job = calloc(1, sizeof *job);
  if (job == NULL) return NULL;
  job->op = op;
  if (lr_buf_reserve(&job->bytes, len + 1 + 64)) {
    free(job);
    return NULL;
  }
  memcpy(job->bytes.base, sql, len);
  job->bytes.base[len] = '\0';
  job->bytes.len = len + 1;
  job->sql_len = len;
  lr_list_init(&job->link);
  return job;
}

void lr_sqlite_job_free(lr_sqlite_job_t *job) {
  if (job == NULL) return;
  lr_buf_free(&job->bytes);
  free(job->params);
  free(job->cells);
  free(job);
}

static int add_cell(lr_sqlite_job_t *job, int type, const void *p, size_t n, int64_t i, double d) {
  if (job->ncells == job->cap) {
    size_t cap = job->cap ? job->cap * 2 : 16;
    lr_dval_t *c = realloc(job->cells, cap * sizeof *c);
    if (c == NULL) return -1;
    job->cells = c;
    job->cap = cap;
  }
  lr_dval_t *v = &job->cells[job->ncells];
  v->type = type;
  if (type == LR_DV_TEXT || type == LR_DV_BLOB) {
    v->v.s.off = job->bytes.len;
    v->v.s.len = n;
    if (n && lr_buf_append(&job->bytes, p, n)) return -1;
  } else if (type == LR_DV_INT) {
    v->v.i = i;
  } else if (type == LR_DV_REAL) {
    v->v.d = d;
  }
  job->ncells++;
  return 0;
}

/* ---- the database thread ---- */

static uint64_t hash_sql(const char *p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
  return h;
}

/* prepared statements, cached per SQL text; the least recently used goes */
static sqlite3_stmt *stmt_get(lr_sqlite_t *db, const char *sql, size_t len, const char **tail, int *cached) {
  uint64_t h = hash_sql(sql, len);
  for (int i = 0; i < db->cache_n; i++) {
    stmt_slot_t *s = &db->cache[i];
    if (s->hash == h && s->len == len && memcmp(s->sql, sql, len) == 0) {
      s->used = ++db->clock;
      *tail = sql + len;
      *cached = 1;
      return s->stmt;
    }
  }
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v3(db->conn, sql, (int)len + 1, SQLITE_PREPARE_PERSISTENT, &st, tail) != SQLITE_OK) return NULL;
  *cached = 0;
  if (st == NULL || db->cache_cap == 0) return st;
  /* cache only a single-statement text: the tail check below rejects the rest */
  const char *t = *tail;
  while (*t == ' ' || *t == '\n' || *t == '\t' || *t == '\r' || *t == ';') t++;
  if (*t) return st;
  stmt_slot_t *slot;
  if (db->cache_n < db->cache_cap) {
    slot = &db->cache[db->cache_n++];
  } else {
    slot = &db->cache[0];
    for (int i = 1; i < db->cache_n; i++)
      if (db->cache[i].used < slot->used) slot = &db->cache[i];
    sqlite3_finalize(slot->stmt);
    free(slot->sql);
  }
  slot->sql = malloc(len + 1);
  if (slot->sql == NULL) {
    db->cache_n--; /* not cached after all: the caller finalizes */
    *slot = db->cache[db->cache_n];
    return st;
  }
  memcpy(slot->sql, sql, len + 1);
  slot->len = len;
  slot->hash = h;
  slot->stmt = st;
  slot->used = ++db->clock;
  *cached = 1;
  return st;
}

static void set_err(lr_sqlite_job_t *job, const char *msg) {
  job->rc = -1;
  snprintf(job->err, sizeof job->err, "%s", msg);
}

static void run_query(lr_sqlite_t *db, lr_sqlite_job_t *job) {
  const char *sql = job->bytes.base, *tail = NULL;
  int cached = 0;
  sqlite3_stmt *st = stmt_get(db, sql, job->sql_len, &tail, &cached);
  if (st == NULL) {
    set_err(job, tail && *tail == '\0' && sqlite3_errcode(db->conn) == SQLITE_OK ? "empty query" : sqlite3_errmsg(db->conn));
    return;
  }
  if (!cached) {
    const char *t = tail;
    while (*t == ' ' || *t == '\n' || *t == '\t' || *t == '\r' || *t == ';') t++;
    if (*t) {
      sqlite3_finalize(st);
      set_err(job, "query runs one statement (use exec for a script)");
      return;
    }
  }
  int n = sqlite3_bind_parameter_count(st);
  if (n != job->nparams) {
    snprintf(job->err, sizeof job->err, "query has %d parameter%s, %d given", n, n == 1 ? "" : "s", job->nparams);
    job->rc = -1;
    goto out;
  }
  for (int i = 0; i < n; i++) {
    const lr_dval_t *p = &job->params[i];
    const char *b = job->bytes.base + p->v.s.off;
    int rc = SQLITE_OK;
    switch (p->type) {
    case LR_DV_NULL: rc = sqlite3_bind_null(st, i + 1); break;
    case LR_DV_INT: rc = sqlite3_bind_int64(st, i + 1, p->v.i); break;
    case LR_DV_REAL: rc = sqlite3_bind_double(st, i + 1, p->v.d); break;
    case LR_DV_TEXT: rc = sqlite3_bind_text64(st, i + 1, b, p->v.s.len, SQLITE_TRANSIENT, SQLITE_UTF8); break;
    case LR_DV_BLOB: rc = sqlite3_bind_blob64(st, i + 1, b, p->v.s.len, SQLITE_TRANSIENT); break;
    }
    if (rc != SQLITE_OK) {
      set_err(job, sqlite3_errmsg(db->conn));
      goto out;
    }
  }
  int ncols = sqlite3_column_count(st);
  job->ncols = ncols;
  for (int c = 0; c < ncols; c++) {
    const char *name = sqlite3_column_name(st, c);
    if (name == NULL || add_cell(job, LR_DV_TEXT, name, strlen(name), 0, 0)) goto oom;
  }
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    for (int c = 0; c < ncols; c++) {
      int r = 0;
      switch (sqlite3_column_type(st, c)) {
      case SQLITE_INTEGER: r = add_cell(job, LR_DV_INT, NULL, 0, sqlite3_column_int64(st, c), 0); break;
      case SQLITE_FLOAT: r = add_cell(job, LR_DV_REAL, NULL, 0, 0, sqlite3_column_double(st, c)); break;
      case SQLITE_TEXT: {
        const unsigned char *t = sqlite3_column_text(st, c);
        r = add_cell(job, LR_DV_TEXT, t, (size_t)sqlite3_column_bytes(st, c), 0, 0);
        break;
      }
      case SQLITE_BLOB: {
        const void *t = sqlite3_column_blob(st, c);
        r = add_cell(job, LR_DV_BLOB, t, (size_t)sqlite3_column_bytes(st, c), 0, 0);
        break;
      }
      default: r = add_cell(job, LR_DV_NULL, NULL, 0, 0, 0); break;
      }
      if (r) goto oom;
    }
  }
  if (rc != SQLITE_DONE) {
    set_err(job, sqlite3_errmsg(db->conn));
    goto out;
  }
  job->wrote = !sqlite3_stmt_readonly(st);
  if (job->wrote) {
    job->changes = sqlite3_changes64(db->conn);
    job->last_id = sqlite3_last_insert_rowid(db->conn);
  }
  goto out;
oom:
  set_err(job, "out of memory");
out:
  if (cached) {
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
  } else {
    sqlite3_finalize(st);
  }
}

static void run_exec(lr_sqlite_t *db, lr_sqlite_job_t *job, const char *sql) {
  char *msg = NULL;
  if (sqlite3_exec(db->conn, sql, NULL, NULL, &msg) != SQLITE_OK) {
    set_err(job, msg ? msg : sqlite3_errmsg(db->conn));
    sqlite3_free(msg);
  }
}

static void run_job(lr_sqlite_t *db, lr_sqlite_job_t *job) {
  job->rc = 0;
  switch (job->op) {
  case LR_SQ_QUERY: run_query(db, job); break;
  case LR_SQ_EXEC: run_exec(db, job, job->bytes.base); break;
  /* IMMEDIATE: take the write lock now, so a transaction never fails halfway
   * because another process wrote in between */
  case LR_SQ_BEGIN: run_exec(db, job, "BEGIN IMMEDIATE"); break;
  case LR_SQ_COMMIT: run_exec(db, job, "COMMIT"); break;
  case LR_SQ_ROLLBACK:
    if (!sqlite3_get_autocommit(db->conn)) run_exec(db, job, "ROLLBACK");
    break;
  }
}

/* the first job allowed to run: any, or only the open transaction's */
static lr_sqlite_job_t *pick(lr_sqlite_t *db) {
  for (lr_link_t *l = db->queue.next; l != &db->queue; l = l->next) {
    lr_sqlite_job_t *j = LR_CONTAINER_OF(l, lr_sqlite_job_t, link);
    if (db->txn_owner == 0 || j->txn == db->txn_owner) return j;
  }
  return NULL;
}

static void port_post(lr_sqlite_port_t *p, lr_sqlite_job_t *job) {
  pthread_mutex_lock(&p->mu);
  job->next_done = NULL;
  if (p->tail)
    p->tail->next_done = job;
  else
    p->head = job;
  p->tail = job;
  pthread_mutex_unlock(&p->mu);
  uv_async_send(&p->async);
}

static void db_thread(void *arg) {
  lr_sqlite_t *db = arg;
  pthread_mutex_lock(&db->mu);
  for (;;) {
    lr_sqlite_job_t *job = pick(db);
    if (job == NULL) {
      if (db->stopping) break;
      pthread_cond_wait(&db->cv, &db->mu);
      continue;
    }
    lr_link_unlink(&job->link);
    job->state = JOB_RUNNING;
    db->running = job;
    pthread_mutex_unlock(&db->mu);
    run_job(db, job);
    pthread_mutex_lock(&db->mu);
    db->running = NULL;
    job->state = JOB_DONE;
    if (sqlite3_get_autocommit(db->conn))
      db->txn_owner = 0;
    else if (job->op == LR_SQ_BEGIN && job->rc == 0)
      db->txn_owner = job->txn;
    else if (db->txn_owner == 0)
      db->txn_owner = UINT64_MAX; /* a BEGIN inside exec(): nothing else may join it */
    if (job->port) {
      port_post(job->port, job); /* a cancelled one is freed there */
    } else if (job->cancelled) {
      lr_sqlite_job_free(job); /* detached */
    } else {
      pthread_cond_broadcast(&db->done_cv);
    }
  }
  pthread_mutex_unlock(&db->mu);
}

/* ---- the workers' side ---- */

static void on_port(uv_async_t *a) {
  lr_sqlite_port_t *p = a->data;
  pthread_mutex_lock(&p->mu);
  lr_sqlite_job_t *job = p->head;
  p->head = p->tail = NULL;
  pthread_mutex_unlock(&p->mu);
  while (job) {
    lr_sqlite_job_t *next = job->next_done;
    if (job->cancelled) {
      lr_sqlite_job_free(job);
    } else {
      job->state = JOB_BACK; /* the thread is done with it: only this loop touches it now */
      job->done(job);
    }
    job = next;
  }
}

static lr_sqlite_port_t *port_for(uv_loop_t *loop) {
  if (my_port) return my_port;
  lr_sqlite_port_t *p = calloc(1, sizeof *p);
  if (p == NULL) return NULL;
  pthread_mutex_init(&p->mu, NULL);
  uv_async_init(loop, &p->async, on_port);
  p->async.data = p;
  uv_unref((uv_handle_t *)&p->async); /* a pending query alone does not keep a stopping worker alive */
  pthread_mutex_lock(&all_mu);
  p->next_all = all_ports;
  all_ports = p;
  pthread_mutex_unlock(&all_mu);
  my_port = p;
  return p;
}

static int enqueue(lr_sqlite_t *db, lr_sqlite_job_t *job) {
  pthread_mutex_lock(&db->mu);
  if (db->stopping) {
    pthread_mutex_unlock(&db->mu);
    return -1;
  }
  job->db = db;
  job->state = JOB_QUEUED;
  lr_list_push(&db->queue, &job->link);
  pthread_cond_signal(&db->cv);
  pthread_mutex_unlock(&db->mu);
  return 0;
}

int lr_sqlite_submit(lr_sqlite_t *db, lr_sqlite_job_t *job, uv_loop_t *loop) {
  job->port = port_for(loop);
  if (job->port == NULL) return -1;
  return enqueue(db, job);
}

void lr_sqlite_submit_detached(lr_sqlite_t *db, lr_sqlite_job_t *job) {
  job->port = NULL;
  job->cancelled = 1;
  if (enqueue(db, job)) lr_sqlite_job_free(job);
}

int lr_sqlite_run_sync(lr_sqlite_t *db, lr_sqlite_job_t *job) {
  job->port = NULL;
  if (enqueue(db, job)) return -1;
  pthread_mutex_lock(&db->mu);
  while (job->state != JOB_DONE) pthread_cond_wait(&db->done_cv, &db->mu);
  job->state = JOB_BACK;
  pthread_mutex_unlock(&db->mu);
  return 0;
}

int lr_sqlite_job_ready(const lr_sqlite_job_t *job) { return job->state == JOB_BACK; }

void lr_sqlite_job_cancel(lr_sqlite_job_t *job) {
  lr_sqlite_t *db = job->db;
  if (job->state == JOB_BACK) { /* woken, then cancelled before it resumed */
    lr_sqlite_job_free(job);
    return;
  }
  pthread_mutex_lock(&db->mu);
  if (job->state == JOB_QUEUED) {
    lr_link_unlink(&job->link);
    pthread_mutex_unlock(&db->mu);
    lr_sqlite_job_free(job);
    return;
  }
  job->cancelled = 1; /* the port frees it when it comes back */
  /* only while it runs: a later statement of another job must not see the interrupt */
  if (job->state == JOB_RUNNING && db->running == job) sqlite3_interrupt(db->conn);
  pthread_mutex_unlock(&db->mu);
}

/* ---- opening ---- */

/* the same file under any spelling shares one entry: the real directory
 * plus the name (the file itself may not exist yet) */
static char *key_of(const char *path) {
  if (strcmp(path, ":memory:") == 0) return strdup(path);
  char dir[4096], real[4096];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  const char *base = path;
  if (slash) {
    *slash = '\0';
    base = path + (slash - dir) + 1;
    if (dir[0] == '\0') strcpy(dir, "/");
  } else {
    strcpy(dir, ".");
  }
  if (realpath(dir, real) == NULL) return NULL;
  size_t n = strlen(real) + strlen(base) + 2;
  char *k = malloc(n);
  if (k) snprintf(k, n, "%s/%s", strcmp(real, "/") == 0 ? "" : real, base);
  return k;
}

static int pragma(sqlite3 *c, const char *sql, char *err, size_t errlen) {
  char *msg = NULL;
  if (sqlite3_exec(c, sql, NULL, NULL, &msg) == SQLITE_OK) return 0;
  snprintf(err, errlen, "%s", msg ? msg : sqlite3_errmsg(c));
  sqlite3_free(msg);
  return -1;
}

lr_sqlite_t *lr_sqlite_get(const char *path, const lr_sqlite_opts_t *opts, char *err, size_t errlen) {
  char *key = key_of(path);
  if (key == NULL) {
    snprintf(err, errlen, "cannot open %s: no such directory", path);
    return NULL;
  }
  pthread_mutex_lock(&all_mu);
  for (lr_sqlite_t *d = all_dbs; d; d = d->next_all)
    if (strcmp(d->key, key) == 0) {
      pthread_mutex_unlock(&all_mu);
      free(key);
      return d;
    }
  lr_sqlite_t *db = NULL;
  sqlite3 *c = NULL;
  if (all_stopped) {
    snprintf(err, errlen, "stopping");
    goto fail;
  }
  int flags = (opts->readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) |
              SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_URI;
  /* the open itself is file I/O on the caller's thread: once per file per process */
  if (sqlite3_open_v2(key, &c, flags, NULL) != SQLITE_OK) {
    snprintf(err, errlen, "%s", c ? sqlite3_errmsg(c) : "out of memory");
    goto fail;
  }
  sqlite3_extended_result_codes(c, 0);
  sqlite3_busy_timeout(c, opts->busy_timeout_ms >= 0 ? opts->busy_timeout_ms : 5000);
  if (!opts->readonly && strcmp(key, ":memory:") != 0 &&
      pragma(c, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL", err, errlen))
    goto fail;
  if (pragma(c, "PRAGMA foreign_keys=ON", err, errlen)) goto fail;
  db = calloc(1, sizeof *db);
  if (db == NULL) goto oom;
  db->cache_cap = opts->cache_size >= 0 ? opts->cache_size : 64;
  if (db->cache_cap && (db->cache = calloc((size_t)db->cache_cap, sizeof *db->cache)) == NULL) goto oom;
  db->conn = c;
  db->key = key;
  pthread_mutex_init(&db->mu, NULL);
  pthread_cond_init(&db->cv, NULL);
  pthread_cond_init(&db->done_cv, NULL);
  lr_list_init(&db->queue);
  if (uv_thread_create(&db->thread, db_thread, db)) {
    snprintf(err, errlen, "cannot start a thread");
    goto fail;
  }
  db->next_all = all_dbs;
  all_dbs = db;
  pthread_mutex_unlock(&all_mu);
  return db;
oom:
  snprintf(err, errlen, "out of memory");
fail:
  pthread_mutex_unlock(&all_mu);
  if (db) free(db->cache);
  free(db);
  sqlite3_close(c);
  free(key);
  return NULL;
}

void lr_sqlite_stop_all(void) {
  pthread_mutex_lock(&all_mu);
  all_stopped = 1;
  lr_sqlite_t *list = all_dbs;
  pthread_mutex_unlock(&all_mu);
  for (lr_sqlite_t *db = list; db; db = db->next_all) {
    pthread_mutex_lock(&db->mu);
    db->stopping = 1;
    pthread_cond_signal(&db->cv);
    pthread_mutex_unlock(&db->mu);
  }
  for (lr_sqlite_t *db = list; db; db = db->next_all) uv_thread_join(&db->thread);
}

void lr_sqlite_free_all(void) {
  lr_sqlite_t *db = all_dbs;
  all_dbs = NULL;
  while (db) {
    lr_sqlite_t *next = db->next_all;
    /* jobs left behind an abandoned transaction: nobody waits any more */
    while (!lr_list_empty(&db->queue)) {
      lr_sqlite_job_t *j = LR_CONTAINER_OF(db->queue.next, lr_sqlite_job_t, link);
      lr_link_unlink(&j->link);
      lr_sqlite_job_free(j);
    }
    for (int i = 0; i < db->cache_n; i++) {
      sqlite3_finalize(db->cache[i].stmt);
      free(db->cache[i].sql);
    }
    free(db->cache);
    sqlite3_close(db->conn);
    pthread_mutex_destroy(&db->mu);
    pthread_cond_destroy(&db->cv);
    pthread_cond_destroy(&db->done_cv);
    free(db->key);
    free(db);
    db = next;
  }
  lr_sqlite_port_t *p = all_ports;
  all_ports = NULL;
  while (p) {
    lr_sqlite_port_t *next = p->next_all;
    while (p->head) {
      lr_sqlite_job_t *j = p->head;
      p->head = j->next_done;
      lr_sqlite_job_free(j);
    }
    pthread_mutex_destroy(&p->mu);
    free(p);
    p = next;
  }
}
