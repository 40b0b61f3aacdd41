/* PostgreSQL over libpq's asynchronous API, on the worker's own loop: never a
 * blocking libpq call there. PQconnectStart/PQconnectPoll connect,
 * PQsendQueryParams sends, PQflush/PQconsumeInput/PQgetResult are driven by a
 * uv_poll_t on the connection's socket. PQcancel blocks (it opens a connection
 * of its own), so it runs on libuv's thread pool.
 *
 * A pool per worker per server: a query takes an idle connection, opens a new
 * one while under the size, or waits in line. A transaction keeps its
 * connection (LR_PG_KEEP) until it hands it back. An idle connection watches
 * its socket, so a server that goes away is noticed before the next query.
 *
 * Callbacks to the caller run last in each event and nothing of the
 * connection is touched after them: a callback may resume Lua, which may send
 * the next query on the same connection. */
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"

enum { C_CONNECTING, C_IDLE, C_BUSY, C_LISTENING, C_DEAD };

struct lr_pg_op_s {
  lr_pg_pool_t *pool;
  lr_pg_conn_t *conn; /* running on (or connecting for); NULL while in line */
  lr_link_t link;     /* pool->waiters */
  int flags;
  lr_pg_cb cb;        /* NULL: cancelled, its result is dropped */
  void *data;
  char *sql;
  int nparams;
  char **values;
  int *lens, *formats;
  PGresult *res;      /* the last result */
  char err[256];      /* the first error */
  char sqlstate[6];
};

typedef struct poller_s {
  uv_poll_t h;
  lr_pg_conn_t *c;
} poller_t;

struct lr_pg_conn_s {
  lr_pg_pool_t *pool;
  PGconn *pg;
  poller_t *poll;
  int fd;
  int state;
  lr_pg_op_t *op;
  int kept;   /* a transaction's */
  int listen; /* a LISTEN connection, outside the pool's count */
  lr_pg_notify_cb ncb;
  void *ndata;
  char *channel;
  int busy, free_pending;
  lr_link_t idle; /* pool->idle */
  lr_link_t all;  /* pool->conns */
};

struct lr_pg_pool_s {
  uv_loop_t *loop;
  char *conninfo;
  int size, n;
  lr_link_t idle, waiters, conns;
  lr_pg_pool_t *next_all;
};

static pthread_mutex_t all_mu = PTHREAD_MUTEX_INITIALIZER;
static lr_pg_pool_t *all_pools;

/* ---- errors ---- */

/* libpq's multi-line messages, made short: "connection refused", or the
 * first line without the "FATAL:  " decoration */
static void short_err(char *dst, size_t n, const char *msg) {
  if (msg == NULL || *msg == '\0') msg = "closed";
  if (strstr(msg, "Connection refused")) {
    snprintf(dst, n, "connection refused");
    return;
  }
  if (strstr(msg, "server closed the connection") || strstr(msg, "terminating connection") ||
      strstr(msg, "no connection to the server") || strstr(msg, "could not receive data"))
    if (!strstr(msg, "administrator command")) {
      snprintf(dst, n, "closed");
      return;
    }
  const char *p = msg;
  const char *tags[] = {"FATAL:  ", "ERROR:  "};
  for (int i = 0; i < 2; i++) {
    const char *t = strstr(p, tags[i]);
    if (t) p = t + strlen(tags[i]);
  }
  size_t len = strcspn(p, "\n");
  if (len >= n) len = n - 1;
  memcpy(dst, p, len);
  dst[len] = '\0';
}

/* ---- ops ---- */

static void op_free(lr_pg_op_t *op) {
  if (op == NULL) return;
  PQclear(op->res);
  for (int i = 0; i < op->nparams; i++) free(op->values[i]);
  free(op->values);
  free(op->lens);
  free(op->formats);
  free(op->sql);
  free(op);
}

/* ---- connections ---- */

static void on_poll(uv_poll_t *h, int status, int events);
static void conn_idle(lr_pg_conn_t *c);
static lr_pg_conn_t *conn_new(lr_pg_pool_t *pool, int listen, char *err, size_t errlen);

static void on_poller_close(uv_handle_t *h) { free(h); }

static void poll_stop(lr_pg_conn_t *c) {
  if (c->poll == NULL) return;
  c->poll->c = NULL;
  uv_close((uv_handle_t *)&c->poll->h, on_poller_close);
  c->poll = NULL;
}

/* watch the connection's socket (libpq may change it while connecting) */
static int poll_set(lr_pg_conn_t *c, int events) {
  int fd = PQsocket(c->pg);
  if (fd < 0) return -1;
  if (c->poll && fd != c->fd) poll_stop(c);
  if (c->poll == NULL) {
    poller_t *p = calloc(1, sizeof *p);
    if (p == NULL || uv_poll_init(c->pool->loop, &p->h, fd) != 0) {
      free(p);
      return -1;
    }
    uv_unref((uv_handle_t *)&p->h); /* an idle connection does not keep a stopping worker alive */
    p->h.data = p;
    p->c = c;
    c->poll = p;
    c->fd = fd;
  }
  return uv_poll_start(&c->poll->h, events, on_poll);
}

static void conn_destroy(lr_pg_conn_t *c) {
  free(c->channel);
  free(c);
}

/* the connection is over: out of every list, socket closed; freed once no
 * event of its own is being handled */
static void conn_close(lr_pg_conn_t *c) {
  if (c->state == C_DEAD) return;
  c->state = C_DEAD;
  lr_pg_pool_t *pool = c->pool;
  lr_link_unlink(&c->idle);
  lr_link_unlink(&c->all);
  poll_stop(c);
  PQfinish(c->pg); /* after the poll handle let go of the socket */
  c->pg = NULL;
  if (!c->listen) pool->n--;
  if (c->busy || c->kept) /* a transaction still holds it: freed when it lets go */
    c->free_pending = 1;
  else
    conn_destroy(c);
  /* someone still in line gets a connection of its own (or its own error) */
  if (!lr_list_empty(&pool->waiters) && pool->n < pool->size) {
    char err[256];
    lr_pg_conn_t *n = conn_new(pool, 0, err, sizeof err);
    if (n) {
      lr_pg_op_t *op = LR_CONTAINER_OF(pool->waiters.next, lr_pg_op_t, link);
      lr_link_unlink(&op->link);
      op->conn = n;
      n->op = op;
    } else {
      lr_pg_op_t *op = LR_CONTAINER_OF(pool->waiters.next, lr_pg_op_t, link);
      lr_link_unlink(&op->link);
      if (op->cb) op->cb(op->data, NULL, err, "", NULL);
      op_free(op);
    }
  }
}

/* the connection failed: its op (if any) fails with the reason; listeners hear it */
static void conn_fail(lr_pg_conn_t *c, const char *msg) {
  char err[256];
  short_err(err, sizeof err, msg ? msg : c->pg ? PQerrorMessage(c->pg) : NULL);
  lr_pg_op_t *op = c->op;
  c->op = NULL;
  lr_pg_notify_cb ncb = c->ncb;
  void *ndata = c->ndata;
  c->ncb = NULL;
  conn_close(c);
  if (op) {
    if (op->cb) op->cb(op->data, NULL, err, "", NULL);
    op_free(op);
  }
  if (ncb) ncb(ndata, NULL, NULL, err);
}

/* send op's query on c; -1: the connection is broken (nothing called back) */
static int send_op(lr_pg_conn_t *c, lr_pg_op_t *op) {
  op->conn = c;
  c->op = op;
  c->state = C_BUSY;
  int ok = (op->flags & LR_PG_SCRIPT)
               ? PQsendQuery(c->pg, op->sql)
               : PQsendQueryParams(c->pg, op->sql, op->nparams, NULL, (const char *const *)op->values, op->lens,
                                   op->formats, 0);
  if (!ok) return -1;
  int r = PQflush(c->pg);
  if (r < 0) return -1;
  return poll_set(c, r == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
}

/* from an event: a broken connection fails the op through its callback */
static void start_op(lr_pg_conn_t *c, lr_pg_op_t *op) {
  if (send_op(c, op)) conn_fail(c, NULL);
}

/* PQgetResult said NULL: the query is over */
static void op_done(lr_pg_conn_t *c) {
  lr_pg_op_t *op = c->op;
  c->op = NULL;
  c->state = C_IDLE;
  lr_pg_conn_t *kept = NULL;
  if (c->listen) {
    c->state = C_LISTENING;
  } else if ((op->flags & LR_PG_KEEP) && op->cb && op->err[0] == '\0') {
    c->kept = 1;
    kept = c;
  } else if ((op->flags & LR_PG_KEEP) && op->cb) {
    c->kept = 1; /* a failed statement inside a transaction: the transaction still owns it */
    kept = c;
  } else if (op->flags & LR_PG_KEEP) {
    conn_close(c); /* its transaction was abandoned: closing rolls it back */
  } else {
    lr_pg_conn_release(c);
  }
  PGresult *res = op->res;
  op->res = NULL;
  if (op->err[0]) {
    PQclear(res);
    res = NULL;
  }
  if (op->cb)
    op->cb(op->data, res, op->err[0] ? op->err : NULL, op->sqlstate, kept);
  else
    PQclear(res);
  op_free(op);
}

static void take_result(lr_pg_op_t *op, PGresult *res) {
  ExecStatusType st = PQresultStatus(res);
  if (st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE || st == PGRES_NONFATAL_ERROR) {
    if (op->err[0] == '\0') {
      const char *m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
      const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
      short_err(op->err, sizeof op->err, m ? m : PQresultErrorMessage(res));
      snprintf(op->sqlstate, sizeof op->sqlstate, "%s", code ? code : "");
    }
    PQclear(res);
    return;
  }
  PQclear(op->res);
  op->res = res;
}

static void on_connect_event(lr_pg_conn_t *c) {
  switch (PQconnectPoll(c->pg)) {
  case PGRES_POLLING_READING: poll_set(c, UV_READABLE); return;
  case PGRES_POLLING_WRITING: poll_set(c, UV_WRITABLE); return;
  case PGRES_POLLING_FAILED: conn_fail(c, NULL); return;
  default: break;
  }
  c->state = C_IDLE;
  poll_set(c, UV_READABLE);
  if (c->listen) {
    lr_pg_op_t *op = c->op; /* the LISTEN statement, made now that escaping knows the server */
    char *id = PQescapeIdentifier(c->pg, c->channel, strlen(c->channel));
    if (id == NULL || (op->sql = malloc(strlen(id) + 8)) == NULL) {
      PQfreemem(id);
      conn_fail(c, "out of memory");
      return;
    }
    sprintf(op->sql, "LISTEN %s", id);
    PQfreemem(id);
    c->op = NULL;
    start_op(c, op);
  } else if (c->op) {
    lr_pg_op_t *op = c->op;
    start_op(c, op);
  } else {
    conn_idle(c);
  }
}

static void on_poll(uv_poll_t *h, int status, int events) {
  poller_t *p = h->data;
  lr_pg_conn_t *c = p->c;
  if (c == NULL) return;
  c->busy++;
  if (c->state == C_CONNECTING) {
    on_connect_event(c);
    goto out;
  }
  if (status < 0) events = UV_READABLE; /* let libpq find the error */
  if (events & UV_WRITABLE) {
    int r = PQflush(c->pg);
    if (r < 0) {
      conn_fail(c, NULL);
      goto out;
    }
    if (r == 0) poll_set(c, UV_READABLE);
  }
  if (events & UV_READABLE) {
    if (!PQconsumeInput(c->pg)) {
      conn_fail(c, NULL);
      goto out;
    }
    PGnotify *n;
    while (c->state != C_DEAD && (n = PQnotifies(c->pg)) != NULL) {
      if (c->ncb) c->ncb(c->ndata, n->relname, n->extra, NULL);
      PQfreemem(n);
    }
    while (c->state == C_BUSY && !PQisBusy(c->pg)) {
      PGresult *res = PQgetResult(c->pg);
      if (res == NULL) {
        op_done(c);
        break;
      }
      ExecStatusType st = PQresultStatus(res);
      if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
        PQclear(res);
        conn_fail(c, "COPY is not supported");
        break;
      }
      take_result(c->op, res);
    }
    if (c->state != C_DEAD && PQstatus(c->pg) == CONNECTION_BAD) conn_fail(c, NULL);
  }
out:
  if (--c->busy == 0 && c->free_pending && !c->kept) conn_destroy(c);
}

/* libpq prints NOTICEs and WARNINGs to stderr by default: they go to the log */
static void on_notice(void *arg, const char *msg) {
  (void)arg;
  LR_DEBUG("postgresql: %.*s", (int)strcspn(msg, "\n"), msg);
}

static lr_pg_conn_t *conn_new(lr_pg_pool_t *pool, int listen, char *err, size_t errlen) {
  lr_pg_conn_t *c = calloc(1, sizeof *c);
  if (c == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  c->pool = pool;
  c->listen = listen;
  c->fd = -1;
  lr_list_init(&c->idle);
  c->pg = PQconnectStart(pool->conninfo);
  if (c->pg == NULL || PQstatus(c->pg) == CONNECTION_BAD) {
    short_err(err, errlen, c->pg ? PQerrorMessage(c->pg) : "out of memory");
    PQfinish(c->pg);
    free(c);
    return NULL;
  }
  PQsetnonblocking(c->pg, 1);
  PQsetNoticeProcessor(c->pg, on_notice, NULL);
  c->state = C_CONNECTING;
  if (poll_set(c, UV_WRITABLE)) {
    snprintf(err, errlen, "cannot watch the connection");
    PQfinish(c->pg);
    poll_stop(c);
    free(c);
    return NULL;
  }
  lr_list_push(&pool->conns, &c->all);
  if (!listen) pool->n++;
  return c;
}

/* a free connection: to the first in line, or to the idle list */
static void conn_idle(lr_pg_conn_t *c) {
  lr_pg_pool_t *pool = c->pool;
  c->state = C_IDLE;
  c->kept = 0;
  if (!lr_list_empty(&pool->waiters)) {
    lr_pg_op_t *op = LR_CONTAINER_OF(pool->waiters.next, lr_pg_op_t, link);
    lr_link_unlink(&op->link);
    start_op(c, op);
    return;
  }
  lr_list_push(&pool->idle, &c->idle);
}

void lr_pg_conn_release(lr_pg_conn_t *c) {
  c->kept = 0;
  if (c->state == C_DEAD) {
    if (c->free_pending && !c->busy) conn_destroy(c);
    return;
  }
  if (c->op) { /* still running (a cancelled query in an abandoned transaction): closed when it ends */
    c->op->flags |= LR_PG_KEEP;
    return;
  }
  if (PQstatus(c->pg) != CONNECTION_OK || PQtransactionStatus(c->pg) != PQTRANS_IDLE) {
    conn_close(c);
    return;
  }
  conn_idle(c);
}

/* ---- cancelling on the server ---- */

typedef struct cancel_req_s {
  uv_work_t work;
  PGcancel *cancel;
} cancel_req_t;

static void cancel_work(uv_work_t *w) {
  cancel_req_t *r = w->data;
  char buf[256];
  PQcancel(r->cancel, buf, sizeof buf); /* blocking: a connection and a message to the server */
}

static void cancel_after(uv_work_t *w, int status) {
  (void)status;
  cancel_req_t *r = w->data;
  PQfreeCancel(r->cancel);
  free(r);
}

void lr_pg_op_cancel(lr_pg_op_t *op) {
  lr_pg_conn_t *c = op->conn;
  if (c == NULL) { /* still in line */
    lr_link_unlink(&op->link);
    op_free(op);
    return;
  }
  if (c->state == C_CONNECTING) { /* the connection will serve someone else */
    c->op = NULL;
    op_free(op);
    return;
  }
  op->cb = NULL; /* the result is dropped when it comes; the connection then goes back */
  cancel_req_t *r = calloc(1, sizeof *r);
  if (r == NULL) return;
  r->cancel = PQgetCancel(c->pg);
  r->work.data = r;
  if (r->cancel == NULL || uv_queue_work(c->pool->loop, &r->work, cancel_work, cancel_after) != 0) {
    PQfreeCancel(r->cancel);
    free(r);
  }
}

/* ---- public ---- */

lr_pg_pool_t *lr_pg_pool_new(uv_loop_t *loop, const char *conninfo, int size) {
  lr_pg_pool_t *p = calloc(1, sizeof *p);
  if (p == NULL || (p->conninfo = strdup(conninfo)) == NULL) {
    free(p);
    return NULL;
  }
  p->loop = loop;
  p->size = size > 0 ? size : 10;
  lr_list_init(&p->idle);
  lr_list_init(&p->waiters);
  lr_list_init(&p->conns);
  pthread_mutex_lock(&all_mu);
  p->next_all = all_pools;
  all_pools = p;
  pthread_mutex_unlock(&all_mu);
  return p;
}

static lr_pg_op_t *op_new(lr_pg_pool_t *pool, const char *sql, const lr_pg_param_t *params, int nparams,
                          int flags, lr_pg_cb cb, void *data) {
  lr_pg_op_t *op = calloc(1, sizeof *op);
  if (op == NULL) return NULL;
  op->pool = pool;
  op->flags = flags;
  op->cb = cb;
  op->data = data;
  lr_list_init(&op->link);
  if ((op->sql = strdup(sql)) == NULL) goto oom;
  if (nparams) {
    op->values = calloc((size_t)nparams, sizeof *op->values);
    op->lens = calloc((size_t)nparams, sizeof *op->lens);
    op->formats = calloc((size_t)nparams, sizeof *op->formats);
    if (!op->values || !op->lens || !op->formats) goto oom;
    op->nparams = nparams;
    for (int i = 0; i < nparams; i++) {
      if (params[i].value == NULL) continue;
      op->values[i] = malloc((size_t)params[i].len + 1);
      if (op->values[i] == NULL) goto oom;
      memcpy(op->values[i], params[i].value, (size_t)params[i].len);
      op->values[i][params[i].len] = '\0';
      op->lens[i] = params[i].len;
      op->formats[i] = params[i].binary;
    }
  }
  return op;
oom:
  op_free(op);
  return NULL;
}

lr_pg_op_t *lr_pg_query(lr_pg_pool_t *pool, lr_pg_conn_t *pinned, const char *sql, const lr_pg_param_t *params,
                        int nparams, int flags, lr_pg_cb cb, void *data, char *err, size_t errlen) {
  if (pinned && (pinned->state != C_IDLE || pinned->op)) {
    snprintf(err, errlen, pinned->state == C_DEAD ? "closed" : "transaction is busy with another query");
    return NULL;
  }
  lr_pg_op_t *op = op_new(pool, sql, params, nparams, flags, cb, data);
  if (op == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  if (pinned) {
    if (send_op(pinned, op)) {
      short_err(err, errlen, PQerrorMessage(pinned->pg));
      pinned->op = NULL;
      conn_close(pinned);
      op_free(op);
      return NULL;
    }
    return op;
  }
  /* an idle connection whose server went away unnoticed fails here: try the next */
  while (!lr_list_empty(&pool->idle)) {
    lr_pg_conn_t *c = LR_CONTAINER_OF(pool->idle.next, lr_pg_conn_t, idle);
    lr_link_unlink(&c->idle);
    if (send_op(c, op) == 0) return op;
    c->op = NULL;
    op->conn = NULL;
    conn_close(c);
  }
  if (pool->n < pool->size) {
    lr_pg_conn_t *c = conn_new(pool, 0, err, errlen);
    if (c == NULL) {
      op_free(op);
      return NULL;
    }
    op->conn = c;
    c->op = op;
    return op;
  }
  lr_list_push(&pool->waiters, &op->link);
  return op;
}

/* the LISTEN statement's completion: listening from now on */
static void on_listening(void *data, PGresult *res, const char *err, const char *sqlstate, lr_pg_conn_t *kept) {
  (void)sqlstate;
  (void)kept;
  lr_pg_conn_t *c = data;
  PQclear(res);
  lr_pg_notify_cb ncb = c->ncb;
  void *ndata = c->ndata;
  if (err) { /* LISTEN refused: the connection has no purpose left */
    c->ncb = NULL;
    conn_close(c);
  }
  if (ncb) ncb(ndata, NULL, NULL, err);
}

lr_pg_conn_t *lr_pg_listen(lr_pg_pool_t *pool, const char *channel, lr_pg_notify_cb cb, void *data, char *err,
                           size_t errlen) {
  lr_pg_conn_t *c = conn_new(pool, 1, err, errlen);
  if (c == NULL) return NULL;
  lr_pg_op_t *op = calloc(1, sizeof *op);
  c->channel = strdup(channel);
  if (op == NULL || c->channel == NULL) {
    free(op);
    conn_close(c);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  op->pool = pool;
  op->cb = on_listening;
  op->data = c;
  lr_list_init(&op->link);
  op->conn = c;
  c->op = op;
  c->ncb = cb;
  c->ndata = data;
  return c;
}

void lr_pg_listen_close(lr_pg_conn_t *c) {
  c->ncb = NULL;
  if (c->op) c->op->cb = NULL;
  conn_close(c);
}

void lr_pg_free_all(void) {
  pthread_mutex_lock(&all_mu);
  lr_pg_pool_t *p = all_pools;
  all_pools = NULL;
  pthread_mutex_unlock(&all_mu);
  while (p) {
    lr_pg_pool_t *next = p->next_all;
    while (!lr_list_empty(&p->waiters)) {
      lr_pg_op_t *op = LR_CONTAINER_OF(p->waiters.next, lr_pg_op_t, link);
      lr_link_unlink(&op->link);
      op_free(op);
    }
    while (!lr_list_empty(&p->conns)) {
      lr_pg_conn_t *c = LR_CONTAINER_OF(p->conns.next, lr_pg_conn_t, all);
      lr_pg_op_t *op = c->op;
      c->op = NULL;
      c->ncb = NULL;
      op_free(op);
      c->kept = 0; /* exit: no transaction handle is left to let go of it */
      c->busy = 0;
      conn_close(c); /* and freed */
    }
    free(p->conninfo);
    free(p);
    p = next;
  }
}
