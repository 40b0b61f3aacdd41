/* lariat.every(s, fn) / lariat.after(s, fn): timers of one app version on one
 * worker. Each tick runs fn(timer) in a task coroutine of its own (it may
 * wait); the next tick is scheduled when it ends, so a tick that overruns
 * delays the next instead of overlapping it. A timer is anchored in the
 * registry while active (never collected under a running job) and is
 * cancelled with its version: a reload never doubles a job. */
#include <stdlib.h>

#include "bindings.h"

#define LR_TIMER_MT "lariat.timer"

typedef struct lr_timer_s {
  uv_timer_t h;
  lr_app_t *app;
  lr_link_t link;     /* in app->timers until finalized */
  uint64_t first_ms;  /* delay of the first tick */
  uint64_t every_ms;  /* 0: once (lariat.after) */
  uint64_t due;       /* loop time the next tick is due, set when a tick starts */
  int fn_ref, box_ref;
  int armed;          /* h is initialised (on the worker thread) */
  int running;        /* a tick's coroutine has not ended */
  int done;           /* cancelled or fired once: finalized when no tick runs */
} lr_timer_t;

typedef struct {
  lr_timer_t *t; /* NULL once the timer is finalized */
} timer_box_t;

static void on_closed(uv_handle_t *h) { free(h->data); }

/* drop the Lua references and the handle; the box says "inactive" from now on */
static void finalize(lr_timer_t *t) {
  lua_State *L = t->app->L;
  lr_link_unlink(&t->link);
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->box_ref);
  timer_box_t *box = lua_touserdata(L, -1);
  if (box) box->t = NULL;
  lua_pop(L, 1);
  luaL_unref(L, LUA_REGISTRYINDEX, t->box_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, t->fn_ref);
  if (t->armed) {
    uv_timer_stop(&t->h);
    uv_close((uv_handle_t *)&t->h, on_closed);
  } else {
    free(t);
  }
}

static void on_fire(uv_timer_t *h);

static void tick_ended(void *arg, int ok, const char *err) {
  (void)ok;
  (void)err; /* the scheduler logged it with its traceback */
  lr_timer_t *t = arg;
  t->running = 0;
  if (t->done || t->every_ms == 0) {
    finalize(t);
    return;
  }
  uint64_t now = uv_now(t->h.loop);
  uv_timer_start(&t->h, on_fire, t->due > now ? t->due - now : 0, 0);
}

static void on_fire(uv_timer_t *h) {
  lr_timer_t *t = h->data;
  t->due = uv_now(h->loop) + t->every_ms;
  lr_co_t *co = lr_task_new(t->app);
  if (co == NULL) { /* out of memory: try again at the next period */
    if (t->every_ms) uv_timer_start(&t->h, on_fire, t->every_ms, 0);
    return;
  }
  lua_State *L = t->app->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->fn_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->box_ref);
  lua_xmove(L, co->L, 2);
  co->nstart = 1;
  co->on_end = tick_ended;
  co->on_end_arg = t;
  t->running = 1;
  lr_task_start(co);
}

static void arm(lr_timer_t *t) {
  uv_timer_init(&t->app->lw->w->loop, &t->h);
  t->h.data = t;
  t->armed = 1;
  uv_timer_start(&t->h, on_fire, t->first_ms, 0);
  uv_unref((uv_handle_t *)&t->h); /* listeners keep the loop alive, not jobs */
}

static int new_timer(lua_State *L, int every) {
  lua_Number secs = luaL_checknumber(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_argcheck(L, secs >= 0 && secs < 1e9, 1, "seconds must be between 0 and 1e9");
  luaL_argcheck(L, !every || secs >= 0.001, 1, "an interval must be at least 0.001 s");
  lr_app_t *app;
  lua_getallocf(L, (void **)&app);
  const char *why = app->retired ? "app version retired"
                    : app->active && __atomic_load_n(&app->lw->w->stop_requested, __ATOMIC_SEQ_CST)
                        ? "stopping"
                        : NULL;
  if (why) {
    luaL_pushfail(L);
    lua_pushstring(L, why);
    return 2;
  }
  lr_timer_t *t = calloc(1, sizeof *t);
  if (t == NULL) return luaL_error(L, "out of memory");
  timer_box_t *box = lua_newuserdatauv(L, sizeof *box, 0);
  box->t = t;
  luaL_setmetatable(L, LR_TIMER_MT);
  t->app = app;
  t->first_ms = (uint64_t)(secs * 1000 + 0.5);
  t->every_ms = every ? (t->first_ms ? t->first_ms : 1) : 0;
  lua_pushvalue(L, 2);
  t->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, -1);
  t->box_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lr_list_push(&app->timers, &t->link);
  if (app->active) arm(t); /* else: the version starts it (lr_timers_arm) */
  return 1;
}

/* timer:cancel(): no tick after this one; a running tick finishes. Returns
 * true if the timer was active. */
static int l_cancel(lua_State *L) {
  timer_box_t *box = luaL_checkudata(L, 1, LR_TIMER_MT);
  lr_timer_t *t = box->t;
  if (t == NULL || t->done) {
    lua_pushboolean(L, 0);
    return 1;
  }
  t->done = 1;
  if (!t->running) finalize(t);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_active(lua_State *L) {
  timer_box_t *box = luaL_checkudata(L, 1, LR_TIMER_MT);
  lua_pushboolean(L, box->t && !box->t->done);
  return 1;
}

static int l_tostring(lua_State *L) {
  timer_box_t *box = luaL_checkudata(L, 1, LR_TIMER_MT);
  lua_pushfstring(L, "lariat.timer (%s)", box->t && !box->t->done ? "active" : "inactive");
  return 1;
}

int lr_l_every(lua_State *L) { return new_timer(L, 1); }
int lr_l_after(lua_State *L) { return new_timer(L, 0); }

void lr_timers_arm(lr_app_t *app) {
  for (lr_link_t *l = app->timers.next; l != &app->timers; l = l->next) {
    lr_timer_t *t = LR_CONTAINER_OF(l, lr_timer_t, link);
    if (!t->armed && !t->done) arm(t);
  }
}

void lr_timers_cancel(lr_app_t *app) {
  lr_link_t *l = app->timers.next;
  while (l != &app->timers) {
    lr_timer_t *t = LR_CONTAINER_OF(l, lr_timer_t, link);
    l = l->next;
    t->done = 1;
    if (!t->running) finalize(t); /* a running tick is cancelled with the version's tasks */
  }
}

void lr_timers_free(lr_app_t *app) {
  while (!lr_list_empty(&app->timers)) {
    lr_timer_t *t = LR_CONTAINER_OF(app->timers.next, lr_timer_t, link);
    lr_link_unlink(&t->link);
    if (t->armed)
      uv_close((uv_handle_t *)&t->h, on_closed);
    else
      free(t);
  }
}

void lr_timer_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"cancel", l_cancel}, {"active", l_active}, {NULL, NULL}};
  if (luaL_newmetatable(L, LR_TIMER_MT)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
}
