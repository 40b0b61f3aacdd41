/* App versions start on their worker before they serve: the on_start hooks
 * run in a task coroutine (they may wait: sleep, sockets, databases); when
 * they end well, the timers and spawns made at load time start and the
 * version takes the worker's requests. During a reload the worker serves the
 * previous version until then; a failing hook rejects the version (at
 * startup main exits 2, at reload the previous version keeps serving). */
#include <stdio.h>

#include "bindings.h"

static void hooks_ended(void *arg, int ok, const char *err) {
  lr_app_t *app = arg;
  lr_lworker_t *lw = app->lw;
  if (lw->starting != app) return;
  lw->start_state = ok ? 1 : -1;
  if (!ok) snprintf(lw->start_err, sizeof lw->start_err, "on_start: %s", err ? err : "cancelled");
}

/* lariat.spawn calls made while the version loaded (see lr_l_spawn) */
static void start_spawns(lr_app_t *app) {
  lua_State *L = app->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, app->spawns_ref);
  lua_Integer n = luaL_len(L, -1);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    lua_getfield(L, -1, "n");
    int argc = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    lr_co_t *co = lr_task_new(app);
    if (co) {
      for (int k = 1; k <= argc; k++) lua_rawgeti(L, -1 - (k - 1), k);
      lua_xmove(L, co->L, argc);
      co->nstart = argc - 1;
      lr_task_start(co);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  luaL_unref(L, LUA_REGISTRYINDEX, app->spawns_ref);
  app->spawns_ref = LUA_NOREF;
}

/* Start app on this worker (the worker thread): it becomes active (its timers
 * may arm) and its on_start hooks are queued; lr_lifecycle_tick finishes. */
void lr_app_start(lr_lworker_t *lw, lr_app_t *app) {
  lr_metrics_worker_start(lw);
  app->active = 1;
  lw->starting = app;
  lw->start_state = 1;
  lw->start_err[0] = '\0';
  if (app->start_ref != LUA_NOREF) {
    lr_co_t *co = lr_task_new(app);
    if (co == NULL) {
      lw->start_state = -1;
      snprintf(lw->start_err, sizeof lw->start_err, "on_start: out of memory");
    } else {
      lw->start_state = 0;
      lua_rawgeti(co->L, LUA_REGISTRYINDEX, app->start_ref);
      co->on_end = hooks_ended;
      co->on_end_arg = app;
      lr_task_start(co);
    }
  }
  lr_lifecycle_tick(lw);
}

/* from the loop's tick: a version whose hooks ended takes over (or is dropped) */
void lr_lifecycle_tick(lr_lworker_t *lw) {
  lr_app_t *app = lw->starting;
  if (app == NULL || lw->start_state == 0) return;
  lw->starting = NULL;
  int ok = lw->start_state > 0;
  if (ok) {
    start_spawns(app);
    if (!__atomic_load_n(&lw->w->stop_requested, __ATOMIC_SEQ_CST)) lr_timers_arm(app);
  }
  if (lw->started) {
    /* startup: main listens (or exits 2) once every worker has answered */
    void (*cb)(lr_lworker_t *, int, const char *) = lw->started;
    lw->started = NULL;
    cb(lw, ok, lw->start_err);
  } else if (ok) {
    lr_app_t *old = lw->app;
    app->generation = old->generation + 1;
    lw->app = app;
    lr_app_retire(old);
    lr_metrics_count(lw, LR_MET_RELOAD_OK);
    lr_log(LR_LOG_INFO, "worker %d: app reloaded (generation %u)", lw->w->id, app->generation);
  } else {
    lr_log(LR_LOG_ERROR, "worker %d: reload rejected, still serving the previous version: %s", lw->w->id,
           lw->start_err);
    lr_app_retire(app);
    lr_metrics_count(lw, LR_MET_RELOAD_REJECTED);
  }
  lr_lifecycle_take_pending(lw);
}

/* a reloaded version handed over by the main thread starts here; one at a time */
void lr_lifecycle_take_pending(lr_lworker_t *lw) {
  if (lw->starting || lw->started) return;
  lr_app_t *fresh = __atomic_exchange_n(&lw->pending, NULL, __ATOMIC_SEQ_CST);
  if (fresh == NULL) return;
  if (__atomic_load_n(&lw->w->stop_requested, __ATOMIC_SEQ_CST)) {
    lr_app_unref(fresh); /* never started: nothing of it runs */
    return;
  }
  lr_app_start(lw, fresh);
}

void lr_lifecycle_release(lr_lworker_t *lw) {
  lr_app_t *pending = __atomic_exchange_n(&lw->pending, NULL, __ATOMIC_SEQ_CST);
  if (pending) lr_app_unref(pending);
  if (lw->starting && lw->starting != lw->app) lr_app_retire(lw->starting);
  lw->starting = NULL;
  if (lw->app) lr_app_retire(lw->app);
  lw->app = NULL;
}

/* lariat.stopping() -> true once the server has been asked to stop (SIGTERM):
 * long jobs and streaming handlers end early */
int lr_l_stopping(lua_State *L) {
  lr_app_t *app;
  lua_getallocf(L, (void **)&app);
  lua_pushboolean(L, __atomic_load_n(&app->lw->w->stop_requested, __ATOMIC_SEQ_CST) != 0);
  return 1;
}
