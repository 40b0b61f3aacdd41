/* Routes looked up in C. lariat.app's compile lists the routes that need
 * nothing around them (no middleware, no host, no on_error): literal paths,
 * found here by the raw path and method bytes of the stream, and wildcard
 * prefixes (a route like "/api/" plus the star, that nothing else can claim:
 * router:wild_prefixes),
 * matched on the canonical path as app.lua's dispatch does, path_info left
 * in the path by reference. The scheduler resumes the handler directly, so
 * such a request builds no method or path string and runs no Lua dispatch
 * function. Every other request goes through dispatch as before. */
#include <stdlib.h>
#include <string.h>

#include "bindings.h"

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

/* the length of the canonical path when the raw one is already canonical but
 * for a trailing slash (no "%", "//" or "/." anywhere), else 0: then
 * lariat.path.canonical must do the real work (dispatch's business). Shared
 * with core.path_plain. */
size_t lr_path_plain_len(const char *p, size_t n) {
  if (n == 0 || p[0] != '/') return 0;
  for (size_t i = 0; i < n; i++) {
    if (p[i] == '%') return 0;
    if (p[i] == '/' && i + 1 < n && (p[i + 1] == '/' || p[i + 1] == '.')) return 0;
  }
  return n > 1 && p[n - 1] == '/' ? n - 1 : n;
}

static int method_is(const lr_direct_t *d, const char *m, size_t n) { return d->mlen == n && memcmp(d->method, m, n) == 0; }

/* the router's pick: the method's route, else GET's for HEAD, else the one
 * for any method. Prefixes never nest (a wildcard's node has no literal
 * child), so the entries of one prefix are the only ones that can match. */
const lr_direct_t *lr_direct_prefix(const lr_app_t *app, const lr_str_t *path, const lr_str_t *method,
                                    size_t *pi_off, size_t *pi_len) {
  size_t n = lr_path_plain_len(path->base, path->len);
  if (n == 0) return NULL;
  const char *p = path->base;
  const lr_direct_t *get = NULL, *any = NULL;
  int head = method->len == 4 && memcmp(method->base, "HEAD", 4) == 0;
  for (size_t i = 0; i < app->n_prefix; i++) {
    const lr_direct_t *d = &app->prefix[i];
    if (d->plen > n || memcmp(d->path, p, d->plen) != 0) continue;
    if (d->plen == n ? d->kind == 2 : p[d->plen] != '/') continue;
    if (method_is(d, method->base, method->len)) {
      get = d;
      break;
    }
    if (head && method_is(d, "GET", 3)) get = d;
    else if (method_is(d, "*", 1)) any = d;
  }
  const lr_direct_t *d = get ? get : any;
  if (d) {
    *pi_off = d->plen < n ? d->plen + 1 : n;
    *pi_len = n - *pi_off;
  }
  return d;
}

void lr_direct_free(lr_app_t *app) {
  for (size_t i = 0; i < app->n_prefix; i++) free((void *)app->prefix[i].path);
  free(app->prefix);
  app->prefix = NULL;
  app->n_prefix = 0;
  if (app->direct == NULL) return;
  for (size_t i = 0; i <= app->direct_mask; i++) free((void *)app->direct[i].path);
  free(app->direct);
  app->direct = NULL;
  app->direct_mask = 0;
}

/* from the list at idx ({ path, method, handler, finish, route[, kind] },
 * ...); the functions are anchored in the registry for the app's life. An
 * app without such routes, or memory short, just has no table (dispatch
 * serves all). */
void lr_direct_load(lr_app_t *app, lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  if (!lua_istable(L, idx)) return;
  size_t n = (size_t)luaL_len(L, idx), n_lit = 0, n_pre = 0;
  if (n == 0) return;
  for (size_t k = 1; k <= n; k++) {
    lua_rawgeti(L, idx, (lua_Integer)k);
    lua_rawgeti(L, -1, 6);
    if (lua_isnil(L, -1)) n_lit++;
    else n_pre++;
    lua_pop(L, 2);
  }
  size_t size = 8;
  while (size < n_lit * 2) size *= 2; /* at most half full: probes stay short */
  lr_direct_t *t = n_lit ? calloc(size, sizeof *t) : NULL, *pre = n_pre ? calloc(n_pre, sizeof *pre) : NULL;
  if ((n_lit && t == NULL) || (n_pre && pre == NULL)) {
    free(t);
    free(pre);
    return;
  }
  app->direct = t;
  app->direct_mask = t ? size - 1 : 0;
  app->prefix = pre;
  for (size_t k = 1; k <= n; k++) {
    lua_rawgeti(L, idx, (lua_Integer)k);
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    lua_rawgeti(L, -3, 6);
    int kind = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
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
    lr_direct_t *d;
    if (kind) {
      d = &pre[app->n_prefix++];
    } else {
      size_t i = hash_path(p, plen) & app->direct_mask;
      while (t[i].path) i = (i + 1) & app->direct_mask;
      d = &t[i];
    }
    *d = (lr_direct_t){mem, mem + plen + 1, plen, mlen, LUA_NOREF, LUA_NOREF, 0, kind, NULL};
    lua_pop(L, 2);
    lua_rawgeti(L, -1, 5);
    lua_Integer route = lua_tointeger(L, -1);
    d->route = route > 0 ? (unsigned)route : 0;
    lua_pop(L, 1);
    lua_rawgeti(L, -1, 3);
    d->px = lr_http_proxy_target(L, -1); /* kept alive by the handler's ref */
    d->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_rawgeti(L, -1, 4);
    d->finish_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);
  }
}
