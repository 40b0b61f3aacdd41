/* `lariat.core`: what the Lua library needs from C besides req: waiting,
 * time, logging and path resolution. */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>

#include "bindings.h"

static int sleep_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lr_co_t *co = lr_co_current(L);
  if (co) co->timed_out = 0; /* the timer firing is the point of a sleep */
  if (co && co->stopping) {
    luaL_pushfail(L);
    lua_pushliteral(L, "stopping"); /* the server stops: cut the sleep short */
    return 2;
  }
  return 0;
}

static int l_sleep(lua_State *L) {
  lua_Number secs = luaL_checknumber(L, 1);
  lr_co_t *co = lr_co_current(L);
  if (co == NULL || co->L != L || !lua_isyieldable(L))
    return luaL_error(L, "lariat.sleep: can only wait inside a request handler's coroutine");
  uint64_t ms = secs <= 0 ? 1 : (uint64_t)(secs * 1000 + 0.5);
  if (ms == 0) ms = 1;
  return lr_co_wait(L, co, ms, NULL, NULL, sleep_k);
}

static int l_now(lua_State *L) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  lua_pushnumber(L, (lua_Number)tv.tv_sec + (lua_Number)tv.tv_usec / 1e6);
  return 1;
}

static int l_log(lua_State *L) {
  static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
  int level = luaL_checkoption(L, 1, NULL, levels);
  size_t len;
  const char *msg = luaL_checklstring(L, 2, &len);
  lr_log_raw(level, msg, len);
  return 0;
}

static int l_realpath(lua_State *L) {
  const char *p = luaL_checkstring(L, 1);
  char buf[PATH_MAX];
  if (realpath(p, buf) == NULL) {
    luaL_pushfail(L);
    lua_pushstring(L, strerror(errno));
    return 2;
  }
  lua_pushstring(L, buf);
  return 1;
}

/* stat(path) → {type=, size=, mtime=} or nil, message */
static int l_stat(lua_State *L) {
  const char *p = luaL_checkstring(L, 1);
  struct stat st;
  if (stat(p, &st) != 0) {
    luaL_pushfail(L);
    lua_pushstring(L, strerror(errno));
    return 2;
  }
  lua_createtable(L, 0, 3);
  lua_pushstring(L, S_ISREG(st.st_mode) ? "file" : S_ISDIR(st.st_mode) ? "directory" : "other");
  lua_setfield(L, -2, "type");
  lua_pushinteger(L, (lua_Integer)st.st_size);
  lua_setfield(L, -2, "size");
  lua_pushinteger(L, (lua_Integer)st.st_mtime);
  lua_setfield(L, -2, "mtime");
  return 1;
}

/* core.path_plain(path) → path, or path without its trailing slash, when
 * lariat.path.canonical would return just that (no "%", "//" or "/."
 * anywhere); nil when it must do the real work. One C call where the Lua
 * checks were seven (~3,000 instructions on a routed request). */
static int l_path_plain(lua_State *L) {
  size_t n;
  const char *p = luaL_checklstring(L, 1, &n);
  size_t plain = lr_path_plain_len(p, n);
  if (plain == 0) return 0;
  if (plain == n)
    lua_settop(L, 1);
  else
    lua_pushlstring(L, p, plain);
  return 1;
}

static const luaL_Reg funcs[] = {
    {"path_plain", l_path_plain},
    {"stat", l_stat},
    {"sleep", l_sleep},
    {"now", l_now},
    {"stats", lr_l_stats},
    {"log", l_log},
    {"realpath", l_realpath},
    {"every", lr_l_every},
    {"after", lr_l_after},
    {"stopping", lr_l_stopping},
    {NULL, NULL},
};

int luaopen_lariat_core(lua_State *L) {
  luaL_newlib(L, funcs);
  lr_ws_open(L); /* ws userdata, lariat.spawn, lariat.channel */
  lr_shared_open(L); /* lariat.shared */
  lr_sqlite_lua_open(L); /* lariat.sqlite */
  lr_redis_lua_open(L);  /* lariat.redis */
  lr_pg_lua_open(L);     /* lariat.pg */
  lr_tcp_open(L);    /* lariat.tcp, lariat.dns */
  lr_http_open(L);   /* lariat.http */
  lr_timer_open(L);
  lr_metrics_open(L);
  lr_file_lua_open(L); /* req:sendfile, core.file_info */
  luaL_getmetatable(L, LR_REQ_MT);
  lua_getfield(L, -1, "__index");
  lua_getupvalue(L, -1, 1); /* the methods table behind __index */
  lua_setfield(L, -4, "req_methods");
  lua_pop(L, 2);
  lua_pushstring(L, LR_VERSION);
  lua_setfield(L, -2, "version");
  lr_app_t *app;
  lua_getallocf(L, (void **)&app);
  lua_pushinteger(L, app->lw->w->id);
  lua_setfield(L, -2, "worker_id");
  lua_pushstring(L, app->lw->cfg->app_path); /* lariat.static resolves against its directory */
  lua_setfield(L, -2, "app_file");
  return 1;
}
