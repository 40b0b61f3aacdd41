/* The scheduler: runs each request in its own coroutine and resumes it when
 * what it waits for arrives. The only lua_resume in lariat is in resume().
 *
 * A coroutine is resumed from a loop callback, never from inside another
 * coroutine: a wake-up that happens while Lua runs (a handler closing a
 * connection another handler waits on) goes to the ready list and is resumed
 * at the next tick of the loop. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bindings.h"

#define MAX_FREE_COS 256

lr_co_t *lr_co_current(lua_State *L) { return *(lr_co_t **)lua_getextraspace(L); }

static void on_timer_close(uv_handle_t *h) {
  lr_co_t *co = h->data;
  if (--co->n_timers) return;
  lr_buf_free(&co->acc);
  free(co);
}

static lr_co_t *co_new(lr_app_t *app) {
  lr_co_t *co = app->free_cos;
  if (co) {
    app->free_cos = co->next_free;
    app->n_free_cos--;
    return co;
  }
  co = calloc(1, sizeof *co);
  if (co == NULL) return NULL;
  co->app = app;
  co->L = lua_newthread(app->L);
  co->ref = luaL_ref(app->L, LUA_REGISTRYINDEX);
  *(lr_co_t **)lua_getextraspace(co->L) = co;
  uv_timer_init(&app->lw->w->loop, &co->timer);
  co->timer.data = co;
  uv_timer_init(&app->lw->w->loop, &co->deadline);
  co->deadline.data = co;
  co->n_timers = 2;
  lr_list_init(&co->ready);
  lr_list_init(&co->wq);
  lr_list_init(&co->waiters);
  return co;
}

/* see bindings.h */
void lr_co_free(lr_co_t *co) {
  uv_close((uv_handle_t *)&co->timer, on_timer_close);
  uv_close((uv_handle_t *)&co->deadline, on_timer_close);
}

static void co_destroy(lr_co_t *co) {
  /* the thread itself is garbage once unreferenced */
  luaL_unref(co->app->L, LUA_REGISTRYINDEX, co->ref);
  lr_co_free(co);
}

/* The coroutine ended (or died, or was cancelled): give it back for reuse.
 * One stopped by the CPU budget is destroyed instead: the error raised from
 * its count hook leaves the thread with hooks disallowed (Lua 5.4's resume
 * does not restore allowhook), so a budget could never stop it again. */
static void co_release(lr_co_t *co) {
  lr_app_t *app = co->app;
  lr_link_unlink(&co->ready);
  lr_link_unlink(&co->wq);
  lr_link_unlink(&co->waiters);
  uv_timer_stop(&co->timer);
  if (co->deadline_set) { /* only handlers that waited armed it */
    uv_timer_stop(&co->deadline);
    co->deadline_set = 0;
  }
  if (co->is_handler) app->lw->n_live--;
  co->is_handler = 0;
  co->waiting = co->cancelled = co->closing = 0;
  co->stopping = co->told_stopping = co->timed_out = 0;
  co->cancel = NULL;
  co->cancel_arg = NULL;
  co->stream = NULL;
  co->ws = NULL;
  co->nstart = 0;
  co->acc.len = 0;
  lua_settop(co->L, 0);
  void (*on_end)(void *, int, const char *) = co->on_end;
  void *on_end_arg = NULL;
  int end_ok = 0;
  char *end_err = NULL;
  if (on_end) { /* tasks with an owner only: requests skip this */
    on_end_arg = co->on_end_arg;
    end_ok = co->end_ok;
    end_err = co->end_err;
    co->on_end = NULL;
    co->end_err = NULL;
  }
  int broken = co->over_budget;
  co->over_budget = 0;
  if (!broken && app->n_free_cos < MAX_FREE_COS && app->lw->app == app && !app->retired) {
    co->next_free = app->free_cos;
    app->free_cos = co;
    app->n_free_cos++;
  } else {
    co_destroy(co);
  }
  /* the owner (a timer, a starting version) is told with the app still held */
  if (on_end) {
    on_end(on_end_arg, end_ok, end_err);
    free(end_err);
  }
  lr_app_unref(app);
}

/* ---- finishing a request from what the coroutine returned or raised ---- */

/* The coroutine's stack holds the req at index 1, then what the handler
 * returned (or the error it raised). */

static void reply_status(lr_stream_t *s, int status) {
  static const lr_header_t ct = {{"content-type", 12}, {"text/plain; charset=utf-8", 25}};
  static const lr_header_t ct_json = {{"content-type", 12}, {"application/json", 16}};
  char body[96], reason[64];
  int json = lr_req_wants_json(s); /* then in the shape of lariat's Lua errors */
  snprintf(reason, sizeof reason, "%s", lr_status_reason(status));
  for (char *p = reason; json && *p; p++) *p = (char)(*p >= 'A' && *p <= 'Z' ? *p | 0x20 : *p);
  int n = json ? snprintf(body, sizeof body, "{\"error\":\"%s\",\"status\":%d}", reason, status)
               : snprintf(body, sizeof body, "%s\n", reason);
  lr_stream_send_head(s, status, json ? &ct_json : &ct, 1, body, (size_t)n, NULL, NULL, LR_FIN);
}

static void log_request_error(lr_co_t *co, const char *what, const char *msg) {
  lr_stream_t *s = co->stream;
  if (s)
    lr_log(LR_LOG_ERROR, "%.*s %.*s: %s%s", (int)s->method.len, s->method.base, (int)s->path.len, s->path.base,
           what, msg);
  else
    lr_log(LR_LOG_ERROR, "%s%s", what, msg);
}

/* reply with status, headers, body taken from the coroutine's stack; protected,
 * because a bad header table raises */
static int reply_protected(lr_co_t *co, int status_idx) {
  lua_State *L = co->L;
  lua_pushcfunction(L, lr_req_reply_results);
  lua_pushvalue(L, 1);
  for (int i = 0; i < 3; i++) lua_pushvalue(L, status_idx + i);
  if (lua_pcall(L, 4, 0, 0) == LUA_OK) return 0;
  log_request_error(co, "", lua_tostring(L, -1));
  lua_pop(L, 1);
  return -1;
}

/* The body of every request coroutine: dispatch(req, method, path), then the
 * reply from its results, inside the coroutine, so a bad result is an error
 * like any other (traceback, 500) and costs no extra protected call.
 * Returns req, or req, "websocket", handler, opts for an upgrade. */
static int request_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lr_req_t *r = lua_touserdata(L, 1);
  lr_stream_t *s = r->s;
  lua_settop(L, 4);
  if (s && !(s->flags & LR_SF_REPLIED)) {
    if (lua_type(L, 2) == LUA_TSTRING && lua_isfunction(L, 3) && strcmp(lua_tostring(L, 2), "websocket") == 0)
      return 4;
    if (lua_isnil(L, 2)) {
      lua_pushinteger(L, 204); /* nothing returned, nothing sent */
      lua_replace(L, 2);
    }
    lr_req_reply_results(L); /* on this stack: req, status, headers, body */
  }
  lua_settop(L, 1);
  return 1;
}

static int request_main(lua_State *L) {
  lr_co_t *co = lr_co_current(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, co->app->dispatch_ref);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 3);
  lua_remove(L, 2);
  lua_remove(L, 2); /* req, dispatch, req, method, path */
  lua_callk(L, 3, 3, 0, request_k);
  return request_k(L, LUA_OK, 0);
}

/* The body of a literal route's coroutine: handler(req), with no dispatch
 * around it (lr_direct_find matched the raw path and method). A string result
 * is answered here; anything else goes through the route's finish(a, b, c),
 * lariat.app's normalisation, then on as in request_k. */
static int direct_k(lua_State *L, int status, lua_KContext ctx) {
  /* req, a, b, c: the call asked for 3 results */
  if (lua_type(L, 2) == LUA_TSTRING &&
      !(lua_type(L, 3) == LUA_TFUNCTION && strcmp(lua_tostring(L, 2), "websocket") == 0)) {
    lr_req_reply_text(L, 2);
    return 0; /* what the coroutine returns is not looked at (co_release clears it) */
  }
  if (lua_type(L, 2) == LUA_TSTRING) return request_k(L, status, ctx); /* an upgrade */
  if (lua_isnil(L, 2) && lua_isnil(L, 3) && lua_isnil(L, 4)) /* nothing (a proxy answered): finish would say so too */
    return request_k(L, status, ctx);
  lua_rawgeti(L, LUA_REGISTRYINDEX, lr_co_current(L)->direct->finish_ref);
  lua_rotate(L, 2, 1); /* req, finish, a, b, c */
  lua_callk(L, 3, 3, 0, request_k);
  return request_k(L, LUA_OK, 0);
}

/* a lariat.proxy route C found: no req, no Lua call (bindings/http.c) */
static int request_proxy(lua_State *L) {
  return lr_http_proxy_run(L, lua_touserdata(L, 1), (int)lua_tointeger(L, 2), (int)lua_tointeger(L, 3));
}

static int request_direct(lua_State *L) {
  lua_pushvalue(L, 1); /* req, handler, req */
  lua_callk(L, 1, 3, 0, direct_k);
  return direct_k(L, LUA_OK, 0);
}

static void finish_ok(lr_co_t *co, int nres) {
  (void)nres;
  lr_stream_t *s = co->stream;
  if (s == NULL) return;
  if (!(s->flags & LR_SF_REPLIED))
    lr_stream_send_head(s, 204, NULL, 0, NULL, 0, NULL, NULL, LR_FIN);
  else if ((s->flags & LR_SF_STREAMING) && !(s->flags & LR_SF_FINISHED))
    lr_stream_finish(s);
}

/* The coroutine died: log why and answer. Its stack can't run code any more,
 * so req and the error object move aside while the thread is reset for reuse. */
static void finish_error(lr_co_t *co, int status) {
  lua_State *L = co->L, *M = co->app->L;
  lr_stream_t *s = co->stream;
  int err = lua_gettop(L);
  /* an error object with a numeric status is an HTTP answer (lariat.http_error) */
  int is_http = 0;
  if (lua_touserdata(L, err) == &lr_stop_handler) {
    LR_DEBUG("%s: handler stopped: its client is gone", s ? "request" : "coroutine");
    is_http = -1;
  } else if (lua_type(L, err) == LUA_TTABLE) {
    lua_pushliteral(L, "status");
    is_http = lua_rawget(L, err) == LUA_TNUMBER && lua_isinteger(L, -1);
    lua_pop(L, 1);
  }
  if (is_http == 0) {
    const char *msg = lua_tostring(L, err);
    if (msg == NULL) msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, err));
    luaL_traceback(M, L, msg, 0);
    log_request_error(co, "", lua_tostring(M, -1));
    lua_pop(M, 1);
  }
  /* a dead coroutine keeps its frames: index 1 is the failing function's, so
   * find req as the first argument of the outermost one, dispatch(req, ...) */
  lua_Debug ar;
  int level = 0;
  while (lua_getstack(L, level + 1, &ar)) level++;
  if (!lua_getstack(L, level, &ar) || lua_getlocal(L, &ar, 1) == NULL) lua_pushnil(L);
  lua_pushvalue(L, err);
  lua_xmove(L, M, 2);
  lua_resetthread(L);
  lua_settop(L, 0);   /* a reset keeps the error object at index 1 */
  lua_xmove(M, L, 2); /* L: req, error */
  if (s == NULL) return;
  if (is_http == 1 && !(s->flags & LR_SF_REPLIED) && luaL_testudata(L, 1, LR_REQ_MT)) {
    lua_getfield(L, 2, "status");
    lua_getfield(L, 2, "headers");
    lua_getfield(L, 2, "body");
    if (reply_protected(co, 3) == 0) return;
  }
  if (!(s->flags & LR_SF_REPLIED)) {
    /* the handler was stopped by a limit: the server is busy, not broken */
    if (co->over_budget || status == LUA_ERRMEM) {
      lr_metrics_count(co->app->lw, co->over_budget ? LR_MET_BUDGET : LR_MET_MEMORY);
      reply_status(s, 503);
    }
    else
      reply_status(s, 500);
  } else if (!(s->flags & LR_SF_FINISHED)) {
    lr_stream_abort(s); /* a truncated response, never a fake success */
  }
}

/* dispatch answered "websocket", handler, opts (and nothing replied yet) */
static int is_websocket(lr_co_t *co) {
  lua_State *L = co->L;
  lr_stream_t *s = co->stream;
  if (s == NULL || (s->flags & LR_SF_REPLIED) || lua_gettop(L) < 3 || lua_type(L, 2) != LUA_TSTRING ||
      !lua_isfunction(L, 3))
    return 0;
  return strcmp(lua_tostring(L, 2), "websocket") == 0;
}

/* ---- --handler-timeout: the response must start in time ---- */

/* A handler that has not started its response (reply, stream_reply,
 * WebSocket upgrade) by its deadline is cancelled like one whose client left
 * (to-be-closed variables run, it never resumes) and the client gets 504,
 * as from nginx when proxy_read_timeout expires. Streams already answering
 * are bounded by their client (hang-up, --send-timeout), not by this. */
static void on_deadline(uv_timer_t *t) {
  lr_co_t *co = t->data;
  lr_stream_t *s = co->stream;
  if (s == NULL || co->ws || co->closing || co->cancelled || (s->flags & LR_SF_REPLIED) || s->conn == NULL) {
    uv_timer_stop(t);
    return;
  }
  /* reading a request body that is still coming: a slow upload is not a hung
   * handler (nginx's proxy_read_timeout starts once the body is in), and the
   * body has bounds of its own (--body-timeout, --body-deadline). The timer
   * repeats: it looks again a period later. */
  if (s->wait == LR_WAIT_BODY && !(s->flags & LR_SF_BODY_DONE)) return;
  lr_log(LR_LOG_WARN, "%.*s %.*s: handler timed out (no response started in time): cancelled, 504",
         (int)s->method.len, s->method.base, (int)s->path.len, s->path.base);
  lr_metrics_count(co->app->lw, LR_MET_HANDLER_TIMEOUT);
  lr_co_abandon(co); /* first: a wake-up the reply causes finds it cancelled */
  reply_status(s, 504);
}

static void arm_deadline(lr_co_t *co, uint64_t ms) {
  co->deadline_set = 1;
  lr_stream_t *s = co->stream;
  if (ms == 0 || s == NULL || co->ws || (s->flags & LR_SF_REPLIED)) {
    uv_timer_stop(&co->deadline);
    return;
  }
  uv_timer_start(&co->deadline, on_deadline, ms, ms);
}

void lr_co_set_deadline(lr_co_t *co, uint64_t ms) {
  if (co->is_handler && !co->closing) arm_deadline(co, ms);
}

static void resume(lr_co_t *co, int nargs) {
  lr_lworker_t *lw = co->app->lw;
  int nres = 0;
again:
  co->waiting = 0;
  co->cancel = NULL;
  if (co->stream && !co->ws) co->stream->wait = LR_WAIT_NONE; /* a WebSocket's stream waits for the ws */
  lw->running = co;
  __atomic_store_n(&lw->resume_seq, lw->resume_seq + 1, __ATOMIC_RELAXED);
  __atomic_store_n(&lw->running_L, co->L, __ATOMIC_RELEASE);
  co->app->limit_on = co->app->mem_limit != 0;
  int status = lua_resume(co->L, NULL, nargs, &nres);
  co->app->limit_on = 0;
  __atomic_store_n(&lw->running_L, NULL, __ATOMIC_RELEASE);
  lw->running = NULL;
  if (status == LUA_YIELD) {
    lua_pop(co->L, nres);
    if (co->waiting || lr_link_linked(&co->ready)) {
      /* a handler's first wait: from here on it could wait forever. Loop
       * time has not moved since the request head started it (same loop
       * iteration), so the deadline counts from the head; a handler that
       * answers without waiting never arms it */
      if (!co->deadline_set && co->is_handler) arm_deadline(co, lw->cfg->handler_timeout_ms);
      return;
    }
    /* a bare coroutine.yield() in a handler: nothing would ever resume it */
    lua_pushliteral(co->L, "coroutine.yield() called in a handler outside a coroutine of its own");
    status = LUA_ERRRUN;
  }
  lr_stream_t *s = co->stream;
  if (co->on_end) {
    co->end_ok = status == LUA_OK;
    if (status != LUA_OK) {
      const char *m = lua_tostring(co->L, -1);
      co->end_err = strdup(m ? m : "(error object is not a string)");
    }
  }
  if (co->ws) {
    /* a WebSocket handler ended: close the connection (1011 if it failed) */
    lr_ws_handler_done(co, status == LUA_OK);
    if (status != LUA_OK) finish_error(co, status);
  } else if (status == LUA_OK && is_websocket(co)) {
    /* upgrade, then run handler(ws, req) in this same coroutine */
    if (lr_ws_handshake(co)) {
      nargs = 2;
      goto again;
    }
  } else if (status == LUA_OK) {
    finish_ok(co, nres);
  } else {
    finish_error(co, status);
  }
  if (s) {
    s->app_data = NULL;
    lr_stream_app_release(s);
  }
  co_release(co);
}

/* Abandon a suspended coroutine: undo its wait, run its to-be-closed
 * variables, release its stream; it never resumes. Called from the tick only
 * (never from inside the core's protocol code, which the __close handlers
 * might re-enter). */
static void co_cancel(lr_co_t *co) {
  lr_lworker_t *lw = co->app->lw;
  uv_timer_stop(&co->timer);
  lr_link_unlink(&co->ready);
  lr_link_unlink(&co->waiters);
  co->waiting = 0;
  lr_cancel_cb cancel = co->cancel;
  co->cancel = NULL;
  if (cancel) cancel(co, co->cancel_arg);
  lr_link_unlink(&co->wq);
  co->closing = 1;
  /* req outlives the stream (a spawned task may hold it): empty its box, so
   * its methods say "request is finished" instead of reading a freed stream.
   * It is the first argument of the outermost frame, request_main(req, ...) */
  lua_State *L = co->L, *M = co->app->L;
  lr_req_t *r = NULL;
  int held = 0;
  lua_Debug ar;
  int level = 0;
  while (lua_getstack(L, level + 1, &ar)) level++;
  if (co->stream && lua_getstack(L, level, &ar) && lua_getlocal(L, &ar, 1)) {
    r = luaL_testudata(L, -1, LR_REQ_MT);
    lua_xmove(L, M, 1); /* held while the thread is reset */
    held = 1;
  }
  /* __close handlers are Lua code: wake-ups they cause are queued, and the
   * CPU budget watches them like any resume */
  lw->running = co;
  __atomic_store_n(&lw->resume_seq, lw->resume_seq + 1, __ATOMIC_RELAXED);
  __atomic_store_n(&lw->running_L, co->L, __ATOMIC_RELEASE);
  int status = lua_resetthread(co->L);
  __atomic_store_n(&lw->running_L, NULL, __ATOMIC_RELEASE);
  lw->running = NULL;
  if (status != LUA_OK && lua_touserdata(co->L, -1) != &lr_stop_handler) {
    const char *msg = lua_tostring(co->L, -1);
    log_request_error(co, "error in a to-be-closed variable of a cancelled handler: ", msg ? msg : "?");
  }
  if (r && r->s == co->stream) r->s = NULL;
  if (held) lua_pop(M, 1);
  LR_DEBUG("%s cancelled at its wait", co->is_handler ? "handler" : "task");
  co->end_ok = 0;
  lr_stream_t *s = co->stream;
  if (co->ws) lr_ws_handler_done(co, 0);
  if (s) {
    s->app_data = NULL;
    lr_stream_app_release(s);
  }
  co_release(co);
}

/* wake a waiting coroutine: now if the loop runs, at the next tick if Lua runs */
void lr_co_wake(lr_co_t *co) {
  if (!co->waiting) return;
  lr_lworker_t *lw = co->app->lw;
  co->waiting = 0;
  uv_timer_stop(&co->timer);
  lr_link_unlink(&co->waiters);
  if (lw->running || co->cancelled) {
    if (!lr_link_linked(&co->ready)) lr_list_push(&lw->ready, &co->ready);
    return;
  }
  resume(co, 0);
}

/* The stream under a handler ended before its response did: cancel the
 * handler at its wait. Deferred to the tick: this runs inside the core's
 * protocol code (a close callback, an nghttp2 callback). A handler running
 * now is cancelled at its next wait. */
void lr_co_abandon(lr_co_t *co) {
  if (co->closing || co->cancelled) return;
  co->cancelled = 1;
  if (co->waiting) {
    co->waiting = 0;
    uv_timer_stop(&co->timer);
    lr_link_unlink(&co->waiters);
    if (!lr_link_linked(&co->ready)) lr_list_push(&co->app->lw->ready, &co->ready);
  }
}

/* run the wake-ups that came while Lua was running, and the cancellations */
static void hook_tick(lr_worker_t *w) {
  lr_lworker_t *lw = w->app_data;
  while (!lr_list_empty(&lw->ready)) {
    lr_co_t *co = LR_CONTAINER_OF(lw->ready.next, lr_co_t, ready);
    lr_link_unlink(&co->ready);
    if (co->cancelled) {
      co_cancel(co);
      continue;
    }
    int n = co->nstart; /* a spawned coroutine starts with its arguments */
    co->nstart = 0;
    resume(co, n);
  }
  lr_lifecycle_tick(lw);
}

static void on_co_timer(uv_timer_t *t) {
  lr_co_t *co = t->data;
  co->timed_out = 1;
  lr_co_wake(co);
}

/* see bindings.h */
int lr_co_wait(lua_State *L, lr_co_t *co, uint64_t timeout_ms, lr_cancel_cb cancel, void *arg, lua_KFunction k) {
  if (co == NULL || co->L != L || co->closing || !lua_isyieldable(L)) {
    if (cancel && co) cancel(co, arg);
    return luaL_error(L, "can't wait here: only in a handler's coroutine (or one from lariat.spawn)");
  }
  lr_lworker_t *lw = co->app->lw;
  co->timed_out = 0;
  co->stopping = 0;
  co->cancel = cancel;
  co->cancel_arg = arg;
  if (co->cancelled) {
    /* its stream ended while it ran: cancelled at the tick, k never runs */
    lr_list_push(&lw->ready, &co->ready);
  } else if (lw->stopping && co->told_stopping && !co->is_handler) {
    /* a task told once that the server stops and waiting again: it would
     * hold the exit (no request waits for it): cancelled at this wait */
    co->cancelled = 1;
    lr_list_push(&lw->ready, &co->ready);
  } else if (lw->stopping && !co->told_stopping) {
    /* the server stops: this wait returns at once, once */
    co->told_stopping = co->stopping = 1;
    lr_list_push(&lw->ready, &co->ready);
  } else {
    co->waiting = 1;
    lr_list_push(&lw->waiting, &co->waiters);
    if (timeout_ms) uv_timer_start(&co->timer, on_co_timer, timeout_ms, 0);
  }
  return lua_yieldk(L, 0, 0, k);
}

void lr_co_stop_all(lr_lworker_t *lw) {
  if (lw->stopping) return;
  lw->stopping = 1;
  lr_link_t tmp;
  lr_list_init(&tmp);
  if (!lr_list_empty(&lw->waiting)) {
    tmp.next = lw->waiting.next;
    tmp.prev = lw->waiting.prev;
    tmp.next->prev = &tmp;
    tmp.prev->next = &tmp;
    lr_list_init(&lw->waiting);
  }
  while (!lr_list_empty(&tmp)) {
    lr_co_t *co = LR_CONTAINER_OF(tmp.next, lr_co_t, waiters);
    lr_link_unlink(&co->waiters);
    if (!co->waiting) continue;
    lr_link_unlink(&co->wq);
    co->told_stopping = co->stopping = 1;
    /* resumed at the tick, after the core has told each connection it stops
     * (so a reply made now says connection: close and is not cut) */
    co->waiting = 0;
    uv_timer_stop(&co->timer);
    lr_list_push(&lw->ready, &co->ready);
  }
}

/* lariat.stats() -> { handlers = live request handlers, waiting = suspended
 * coroutines, output = response bytes buffered, ... } on this worker: cheap
 * counters for tests and health checks */
int lr_l_stats(lua_State *L) {
  lr_co_t *co = lr_co_current(L);
  if (co == NULL) return luaL_error(L, "lariat.stats: only from a handler");
  lr_lworker_t *lw = co->app->lw;
  unsigned waiting = 0;
  for (lr_link_t *l = lw->waiting.next; l != &lw->waiting; l = l->next) waiting++;
  lua_createtable(L, 0, 8);
  lua_pushinteger(L, (lua_Integer)lw->n_live);
  lua_setfield(L, -2, "handlers");
  lua_pushinteger(L, (lua_Integer)waiting);
  lua_setfield(L, -2, "waiting");
  lua_pushinteger(L, (lua_Integer)lw->w->n_conns);
  lua_setfield(L, -2, "connections");
  lua_pushinteger(L, (lua_Integer)__atomic_load_n(&lw->n_apps, __ATOMIC_RELAXED));
  lua_setfield(L, -2, "versions"); /* app versions alive: old ones go once their requests end */
  lua_pushinteger(L, (lua_Integer)lr_tasks_count(lw));
  lua_setfield(L, -2, "tasks");
  lua_pushinteger(L, (lua_Integer)lr_client_count(lw->w));
  lua_setfield(L, -2, "outbound"); /* outbound connections open, pooled and h2 sessions included */
  lua_pushinteger(L, (lua_Integer)lw->n_direct);
  lua_setfield(L, -2, "direct"); /* requests routed in C (literal and wildcard routes, direct.c) */
  /* response bytes buffered in user space on this worker's connections */
  size_t out = 0;
  for (lr_link_t *l = lw->w->conns.next; l != &lw->w->conns; l = l->next) {
    lr_conn_t *c = LR_CONTAINER_OF(l, lr_conn_t, all);
    out += lr_conn_queued(c) + (c->proto && c->proto->held ? c->proto->held(c) : 0);
  }
  lua_pushinteger(L, (lua_Integer)out);
  lua_setfield(L, -2, "output");
  return 1;
}

/* ---- wait queues ---- */

static void wq_cancel(lr_co_t *co, void *arg) {
  (void)arg;
  lr_link_unlink(&co->wq);
}

int lr_wq_wait(lua_State *L, lr_co_t *co, lr_link_t *q, uint64_t timeout_ms, lua_KFunction k) {
  if (co) {
    lr_link_unlink(&co->wq);
    lr_list_push(q, &co->wq);
  }
  return lr_co_wait(L, co, timeout_ms, wq_cancel, NULL, k);
}

/* The queue is emptied before anyone runs: a woken coroutine may wait on it
 * again, or free the object the queue lives in. */
void lr_wq_wake_all(lr_link_t *q) {
  if (q->next == NULL || lr_list_empty(q)) return;
  lr_link_t tmp;
  tmp.next = q->next;
  tmp.prev = q->prev;
  tmp.next->prev = &tmp;
  tmp.prev->next = &tmp;
  lr_list_init(q);
  while (!lr_list_empty(&tmp)) {
    lr_co_t *co = LR_CONTAINER_OF(tmp.next, lr_co_t, wq);
    lr_link_unlink(&co->wq);
    lr_co_wake(co);
  }
}

void lr_wq_wake_one(lr_link_t *q) {
  if (q->next == NULL || lr_list_empty(q)) return;
  lr_co_t *co = LR_CONTAINER_OF(q->next, lr_co_t, wq);
  lr_link_unlink(&co->wq);
  lr_co_wake(co);
}

lr_co_t *lr_task_new(lr_app_t *app) {
  lr_co_t *co = co_new(app);
  if (co) app->refs++;
  return co;
}

void lr_task_start(lr_co_t *co) { lr_list_push(&co->app->lw->ready, &co->ready); }

/* a task sits in lw->waiting while it waits, in lw->ready once woken or
 * before it starts; nothing runs while this is called (a loop callback) */
static lr_co_t *find_task(lr_link_t *list, lr_app_t *app, size_t off) {
  for (lr_link_t *l = list->next; l != list; l = l->next) {
    lr_co_t *co = (lr_co_t *)((char *)l - off);
    if (co->app == app && !co->is_handler && !co->closing) return co;
  }
  return NULL;
}

/* suspended or queued tasks (not handlers) on this worker, of any version */
unsigned lr_tasks_count(lr_lworker_t *lw) {
  unsigned n = 0;
  for (lr_link_t *l = lw->waiting.next; l != &lw->waiting; l = l->next)
    n += !LR_CONTAINER_OF(l, lr_co_t, waiters)->is_handler;
  for (lr_link_t *l = lw->ready.next; l != &lw->ready; l = l->next)
    n += !LR_CONTAINER_OF(l, lr_co_t, ready)->is_handler;
  return n;
}

void lr_tasks_cancel(lr_app_t *app) {
  lr_lworker_t *lw = app->lw;
  lr_co_t *co;
  app->refs++; /* a task's release must not free app under this loop */
  while ((co = find_task(&lw->waiting, app, offsetof(lr_co_t, waiters))) ||
         (co = find_task(&lw->ready, app, offsetof(lr_co_t, ready))))
    co_cancel(co);
  lr_app_unref(app);
}

/* lariat.spawn(fn, ...): run fn(...) in a coroutine of its own, from the next
 * tick; it belongs to the app version of the caller and is cancelled at its
 * wait when that version is retired. At load time the call is kept and the
 * task starts with the version (after its on_start hooks). */
int lr_l_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lr_app_t *app;
  lua_getallocf(L, (void **)&app);
  if (app->retired) {
    luaL_pushfail(L);
    lua_pushliteral(L, "app version retired");
    return 2;
  }
  int n = lua_gettop(L);
  if (!app->active) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, app->spawns_ref);
    lua_createtable(L, n, 1);
    for (int i = 1; i <= n; i++) {
      lua_pushvalue(L, i);
      lua_rawseti(L, -2, i);
    }
    lua_pushinteger(L, n);
    lua_setfield(L, -2, "n");
    lua_rawseti(L, -2, (lua_Integer)luaL_len(L, -2) + 1);
    lua_pushboolean(L, 1);
    return 1;
  }
  lr_co_t *co = lr_task_new(app);
  if (co == NULL) {
    luaL_pushfail(L);
    lua_pushliteral(L, "out of memory");
    return 2;
  }
  lua_xmove(L, co->L, n);
  co->nstart = n - 1;
  lr_task_start(co);
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- hooks called by the core ---- */

static void hook_start(lr_stream_t *s) {
  lr_lworker_t *lw = s->worker->app_data;
  lr_app_t *app = lw->app;
  lr_co_t *co = co_new(app);
  if (co == NULL) {
    lr_stream_send_head(s, 503, NULL, 0, NULL, 0, NULL, NULL, LR_FIN);
    return;
  }
  app->refs++;
  if (s->worker->metrics) s->t0 = uv_hrtime();
  co->stream = s;
  co->is_handler = 1;
  lw->n_live++;
  s->app_data = co;
  lua_State *L = co->L;
  size_t pi_off = 0, pi_len = 0;
  const lr_direct_t *d = app->direct ? lr_direct_find(app, &s->path, &s->method) : NULL;
  if (d == NULL && app->n_prefix) d = lr_direct_prefix(app, &s->path, &s->method, &pi_off, &pi_len);
  co->direct = d;
  if (d) {
    s->route = d->route; /* what lariat.app's tag would do (t0 is set above) */
    lw->n_direct++;
    if (d->px) {
      lua_pushcfunction(L, request_proxy);
      lua_pushlightuserdata(L, (void *)d->px);
      lua_pushinteger(L, (lua_Integer)pi_off);
      lua_pushinteger(L, d->kind ? (lua_Integer)pi_len : -1);
      resume(co, 3);
      return;
    }
    lua_pushcfunction(L, request_direct);
    lr_req_push(L, co, s);
    if (d->kind) { /* a wildcard's: path_info is the rest of the path */
      lr_req_t *r = lua_touserdata(L, -1);
      r->pi_off = (unsigned)pi_off;
      r->pi_len = (int)pi_len;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, d->handler_ref);
    resume(co, 2);
    return;
  }
  lua_pushcfunction(L, request_main);
  lr_req_push(L, co, s);
  lua_pushlstring(L, s->method.base, s->method.len);
  lua_pushlstring(L, s->path.base, s->path.len);
  resume(co, 3);
}

static void hook_wake(lr_stream_t *s) {
  lr_co_t *co = s->app_data;
  if (co && co->ws) {
    lr_ws_box_event(co->ws); /* an h2 stream carrying a WebSocket (RFC 8441) */
    return;
  }
  if (co) lr_co_wake(co);
}

static void hook_conn_gone(lr_stream_t *s) {
  lr_co_t *co = s->app_data;
  if (co && co->ws) {
    lr_ws_box_event(co->ws);
    return;
  }
  if (co == NULL) return;
  /* the response was complete: a handler working on after it is not cut */
  if ((s->flags & LR_SF_FINISHED) && !(s->flags & LR_SF_RESET)) {
    if (s->wait & (LR_WAIT_BODY | LR_WAIT_DRAIN)) lr_co_wake(co); /* LR_WAIT_BOTH too */
    return;
  }
  lr_co_abandon(co);
}


/* a reloaded app arrived from the main thread: new requests go to it; the old
 * one finishes what it runs (WebSockets included) and is closed after */
static void hook_wakeup(lr_worker_t *w) {
  lr_lworker_t *lw = w->app_data;
  /* the worker core starts stopping right after this hook: tell the waits */
  if (__atomic_load_n(&w->stop_requested, __ATOMIC_SEQ_CST)) {
    lr_co_stop_all(lw);
    lr_timers_cancel(lw->app); /* a drain starts no new jobs */
    if (lw->starting) lr_timers_cancel(lw->starting);
  }
  lr_lifecycle_take_pending(lw);
}

const lr_app_hooks_t lr_lua_hooks = {
    .start = hook_start,
    .wake = hook_wake,
    .conn_gone = hook_conn_gone,
    .tick = hook_tick,
    .wakeup = hook_wakeup,
};
