/* Literal routes looked up in C. lariat.app's compile lists the routes that
 * need nothing around them (a literal path, no middleware, no host, no
 * on_error); the scheduler finds one here by the raw path and method bytes of
 * the stream and resumes its handler directly, so a hello-world request
 * builds no method or path string and runs no Lua dispatch function. Every
 * other request goes through dispatch as before. */
#include <stdlib.h>
#include <string.h>

#include "bindings.h"

struct lr_direct_s {
  const char *path, *method; /* in this entry's own allocation */
  size_t plen, mlen;
  int handler_ref; /* handler(req) */
  int finish_ref;  /* finish(a, b, c): status, headers, body for a non-string result */
  unsigned route;  /* metrics route id (lariat.app tags only with metrics on), or 0 */
};

/* FNV-1a over the path; the method is compared, not hashed (a path has few) */
static size_t hash_path(const char *p, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 16777619u;
  return h;
}

const lr_direct_t *lr_direct_find(const lr_app_t *app, const lr_str_t *path, const lr_str_t *method) {
  size_t mask = app->direct_mask;
  for (size_t i = hash_path(path->base, path->len) & mask;; i = (i + 1) & mask) {
    const lr_direct_t *d = &app->direct[i];
    if (d->path == NULL) return NULL;
    if (d->plen == path->len && d->mlen == method->len && memcmp(d->path, path->base, path->len) == 0 &&
        memcmp(d->method, method->base, method->len) == 0)
      return d;
  }
}

int lr_direct_handler(const lr_direct_t *d) { return d->handler_ref; }
int lr_direct_finish(const lr_direct_t *d) { return d->finish_ref; }
unsigned lr_direct_route(const lr_direct_t *d) { return d->route; }

void lr_direct_free(lr_app_t *app) {
  if (app->direct == NULL) return;
  for (size_t i = 0; i <= app->direct_mask; i++) free((void *)app->direct[i].path);
  free(app->direct);
  app->direct = NULL;
  app->direct_mask = 0;
}

/* from the list at idx ({ path, method, handler, finish, route }, ...); the
 * functions are anchored in the registry for the app's life. An app without
 * literal routes, or memory short, just has no table (dispatch serves all). */
void lr_direct_load(lr_app_t *app, lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  if (!lua_istable(L, idx)) return;
  size_t n = (size_t)luaL_len(L, idx);
  if (n == 0) return;
  size_t size = 8;
  while (size < n * 2) size *= 2; /* at most half full: probes stay short */
  lr_direct_t *t = calloc(size, sizeof *t);
  if (t == NULL) return;
  app->direct = t;
  app->direct_mask = size - 1;
  for (size_t k = 1; k <= n; k++) {
    lua_rawgeti(L, idx, (lua_Integer)k);
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    size_t plen, mlen;
    const char *p = lua_tolstring(L, -2, &plen), *m = lua_tolstring(L, -1, &mlen);
    char *mem = p && m ? malloc(plen + mlen + 2) : NULL;
    if (mem == NULL) {
      lua_pop(L, 3);
      lr_direct_free(app);
      return;
    }
    memcpy(mem, p, plen + 1);
    memcpy(mem + plen + 1, m, mlen + 1);
    size_t i = hash_path(p, plen) & app->direct_mask;
    while (t[i].path) i = (i + 1) & app->direct_mask;
    t[i] = (lr_direct_t){mem, mem + plen + 1, plen, mlen, LUA_NOREF, LUA_NOREF, 0};
    lua_pop(L, 2);
    lua_rawgeti(L, -1, 5);
    lua_Integer route = lua_tointeger(L, -1);
    t[i].route = route > 0 ? (unsigned)route : 0;
    lua_pop(L, 1);
    lua_rawgeti(L, -1, 3);
    t[i].handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_rawgeti(L, -1, 4);
    t[i].finish_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);
  }
}
