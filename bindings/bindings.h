/* bindings/: the Lua side of a worker. One lua_State per loaded version of the
 * app (a reload builds a new one; the old one lives until its last request
 * ends); one coroutine per request; the scheduler (scheduler.c) is the only
 * place that calls lua_resume. */
#ifndef LARIAT_BINDINGS_H
#define LARIAT_BINDINGS_H

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "../core/lariat.h"

typedef struct lr_co_s lr_co_t;
/* a literal or wildcard route C runs without dispatch (direct.c builds them
 * when the app loads; read-only after) */
typedef struct lr_direct_s {
  const char *path, *method; /* in this entry's own allocation */
  size_t plen, mlen;
  int handler_ref; /* handler(req), in the registry */
  int finish_ref;  /* finish(a, b, c): status, headers, body for a non-string result */
  unsigned route;  /* metrics route id to tag requests with (lariat.app tags only with metrics on), or 0 */
  int kind;        /* 0 literal; prefix: 1, or 2 when the prefix alone is another route's */
  const void *px;  /* the handler is lariat.proxy's without `before`: its target (http.c), or NULL */
} lr_direct_t;

/* undo a pending wait whose coroutine will never resume: see lr_co_wait */
typedef void (*lr_cancel_cb)(lr_co_t *co, void *arg);

/* one loaded version of the app */
typedef struct lr_app_s {
  lua_State *L;
  struct lr_lworker_s *lw;
  int dispatch_ref;   /* the function load_app returned */
  int req_mt_ref;     /* the req metatable */
  lr_direct_t *direct; /* literal routes by path (direct.c), or NULL */
  size_t direct_mask;  /* its size - 1 */
  lr_direct_t *prefix; /* wildcard routes by prefix (direct.c), n_prefix of them */
  size_t n_prefix;
  unsigned refs;      /* running coroutines + referenced strings + 1 while current */
  lr_co_t *free_cos;  /* finished coroutines kept for reuse */
  unsigned n_free_cos;
  size_t mem, mem_limit; /* allocator accounting (0 = no limit) */
  int limit_on;          /* the cap applies only while a handler runs */
  unsigned generation;
  lr_buf_t warning;      /* a Lua warning being assembled (lua_setwarnf) */
  /* lifecycle (lifecycle.c, timer.c) */
  int start_ref;         /* function running the app's on_start hooks, or LUA_NOREF */
  int spawns_ref;        /* lariat.spawn calls made at load time: started with the version */
  int active;            /* started on its worker: its Lua runs there, timers may arm */
  int retired;           /* a newer version took over (or it was rejected): no new tasks */
  lr_link_t timers;      /* lr_timer_t of this version */
} lr_app_t;

/* a request's coroutine; also used for lariat.sleep from any coroutine */
struct lr_co_s {
  lr_app_t *app;
  lua_State *L;        /* the thread, anchored by ref */
  int ref;
  lr_stream_t *stream; /* NULL once the stream is released */
  int waiting;         /* suspended in lr_co_wait, not yet woken */
  int timed_out;       /* in k: the wait's timeout fired */
  int stopping;        /* in k: the server is stopping (SIGTERM drain): return nil, "stopping" */
  int told_stopping;   /* stopping was reported once: later waits are normal */
  int cancelled;       /* the stream ended while running or woken: cancel at the next wait or tick */
  int closing;         /* being closed (lua_resetthread): no more waits */
  lr_cancel_cb cancel; /* the pending wait's undo, with its argument */
  void *cancel_arg;
  lr_link_t waiters;   /* in lw->waiting while suspended (SIGTERM tells them) */
  uv_timer_t timer;    /* wait timeouts */
  uv_timer_t deadline; /* --handler-timeout: armed at a handler's first wait while nothing is replied */
  int deadline_set;    /* the deadline was decided (armed, or req:set_timeout): later waits leave it */
  int n_timers;        /* open timer handles: the last close frees the coroutine */
  lr_buf_t acc;        /* req:body() accumulates here across yields */
  int over_budget;     /* stopped for running too long without yielding */
  lr_co_t *next_free;
  lr_link_t ready;     /* in lw->ready: resume at the next tick */
  lr_link_t wq;        /* in a wait queue (a WebSocket's readers, a subscription) */
  int is_handler;      /* runs a request (counted in lw->n_live), not a spawned task */
  const lr_direct_t *direct; /* the literal route it runs without dispatch, or NULL */
  int nstart;          /* lariat.spawn: arguments waiting for the first resume */
  void *ws;            /* the WebSocket this coroutine's handler serves (ws.c) */
  /* called once after the coroutine ended (returned: ok 1; raised or was
   * cancelled: ok 0, err = message or NULL) and was released */
  void (*on_end)(void *arg, int ok, const char *err);
  void *on_end_arg;
  int end_ok;
  char *end_err;
};


/* per worker */
typedef struct lr_lworker_s {
  lr_worker_t *w;
  lr_app_t *app;      /* the current version: new requests go here */
  lr_app_t *pending;  /* a reloaded version handed over by the main thread (atomic) */
  lr_co_t *running;   /* coroutine being resumed, NULL when the loop runs */
  lua_State *running_L; /* its thread; read by the budget signal handler */
  unsigned resume_seq;  /* +1 per resume; the watchdog tells resumes apart by it */
  unsigned budget_seq;  /* the resume the watchdog found over budget (budget.c) */
  clockid_t cpu_clock;  /* this worker thread's CPU-time clock */
  lr_link_t ready;    /* coroutines to resume once the running one yields */
  lr_link_t waiting;  /* coroutines suspended in lr_co_wait */
  unsigned n_live;    /* request handlers (not spawned tasks) alive on this worker */
  uint64_t n_direct;  /* requests whose route C found (direct.c), for lariat.stats */
  int stopping;       /* SIGTERM seen: waits are told once */
  const lr_config_t *cfg;
  /* lifecycle.c: a version whose on_start hooks run; it serves once they end */
  lr_app_t *starting;
  int start_state;    /* 0: hooks running; 1: ended well; -1: failed (seen at the tick) */
  char start_err[1024];
  void (*started)(struct lr_lworker_s *lw, int ok, const char *err); /* startup only */
  void *started_arg;
  unsigned n_apps;    /* app versions alive (atomic: reloads load in the main thread) */
} lr_lworker_t;

/* the req userdata: a box the core empties when the stream goes away */
typedef struct lr_req_s {
  lr_stream_t *s;
  lr_co_t *co;     /* owner coroutine */
  int told_closed; /* a call already returned nil, "closed" */
  /* req.path_info as a piece of s->path (a wildcard route matched in C,
   * direct.c), when pi_len >= 0; else Lua sets it in the user values */
  int pi_len;
  unsigned pi_off;
} lr_req_t;

/* raised (as a light userdata) to stop a handler that ignores that its client
 * is gone; the scheduler ends it quietly */
extern char lr_stop_handler;
int lr_req_closed(lua_State *L, lr_req_t *r);

#define LR_REQ_MT "lariat.req"

/* req.c: the response fields for a reply whose headers table is at index hi
 * (req at 1), set_header fields merged as req:reply does; they live in the
 * worker's scratch array and the Lua strings on the stack: use them at once */
size_t lr_req_head_fields(lua_State *L, lr_stream_t *s, int hi, lr_header_t **out);
/* file.c: req:sendfile and core.file_info */
void lr_file_lua_open(lua_State *L);

extern const lr_app_hooks_t lr_lua_hooks;

/* app.c */
lr_app_t *lr_app_load(lr_lworker_t *lw, char *err, size_t errlen);
void lr_app_unref(lr_app_t *app);
void lr_app_retire(lr_app_t *app); /* no new requests; closed when its last one ends */
/* budget.c: stopping handlers that run too long without yielding */
void lr_budget_install(void);
void lr_budget_worker_init(lr_lworker_t *lw);
void lr_budget_check(lr_lworker_t *lw, uv_thread_t thread);
const char *lr_lua_dir(void);

/* scheduler.c: the one cancellable wait every wait in lariat goes through.
 *
 * Suspend the running coroutine co until lr_co_wake(co). timeout_ms 0 = none;
 * on timeout co->timed_out = 1 and co is resumed normally (k runs). When the
 * server starts stopping, a waiting coroutine (or the next one to wait) is woken
 * once with co->stopping = 1: k should then return nil, "stopping" if its wait
 * is one a drain must not sit out (sleeps, streamed writes, channel recv).
 * If the wait is abandoned instead (its request's stream ended: client gone,
 * RST_STREAM, GOAWAY, connection error; or the coroutine is torn down), the
 * scheduler calls cancel(co, arg) (NULL = nothing to undo), which must drop
 * every reference to co (stop I/O, close a mid-exchange socket, unlink from
 * queues, free per-wait state) -- it is called whenever k will not run, even
 * if lr_co_wake was already called; then the coroutine is closed
 * (lua_resetthread: to-be-closed variables run) and released WITHOUT resuming.
 * Before it yields, set s->wait (LR_WAIT_BODY/DRAIN) if the core must wake
 * the stream's waiter; it is reset to LR_WAIT_NONE on resume.
 * cancel runs from the loop's tick, never inside a protocol callback.
 * Raises (after calling cancel) when co can't wait here (NULL, not
 * yieldable, or being closed). */
int lr_co_wait(lua_State *L, lr_co_t *co, uint64_t timeout_ms, lr_cancel_cb cancel, void *arg, lua_KFunction k);
void lr_co_wake(lr_co_t *co);         /* safe to call from any loop callback */
lr_co_t *lr_co_current(lua_State *L); /* NULL outside a lariat coroutine */
/* the stream under co ended: cancel it at its wait (now, or at its next wait
 * if it runs); for bindings whose handler's lifetime is tied to something
 * other than its stream (a WebSocket) */
void lr_co_abandon(lr_co_t *co);
/* --handler-timeout for this handler from now (req:set_timeout, a route's
 * timeout=): if its response hasn't started within ms it is cancelled and the
 * client gets 504; 0: no limit */
void lr_co_set_deadline(lr_co_t *co, uint64_t ms);
/* free a coroutine that is not running nor waiting (a pooled one): its timer
 * handles close, the struct goes with the last */
void lr_co_free(lr_co_t *co);
/* lariat.stats(): live handlers and waits on this worker */
int lr_l_stats(lua_State *L);
/* the server is stopping: tell every waiting coroutine once (co->stopping) */
void lr_co_stop_all(lr_lworker_t *lw);

/* wait queues: a coroutine waits on one until woken or timed out (the cancel
 * hook unlinks it) */
int lr_wq_wait(lua_State *L, lr_co_t *co, lr_link_t *q, uint64_t timeout_ms, lua_KFunction k);
void lr_wq_wake_all(lr_link_t *q);
void lr_wq_wake_one(lr_link_t *q);
int lr_l_spawn(lua_State *L);
/* a task (not a request handler) of app: push its function and arguments on
 * co->L, set co->nstart to the argument count, then lr_task_start */
lr_co_t *lr_task_new(lr_app_t *app);
void lr_task_start(lr_co_t *co);
/* cancel every task (spawned, timer tick, on_start) of app at its wait */
void lr_tasks_cancel(lr_app_t *app);
unsigned lr_tasks_count(lr_lworker_t *lw);

/* lifecycle.c: app versions start on their worker (on_start hooks, then
 * load-time timers and spawns) before they serve */
void lr_app_start(lr_lworker_t *lw, lr_app_t *app);
void lr_lifecycle_tick(lr_lworker_t *lw);
void lr_lifecycle_take_pending(lr_lworker_t *lw);
void lr_lifecycle_release(lr_lworker_t *lw); /* the worker ended: retire its versions */
int lr_l_stopping(lua_State *L);

/* subscription.c: the Lua side pg LISTEN and Redis SUBSCRIBE share. A driver
 * embeds lr_sub_t first in its own struct, fills drv and wait_ms, and calls
 * lr_sub_start; from its I/O callbacks it reports lr_sub_message (queued,
 * oldest dropped beyond LR_SUB_MAX_QUEUED), lr_sub_confirmed (one per
 * subscription counted in pending) and lr_sub_lost. */
#define LR_SUB_MAX_QUEUED 1000
typedef struct lr_sub_s lr_sub_t;
typedef struct lr_sub_driver_s {
  const char *name;                    /* "pg", "redis": error messages */
  int (*push)(lua_State *L, void *msg); /* recv's results for one message; returns their count */
  void (*free_msg)(void *msg);
  /* (re)subscribe, setting s->pending; 0, or -1 with err filled */
  int (*subscribe)(lua_State *L, lr_sub_t *s, char *err, size_t errlen);
  void (*close_conn)(lr_sub_t *s);      /* drop the connection now (may be called twice) */
  void (*destroy)(lr_sub_t *s);         /* free the driver's part and s itself */
} lr_sub_driver_t;
struct lr_sub_s {
  const lr_sub_driver_t *drv;
  void **q;                 /* received messages, a ring */
  unsigned head, n, dropped;
  int pending;              /* subscriptions the server has not confirmed yet */
  int lost;                 /* the connection went (err says why): the next recv subscribes again */
  char err[256];
  lr_co_t *waiter;
  uint64_t wait_ms;         /* for the confirmations */
  uint64_t recv_ms;         /* the running recv's */
};
/* pushes the sub object (metatable mt) and returns it once confirmed, or nil, err */
int lr_sub_start(lua_State *L, const char *mt, lr_sub_t *s);
void lr_sub_message(lr_sub_t *s, void *msg);
void lr_sub_confirmed(lr_sub_t *s);
void lr_sub_lost(lr_sub_t *s, const char *err);
void lr_sub_metatable(lua_State *L, const char *mt, const char *name); /* recv, close, __gc, __close */

/* metrics.c: Prometheus metrics (--metrics, lariat.metrics) */
enum { LR_MET_BUDGET, LR_MET_MEMORY, LR_MET_RELOAD_OK, LR_MET_RELOAD_REJECTED, LR_MET_HANDLER_TIMEOUT };
extern int lr_metrics_wanted;           /* --metrics or lariat.metrics.handler(): count requests */
extern unsigned lr_metrics_load_rejects; /* reloads rejected at load (main thread) */
void lr_metrics_add_worker(lr_lworker_t *lw);
void lr_metrics_worker_start(lr_lworker_t *lw);
void lr_metrics_worker_free(lr_worker_t *w);
void lr_metrics_count(lr_lworker_t *lw, int what);
void lr_metrics_render(lr_buf_t *b);
void lr_metrics_open(lua_State *L);
int lr_metrics_listen(uv_loop_t *loop, lr_listen_addr_t *a, char *err, size_t errlen);
void lr_metrics_close(void);

/* timer.c: lariat.every / lariat.after */
int lr_l_every(lua_State *L);
int lr_l_after(lua_State *L);
void lr_timers_arm(lr_app_t *app);    /* the version started: load-time timers run */
void lr_timers_cancel(lr_app_t *app); /* the server stops or the version is retired */
void lr_timers_free(lr_app_t *app);   /* last unref: timers never armed */
void lr_timer_open(lua_State *L);

/* ws.c: the WebSocket userdata; channel.c: lariat.channel */
int lr_ws_handshake(lr_co_t *co); /* 1: handler(ws, req) is on the stack, ready to run */
void lr_ws_handler_done(lr_co_t *co, int ok);
void lr_ws_box_event(void *box);  /* the stream under an h2 WebSocket has news */
void lr_ws_open(lua_State *L);    /* adds ws and channel functions to the core table */

/* direct.c: literal and wildcard routes run without the Lua dispatch function */
void lr_direct_load(lr_app_t *app, lua_State *L, int idx); /* load_app's third result */
void lr_direct_free(lr_app_t *app);
/* the literal route for this raw path and method (app->direct set), or NULL */
size_t lr_path_plain_len(const char *p, size_t n); /* canonical already (but a trailing slash)? else 0 */
const lr_direct_t *lr_direct_find(const lr_app_t *app, const lr_str_t *path, const lr_str_t *method);
/* the wildcard route for this raw path and method (app->n_prefix set), or
 * NULL (dispatch's); path_info's place in path */
const lr_direct_t *lr_direct_prefix(const lr_app_t *app, const lr_str_t *path, const lr_str_t *method,
                                    size_t *pi_off, size_t *pi_len);

/* req.c */
void lr_req_push(lua_State *L, lr_co_t *co, lr_stream_t *s);
void lr_req_open(lua_State *L);
int lr_reply_from_stack(lua_State *L, lr_stream_t *s, int status_idx, int fin);
int lr_req_reply_results(lua_State *L);
int lr_req_reply_text(lua_State *L, int bi); /* 200 text/plain from the string at bi; req at 1 */
int lr_req_wants_json(const lr_stream_t *s); /* accept asks for JSON: error answers in JSON */

/* watch.c: --watch, on the main thread */
void lr_watch_note(lua_State *L, const char *app_path); /* after a load: the files it read */
int lr_watch_start(uv_loop_t *loop, void (*reload)(const char *why));
void lr_watch_stop(void);

/* channel.c: cross-worker delivery of lariat.channel messages */
void lr_channel_attach(lr_worker_t *w, int n_workers);
void lr_channel_detach_all(void);

/* shared.c: lariat.shared dictionaries, shared by all workers */
void lr_shared_open(lua_State *L);
void lr_shared_free_all(void);
/* shared.c's value encoding (tag byte, then payload), used by cluster.c too */
void lr__shared_ser(lua_State *L, int idx, luaL_Buffer *b, int depth);
void lr__shared_deser(lua_State *L, const char **p, const char *end);
unsigned lr__channel_deliver(int self, const char *name, size_t nl, const char *msg, size_t ml);

/* cluster.c: --redis URL, lariat.shared and lariat.channel across instances */
int lr_cluster_init(const char *url, char *err, size_t errlen); /* main, before the apps load */
int lr_cluster_enabled(void);
int lr_cluster_dict_push(lua_State *L, const char *name, size_t len);
int lr_cluster_publish(lua_State *L, const char *name, size_t nl, const char *msg, size_t ml);
int lr_cluster_subscribed(lua_State *L); /* the new subscription on top */
void lr_cluster_free_all(void);          /* exit: after lr_redis_lua_free_all, before the loops close */

/* sqlite.c, redis.c, pg.c: lariat.sqlite, .redis, .pg (the drivers are in core/data/) */
void lr_sqlite_lua_open(lua_State *L);
void lr_redis_lua_open(lua_State *L);
void lr_redis_lua_free_all(void); /* exit: every worker's connections, before the loops close */
void lr_pg_lua_open(lua_State *L);
void lr_pg_lua_free_all(void);    /* same */
/* tcp.c: lariat.tcp (sockets) and lariat.dns; http.c: lariat.http client */
void lr_tcp_open(lua_State *L);
void lr_http_open(lua_State *L);
void lr_http_cache_free(void); /* the calling thread's cache of exchanges: at worker exit, after the last lua_close */
/* http.c: a route whose handler is lariat.proxy's (without `before`) runs
 * without a req or a Lua call: lr_http_proxy_target is the handler's target,
 * or NULL for any other value; lr_http_proxy_run(L, target, path_info's
 * place in the stream's path or -1 for none) is its coroutine's body */
const void *lr_http_proxy_target(lua_State *L, int idx);
int lr_http_proxy_run(lua_State *L, const void *target, int pi_off, int pi_len);

/* core_module.c */
int luaopen_lariat_core(lua_State *L);
int luaopen_lariat_zlib(lua_State *L);
/* compress.c: lariat.compress (gzip, br, zstd streams) */
int luaopen_lariat_compress(lua_State *L);

#endif
