/* Loading the app: a fresh lua_State, the lariat library on package.path,
 * the user's script run once, and the dispatch function it yields. */
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bindings.h"

#ifndef LR_SOURCE_LUA_DIR
#define LR_SOURCE_LUA_DIR ""
#endif
#ifndef LR_INSTALL_LUA_DIR
#define LR_INSTALL_LUA_DIR ""
#endif

/* lariat.zlib is optional at link time */
int luaopen_lariat_zlib(lua_State *L) __attribute__((weak));

static int exists(const char *dir) {
  char p[PATH_MAX + 64];
  snprintf(p, sizeof p, "%s/lariat/init.lua", dir);
  return access(p, R_OK) == 0;
}

/* Where lua/lariat lives: next to the binary in a checkout (build/lariat →
 * ../lua), under an installed prefix (bin/lariat → ../share/lariat/lua), or
 * where the build or install was configured. */
const char *lr_lua_dir(void) {
  static char dir[PATH_MAX];
  if (dir[0]) return dir;
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = '\0';
    char *d = dirname(exe);
    const char *rel[] = {"../lua", "../share/lariat/lua", "../../lua"};
    for (size_t i = 0; i < sizeof rel / sizeof *rel; i++) {
      char cand[PATH_MAX + 32];
      snprintf(cand, sizeof cand, "%s/%s", d, rel[i]);
      if (exists(cand) && realpath(cand, dir)) return dir;
    }
  }
  const char *fixed[] = {LR_INSTALL_LUA_DIR, LR_SOURCE_LUA_DIR};
  for (size_t i = 0; i < 2; i++)
    if (fixed[i][0] && exists(fixed[i])) {
      snprintf(dir, sizeof dir, "%s", fixed[i]);
      return dir;
    }
  return NULL;
}

/* allocator with a per-state cap, so a runaway handler hits a Lua memory
 * error instead of taking the worker down */
static void *lr_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  lr_app_t *app = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    app->mem -= old;
    free(ptr);
    return NULL;
  }
  if (app->limit_on && nsize > old && app->mem + (nsize - old) > app->mem_limit) return NULL;
  void *p = realloc(ptr, nsize);
  if (p) app->mem = app->mem - old + nsize;
  return p;
}

/* Lua warnings (errors in __gc among them) go to the log */
static void on_warning(void *ud, const char *msg, int tocont) {
  lr_app_t *app = ud;
  if (!tocont && app->warning.len == 0 && msg[0] == '@') return; /* control messages */
  lr_buf_append(&app->warning, msg, strlen(msg));
  if (tocont) return;
  lr_log(LR_LOG_WARN, "lua warning: %.*s", (int)app->warning.len, app->warning.base);
  app->warning.len = 0;
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* The whole Lua message, newlines kept (an error inside a required module
 * reads "error loading module 'store' from file './store.lua':\n\t./store.lua:3:
 * ..."): the caller prints it as one entry. The traceback the message handler
 * appended is left for the debug log. */
static void load_error(char *err, size_t errlen, const char *msg) {
  const char *tb = strstr(msg, "\nstack traceback:");
  size_t n = tb ? (size_t)(tb - msg) : strlen(msg);
  while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' ')) n--;
  if (n >= errlen) n = errlen - 1;
  memcpy(err, msg, n);
  err[n] = '\0';
  if (tb) LR_DEBUG("%s", msg);
}

static void set_path(lua_State *L, const char *lua_dir, const char *app_path) {
  char app_dir[PATH_MAX];
  snprintf(app_dir, sizeof app_dir, "%s", app_path);
  char *ad = dirname(app_dir);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s/?.lua;%s/?/init.lua;%s", lua_dir, lua_dir, ad, ad,
                  lua_tostring(L, -1));
  lua_setfield(L, -3, "path");
  lua_pop(L, 2);
}

lr_app_t *lr_app_load(lr_lworker_t *lw, char *err, size_t errlen) {
  const lr_config_t *cfg = lw->cfg;
  const char *lua_dir = lr_lua_dir();
  if (lua_dir == NULL) {
    snprintf(err, errlen, "cannot find the lariat Lua library (lua/lariat/init.lua)");
    return NULL;
  }
  lr_app_t *app = calloc(1, sizeof *app);
  if (app == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  app->lw = lw;
  app->refs = 1;
  app->mem_limit = cfg->lua_memory;
  lua_State *L = lua_newstate(lr_alloc, app);
  if (L == NULL) {
    free(app);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  app->L = L;
  app->start_ref = LUA_NOREF;
  lr_list_init(&app->timers);
  *(lr_co_t **)lua_getextraspace(L) = NULL; /* copied into every new thread: "not a request" */
  lua_setwarnf(L, on_warning, app);
  luaL_openlibs(L);
  set_path(L, lua_dir, cfg->app_path);
  lr_req_open(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_lariat_core);
  lua_setfield(L, -2, "lariat.core");
  if (luaopen_lariat_zlib) {
    lua_pushcfunction(L, luaopen_lariat_zlib);
    lua_setfield(L, -2, "lariat.zlib");
  }
  lua_pushcfunction(L, luaopen_lariat_compress);
  lua_setfield(L, -2, "lariat.compress");
  lua_pop(L, 1);
  lua_newtable(L);
  app->spawns_ref = luaL_ref(L, LUA_REGISTRYINDEX);

  lua_pushcfunction(L, traceback);
  int msgh = lua_gettop(L);
  int r = luaL_loadfile(L, cfg->app_path);
  if (r == LUA_OK) r = lua_pcall(L, 0, 1, msgh);
  if (r != LUA_OK) {
    load_error(err, errlen, lua_tostring(L, -1) ? lua_tostring(L, -1) : "error loading the app");
    goto fail;
  }
  /* dispatch, start = require("lariat").load_app(value, filename) */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "lariat");
  if (lua_pcall(L, 1, 1, msgh) != LUA_OK) {
    load_error(err, errlen, lua_tostring(L, -1) ? lua_tostring(L, -1) : "cannot load the lariat library");
    goto fail;
  }
  lua_getfield(L, -1, "load_app");
  lua_pushvalue(L, -3);
  lua_pushstring(L, cfg->app_path);
  if (lua_pcall(L, 2, 3, msgh) != LUA_OK) {
    load_error(err, errlen, lua_tostring(L, -1) ? lua_tostring(L, -1) : "load_app failed");
    goto fail;
  }
  lr_direct_load(app, L, -1);
  lua_pop(L, 1);
  if (lua_isfunction(L, -1))
    app->start_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* runs the on_start hooks */
  else
    lua_pop(L, 1);
  if (!lua_isfunction(L, -1)) {
    snprintf(err, errlen, "%s: load_app did not return a function", cfg->app_path);
    goto fail;
  }
  app->dispatch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_settop(L, 0);
  if (cfg->watch) lr_watch_note(L, cfg->app_path);
  lua_gc(L, LUA_GCGEN, 0, 0); /* most request garbage dies young */
  __atomic_add_fetch(&lw->n_apps, 1, __ATOMIC_RELAXED);
  return app;
fail:
  lua_close(L);
  lr_direct_free(app);
  lr_timers_free(app);
  lr_buf_free(&app->warning);
  free(app);
  return NULL;
}

static void free_cos(lr_app_t *app);

void lr_app_unref(lr_app_t *app) {
  if (--app->refs) return;
  free_cos(app);
  lr_timers_free(app);
  unsigned left = __atomic_sub_fetch(&app->lw->n_apps, 1, __ATOMIC_RELAXED);
  lua_close(app->L);
  app->L = NULL;
  lr_direct_free(app);
  if (left == 0) lr_http_cache_free();
  lr_buf_free(&app->warning);
  free(app);
}

/* its timers and tasks stop now (a reload never doubles a job); requests
 * it serves finish */
void lr_app_retire(lr_app_t *app) {
  app->retired = 1;
  if (app->active) {
    lr_timers_cancel(app);
    lr_tasks_cancel(app);
  }
  free_cos(app);
  lr_app_unref(app);
}

static void free_cos(lr_app_t *app) {
  while (app->free_cos) {
    lr_co_t *co = app->free_cos;
    app->free_cos = co->next_free;
    lr_co_free(co);
  }
  app->n_free_cos = 0;
}
