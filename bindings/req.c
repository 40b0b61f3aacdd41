/* The req userdata: a box around a stream pointer (Lua's liolib "tofile"
 * style). Fields are read from the stream on demand, so a handler pays only
 * for what it looks at; `headers` is built on first use and cached. Fields a
 * handler or middleware assigns live in the box's user value table. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bindings.h"

#define BIG_BODY 16384 /* bodies above this are referenced, not copied */

char lr_stop_handler;

static lr_app_t *app_of(lua_State *L) {
  void *ud;
  lua_getallocf(L, &ud);
  return ud;
}

static lr_req_t *check_req(lua_State *L, int idx) { return luaL_checkudata(L, idx, LR_REQ_MT); }

/* nil, "closed" the first time; a handler that carries on regardless (a write
 * loop that never checks) is stopped the next time, so it can't spin */
int lr_req_closed(lua_State *L, lr_req_t *r) {
  if (r->told_closed++) {
    lua_pushlightuserdata(L, &lr_stop_handler);
    return lua_error(L);
  }
  luaL_pushfail(L);
  lua_pushliteral(L, "closed");
  return 2;
}

static lr_stream_t *check_stream(lua_State *L, int idx) {
  lr_req_t *r = check_req(L, idx);
  if (r->s == NULL) luaL_error(L, "request is finished");
  return r->s;
}

void lr_req_push(lua_State *L, lr_co_t *co, lr_stream_t *s) {
  lr_req_t *r = lua_newuserdatauv(L, sizeof *r, 1);
  r->s = s;
  r->co = co;
  r->told_closed = 0;
  r->pi_len = -1;
  /* by reference, not by name: no string lookup per request */
  lua_rawgeti(L, LUA_REGISTRYINDEX, co->app->req_mt_ref);
  lua_setmetatable(L, -2);
}

/* the user value table, created on first need */
static int uservalues(lua_State *L, int idx, int create) {
  if (lua_getiuservalue(L, idx, 1) == LUA_TTABLE) return 1;
  lua_pop(L, 1);
  if (!create) return 0;
  lua_newtable(L);
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, idx, 1);
  return 1;
}

static void push_str(lua_State *L, const lr_str_t *s) { lua_pushlstring(L, s->base, s->len); }

static void push_headers(lua_State *L, lr_stream_t *s) {
  lua_createtable(L, 0, (int)s->n_headers);
  for (unsigned i = 0; i < s->n_headers; i++) {
    const lr_header_t *h = &s->headers[i];
    push_str(L, &h->name);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, -3) == LUA_TSTRING) {
      /* repeated field: one value, comma-joined (cookies with "; ") as RFC 9110 §5.3 allows */
      int cookie = h->name.len == 6 && memcmp(h->name.base, "cookie", 6) == 0;
      lua_pushstring(L, cookie ? "; " : ", ");
      push_str(L, &h->value);
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
      push_str(L, &h->value);
    }
    lua_rawset(L, -3);
  }
}

/* host and port from the authority ("example.com:8080", "[::1]:80") */
static void split_authority(const lr_str_t *a, lr_str_t *host, int *port) {
  *host = *a;
  *port = 0;
  const char *end = a->base + a->len;
  const char *colon = NULL;
  for (const char *p = end; p > a->base; p--)
    if (p[-1] == ':') {
      colon = p - 1;
      break;
    } else if (p[-1] == ']') {
      break;
    }
  if (colon) {
    int n = 0;
    for (const char *p = colon + 1; p < end && *p >= '0' && *p <= '9'; p++) n = n * 10 + (*p - '0');
    *port = n;
    host->len = (size_t)(colon - a->base);
  }
}

static int req_index(lua_State *L) {
  lr_req_t *r = check_req(L, 1);
  /* 1: fields assigned by Lua (bindings, ctx, path_info, ...) */
  if (uservalues(L, 1, 0)) {
    lua_pushvalue(L, 2);
    if (lua_rawget(L, -2) != LUA_TNIL) return 1;
    lua_pop(L, 2);
  }
  /* 2: methods */
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  lua_pop(L, 1);
  /* 3: request fields */
  size_t len;
  const char *k = lua_tolstring(L, 2, &len);
  if (k == NULL) return 0;
  lr_stream_t *s = r->s;
  if (s == NULL) return luaL_error(L, "request is finished (field '%s')", k);
  switch (len) {
    case 2:
      if (memcmp(k, "qs", 2) == 0) return push_str(L, &s->query), 1;
      break;
    case 3:
      if (memcmp(k, "ctx", 3) == 0) goto cached_table;
      break;
    case 4:
      if (memcmp(k, "path", 4) == 0) return push_str(L, &s->path), 1;
      if (memcmp(k, "host", 4) == 0 || memcmp(k, "port", 4) == 0) {
        lr_str_t host;
        int port;
        split_authority(&s->authority, &host, &port);
        if (k[0] == 'h') {
          if (host.len >= 2 && host.base[0] == '[') host = (lr_str_t){host.base + 1, host.len - 2};
          push_str(L, &host);
        } else {
          lua_pushinteger(L, port ? port : lr_stream_local_port(s));
        }
        return 1;
      }
      if (memcmp(k, "peer", 4) == 0) {
        char ip[64];
        int port;
        if (lr_stream_peer(s, ip, sizeof ip, &port)) return 0;
        lua_pushstring(L, ip);
        return 1;
      }
      break;
    case 6:
      if (memcmp(k, "method", 6) == 0) return push_str(L, &s->method), 1;
      if (memcmp(k, "status", 6) == 0) {
        if (!(s->flags & LR_SF_REPLIED)) return 0;
        lua_pushinteger(L, s->status);
        return 1;
      }
      if (memcmp(k, "scheme", 6) == 0) return lua_pushstring(L, lr_stream_scheme(s)), 1;
      if (memcmp(k, "target", 6) == 0) return push_str(L, &s->target), 1;
      break;
    case 7:
      if (memcmp(k, "version", 7) == 0) {
        lua_pushstring(L, s->version == 20 ? "HTTP/2" : s->version == 10 ? "HTTP/1.0" : "HTTP/1.1");
        return 1;
      }
      if (memcmp(k, "headers", 7) == 0) goto cached_table;
      break;
    case 8:
      if (memcmp(k, "bindings", 8) == 0) goto cached_table;
      break;
    case 10:
      if (memcmp(k, "bytes_sent", 10) == 0) return lua_pushinteger(L, (lua_Integer)s->bytes_sent), 1;
      break;
    case 9:
      if (memcmp(k, "path_info", 9) == 0) {
        if (r->pi_len < 0) return 0;
        lua_pushlstring(L, s->path.base + r->pi_off, (size_t)r->pi_len);
        return 1;
      }
      if (memcmp(k, "peer_port", 9) == 0) {
        char ip[64];
        int port;
        if (lr_stream_peer(s, ip, sizeof ip, &port)) return 0;
        lua_pushinteger(L, port);
        return 1;
      }
      break;
  }
  return 0;
cached_table:
  /* built once, then kept with the request */
  uservalues(L, 1, 1);
  if (k[0] == 'h')
    push_headers(L, s);
  else
    lua_newtable(L);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, -2);
  lua_rawset(L, -4);
  return 1;
}

static int req_newindex(lua_State *L) {
  check_req(L, 1);
  uservalues(L, 1, 1);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 3);
  lua_rawset(L, -3);
  return 0;
}

static int req_tostring(lua_State *L) {
  lr_req_t *r = check_req(L, 1);
  if (r->s == NULL) {
    lua_pushliteral(L, "req (finished)");
    return 1;
  }
  lua_pushliteral(L, "req (");
  push_str(L, &r->s->method);
  lua_pushliteral(L, " ");
  push_str(L, &r->s->path);
  lua_pushliteral(L, ")");
  lua_concat(L, 5);
  return 1;
}

/* ---- methods ---- */

static int m_header(lua_State *L) {
  lr_stream_t *s = check_stream(L, 1);
  size_t len;
  const char *name = luaL_checklstring(L, 2, &len);
  char low[256];
  if (len >= sizeof low) return lua_settop(L, 3), 1;
  for (size_t i = 0; i < len; i++) low[i] = (name[i] >= 'A' && name[i] <= 'Z') ? (char)(name[i] | 0x20) : name[i];
  /* join repeated fields like req.headers does */
  luaL_Buffer b;
  int found = 0;
  for (unsigned i = 0; i < s->n_headers; i++) {
    const lr_header_t *h = &s->headers[i];
    if (h->name.len != len || memcmp(h->name.base, low, len) != 0) continue;
    if (found++ == 0)
      luaL_buffinit(L, &b);
    else
      luaL_addstring(&b, len == 6 && memcmp(low, "cookie", 6) == 0 ? "; " : ", ");
    luaL_addlstring(&b, h->value.base, h->value.len);
  }
  if (found) {
    luaL_pushresult(&b);
    return 1;
  }
  lua_settop(L, 3);
  return 1;
}

/* -- response headers -- */

typedef struct {
  lr_header_t *h;
  size_t n, cap;
  lr_stream_t *s;
} hlist_t;

static int hlist_push(lua_State *L, hlist_t *hl, const char *name, size_t nlen, const char *v, size_t vlen);

static int hlist_add(lua_State *L, hlist_t *hl, const char *name, size_t nlen, int vidx) {
  size_t vlen;
  const char *v;
  if (lua_type(L, vidx) == LUA_TSTRING) {
    v = lua_tolstring(L, vidx, &vlen);
  } else if (lua_type(L, vidx) == LUA_TNUMBER) {
    /* a number's text must outlive this call without touching the caller's table */
    lua_pushvalue(L, vidx);
    const char *t = lua_tolstring(L, -1, &vlen);
    v = lr_pool_strdup(hl->s->worker, &hl->s->pool, t, vlen);
    lua_pop(L, 1);
    if (v == NULL) return luaL_error(L, "out of memory");
  } else {
    return luaL_error(L, "header '%s': value must be a string or number (got %s)", name, luaL_typename(L, vidx));
  }
  for (size_t i = 0; i < vlen; i++)
    if (v[i] == '\r' || v[i] == '\n' || v[i] == '\0')
      return luaL_error(L, "header '%s': value contains CR, LF or NUL", name);
  return hlist_push(L, hl, name, nlen, v, vlen);
}

static int hlist_push(lua_State *L, hlist_t *hl, const char *name, size_t nlen, const char *v, size_t vlen) {
  if (hl->n == hl->cap) {
    size_t cap = hl->cap ? hl->cap * 2 : 32;
    lr_worker_t *w = hl->s->worker;
    lr_header_t *nh = realloc(w->scratch, cap * sizeof *nh);
    if (nh == NULL) return luaL_error(L, "out of memory");
    w->scratch = nh;
    w->scratch_cap = cap;
    hl->h = nh;
    hl->cap = cap;
  }
  hl->h[hl->n++] = (lr_header_t){{name, nlen}, {v, vlen}};
  return 0;
}

static int name_ok(const char *n, size_t len) {
  if (len == 0) return 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)n[i];
    if (c <= ' ' || c >= 127 || c == ':' || c == '(' || c == ')' || c == ',' || c == '/' || c == ';' || c == '<' ||
        c == '>' || c == '=' || c == '?' || c == '@' || c == '[' || c == '\\' || c == ']' || c == '{' || c == '}' ||
        c == '"')
      return 0;
  }
  return 1;
}

/* add every field of the table at idx; values may be arrays for repeated fields */
static void hlist_add_table(lua_State *L, hlist_t *hl, int idx) {
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "header names must be strings");
    size_t nlen;
    const char *name = lua_tolstring(L, -2, &nlen);
    if (!name_ok(name, nlen)) luaL_error(L, "invalid header name '%s'", name);
    if (lua_type(L, -1) == LUA_TTABLE) {
      lua_Integer n = luaL_len(L, -1);
      for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        /* the string stays reachable through the table, so the pointer stays valid */
        hlist_add(L, hl, name, nlen, lua_gettop(L));
        lua_pop(L, 1);
      }
    } else if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
      /* false: drop the field (e.g. to remove the default server header) */
    } else {
      hlist_add(L, hl, name, nlen, lua_gettop(L));
    }
    lua_pop(L, 1);
  }
}

/* the response headers set with req:set_header, if any, pushed or nil */
static void push_set_headers(lua_State *L, int reqidx) {
  if (uservalues(L, reqidx, 0)) {
    lua_getfield(L, -1, "\1resp_headers");
    lua_remove(L, -2);
  } else {
    lua_pushnil(L);
  }
}

typedef struct {
  lr_app_t *app;
  int ref;
} strref_t;

static void release_strref(void *arg) {
  strref_t *sr = arg;
  luaL_unref(sr->app->L, LUA_REGISTRYINDEX, sr->ref);
  lr_app_unref(sr->app);
  free(sr);
}

/* keep a big Lua string alive until the core has written it */
static strref_t *ref_string(lua_State *L, int idx) {
  lr_co_t *co = lr_co_current(L);
  if (co == NULL) return NULL;
  strref_t *sr = malloc(sizeof *sr);
  if (sr == NULL) return NULL;
  sr->app = co->app;
  lua_pushvalue(L, idx);
  lua_xmove(L, co->app->L, 1);
  sr->ref = luaL_ref(co->app->L, LUA_REGISTRYINDEX);
  co->app->refs++;
  return sr;
}

/* the content types of lariat.app's literal-route fast path (1 and 2) */
static const lr_header_t presets[] = {{{"content-type", 12}, {"text/plain; charset=utf-8", 25}},
                                       {{"content-type", 12}, {"application/json", 16}}};

/* send the head (and, with fin, the body at bi); a big body is referenced,
 * not copied. Every field here passed name_ok and hlist_add's value check
 * (or is a preset): LR_CHECKED spares the protocol checking them again.
 * 0, or -1 with a message on the stack. */
static int send_head(lua_State *L, lr_stream_t *s, int status, const lr_header_t *hs, size_t n, int bi,
                     const char *body, size_t blen, int fin) {
  int rc;
  if (fin && body && blen > BIG_BODY) {
    strref_t *sr = ref_string(L, bi);
    if (sr)
      rc = lr_stream_send_head(s, status, hs, n, body, blen, release_strref, sr, LR_FIN | LR_CHECKED);
    else
      rc = lr_stream_send_head(s, status, hs, n, body, blen, NULL, NULL, LR_FIN | LR_CHECKED);
  } else {
    rc = lr_stream_send_head(s, status, hs, n, body, blen, NULL, NULL, (fin ? LR_FIN : 0) | LR_CHECKED);
  }
  if (rc == LR_ECLOSED) return 0; /* the client left: nothing to tell the handler here */
  if (rc) {
    lua_pushstring(L, rc == LR_ESTATE ? "response already sent" : uv_strerror(rc));
    return -1;
  }
  return 0;
}

/* reply from status, headers, body at status_idx.. (req at index 1 when called
 * as a method; finish_ok passes the coroutine's own stack). Returns 0, or -1
 * with a message on the stack. */
int lr_reply_from_stack(lua_State *L, lr_stream_t *s, int si, int fin) {
  if (!lua_isinteger(L, si)) {
    lua_pushfstring(L, "status must be an integer (got %s)", luaL_typename(L, si));
    return -1;
  }
  lua_Integer status = lua_tointeger(L, si);
  if (status < 100 || status > 599) {
    lua_pushfstring(L, "status %d out of range (100..599)", (int)status);
    return -1;
  }
  if (status < 200) {
    lua_pushfstring(L, "status %d: informational responses can't be final", (int)status);
    return -1;
  }
  int hi = si + 1, bi = si + 2;
  /* lariat.app's literal-route fast path passes 1 or 2 for its constant
   * text/JSON content types: no header table to walk for hello world */
  int preset = lua_type(L, hi) == LUA_TNUMBER ? (int)lua_tointeger(L, hi) : 0;
  if (!lua_isnoneornil(L, hi) && !lua_istable(L, hi) && (preset < 1 || preset > 2)) {
    lua_pushfstring(L, "headers must be a table (got %s)", luaL_typename(L, hi));
    return -1;
  }
  size_t blen = 0;
  const char *body = NULL;
  if (!lua_isnoneornil(L, bi)) {
    if (lua_type(L, bi) != LUA_TSTRING && lua_type(L, bi) != LUA_TNUMBER) {
      lua_pushfstring(L, "body must be a string (got %s)", luaL_typename(L, bi));
      return -1;
    }
    body = lua_tolstring(L, bi, &blen);
  }
  lr_worker_t *w = s->worker;
  hlist_t hl = {w->scratch, 0, w->scratch_cap, s};
  if (lua_istable(L, hi))
    hlist_add_table(L, &hl, hi);
  else if (preset)
    hlist_push(L, &hl, presets[preset - 1].name.base, presets[preset - 1].name.len, presets[preset - 1].value.base,
               presets[preset - 1].value.len);
  return send_head(L, s, (int)status, hl.h, hl.n, bi, body, blen, fin);
}

/* the direct route's string result (scheduler.c): 200 text/plain with the
 * req at 1; without set_header fields it needs no header list at all */
int lr_req_reply_text(lua_State *L, int bi) {
  lr_req_t *r = lua_touserdata(L, 1);
  lr_stream_t *s = r->s;
  if (s == NULL || (s->flags & LR_SF_REPLIED)) return 0;
  int top = lua_gettop(L);
  int plain = lua_getiuservalue(L, 1, 1) != LUA_TTABLE || lua_getfield(L, -1, "\1resp_headers") == LUA_TNIL;
  lua_settop(L, top);
  if (!plain) {
    lua_pushcfunction(L, lr_req_reply_results);
    lua_pushvalue(L, 1);
    lua_pushinteger(L, 200);
    lua_pushinteger(L, 1);
    lua_pushvalue(L, bi);
    lua_call(L, 4, 0);
    return 0;
  }
  size_t blen;
  const char *body = lua_tolstring(L, bi, &blen);
  if (send_head(L, s, 200, &presets[0], 1, bi, body, blen, 1))
    return luaL_error(L, "bad response from the handler: %s", lua_tostring(L, -1));
  return 0;
}

/* merge set_header fields into a headers table for reply/stream_reply */
static void merge_set_headers(lua_State *L, int hi) {
  push_set_headers(L, 1);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  int sh = lua_gettop(L);
  lua_newtable(L);
  int merged = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, sh)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, merged);
  }
  if (lua_type(L, hi) == LUA_TNUMBER) {
    /* a preset content type (1 text, 2 JSON) wins like a reply field would */
    lua_Integer p = lua_tointeger(L, hi);
    if (p >= 1 && p <= 2) {
      lua_pushliteral(L, "content-type");
      lua_pushlstring(L, presets[p - 1].value.base, presets[p - 1].value.len);
      lua_rawset(L, merged);
    }
  } else if (lua_istable(L, hi)) {
    /* fields given to reply win over set_header ones, compared case-insensitively */
    lua_pushnil(L);
    while (lua_next(L, hi)) {
      if (lua_type(L, -2) == LUA_TSTRING) {
        size_t n;
        const char *k = lua_tolstring(L, -2, &n);
        char low[256];
        if (n < sizeof low) {
          for (size_t i = 0; i < n; i++) low[i] = (k[i] >= 'A' && k[i] <= 'Z') ? (char)(k[i] | 0x20) : k[i];
          lua_pushlstring(L, low, n);
          lua_pushnil(L);
          lua_rawset(L, merged);
        }
      }
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, merged);
    }
  }
  lua_replace(L, hi);
  lua_pop(L, 1);
}

/* finish a request from a handler's results: req, status, headers, body on
 * the stack. Called protected by the scheduler; raises on a bad response. */
int lr_req_reply_results(lua_State *L) {
  lr_req_t *r = check_req(L, 1);
  lua_settop(L, 4);
  if (r->s == NULL) return 0;
  merge_set_headers(L, 3);
  if (lr_reply_from_stack(L, r->s, 2, 1)) return luaL_error(L, "bad response from the handler: %s", lua_tostring(L, -1));
  return 0;
}

size_t lr_req_head_fields(lua_State *L, lr_stream_t *s, int hi, lr_header_t **out) {
  merge_set_headers(L, hi);
  hlist_t hl = {s->worker->scratch, 0, s->worker->scratch_cap, s};
  if (lua_istable(L, hi)) hlist_add_table(L, &hl, hi);
  *out = hl.h;
  return hl.n;
}

static int m_reply(lua_State *L) {
  lr_stream_t *s = check_stream(L, 1);
  lua_settop(L, 4);
  merge_set_headers(L, 3);
  if (lr_reply_from_stack(L, s, 2, 1)) return luaL_error(L, "req:reply: %s", lua_tostring(L, -1));
  return 0;
}

static int m_stream_reply(lua_State *L) {
  lr_stream_t *s = check_stream(L, 1);
  lua_settop(L, 3);
  merge_set_headers(L, 3);
  lua_pushnil(L);
  if (lr_reply_from_stack(L, s, 2, 0)) return luaL_error(L, "req:stream_reply: %s", lua_tostring(L, -1));
  return 0;
}

static int m_set_header(lua_State *L) {
  check_stream(L, 1);
  size_t n;
  const char *name = luaL_checklstring(L, 2, &n);
  if (!name_ok(name, n)) return luaL_argerror(L, 2, "invalid header name");
  if (!lua_isnoneornil(L, 3) && !lua_isstring(L, 3) && !lua_istable(L, 3))
    return luaL_argerror(L, 3, "string, number, table or nil expected");
  char low[256];
  if (n >= sizeof low) return luaL_argerror(L, 2, "header name too long");
  for (size_t i = 0; i < n; i++) low[i] = (name[i] >= 'A' && name[i] <= 'Z') ? (char)(name[i] | 0x20) : name[i];
  uservalues(L, 1, 1);
  if (lua_getfield(L, -1, "\1resp_headers") != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "\1resp_headers");
  }
  int t = lua_gettop(L);
  lua_pushlstring(L, low, n);
  if (n == 10 && memcmp(low, "set-cookie", 10) == 0 && !lua_isnoneornil(L, 3)) {
    /* set-cookie accumulates: each call adds a field line */
    lua_pushvalue(L, -1);
    if (lua_rawget(L, t) != LUA_TTABLE) {
      lua_pop(L, 1);
      lua_newtable(L);
      lua_pushvalue(L, -2);
      lua_pushvalue(L, -2);
      lua_rawset(L, t);
    }
    lua_pushvalue(L, 3);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    return 0;
  }
  lua_pushvalue(L, 3);
  lua_rawset(L, t);
  return 0;
}

/* -- writing the body -- */

static int m_write(lua_State *L);

/* after a write's wait: queued before it (true), or not yet (write now, or
 * wait again) */
static int write_after(lua_State *L, int queued) {
  lr_req_t *r = check_req(L, 1);
  if (r->s == NULL || r->s->conn == NULL) return lr_req_closed(L, r);
  lr_co_t *co = lr_co_current(L);
  if (co && co->stopping) {
    luaL_pushfail(L);
    lua_pushliteral(L, "stopping"); /* the server stops: wind down */
    return 2;
  }
  if (!queued) return m_write(L);
  lua_pushboolean(L, 1);
  return 1;
}

static int write_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return write_after(L, 1);
}

static int write_again_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return write_after(L, 0);
}

static int m_write(lua_State *L) {
  lr_stream_t *s = check_stream(L, 1);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  if (!(s->flags & LR_SF_REPLIED)) {
    /* like OpenResty's ngx.print: the first write starts a 200 stream */
    if (s->conn == NULL) goto closed;
    lua_settop(L, 2);
    lua_pushinteger(L, 200); /* 3: status */
    lua_pushnil(L);          /* 4: headers */
    lua_pushnil(L);          /* 5: body */
    merge_set_headers(L, 4);
    if (lr_reply_from_stack(L, s, 3, 0)) return luaL_error(L, "req:write: %s", lua_tostring(L, -1));
    lua_settop(L, 2);
  } else if (!(s->flags & LR_SF_STREAMING)) {
    return luaL_error(L, "req:write: the response was sent with req:reply; use req:stream_reply to stream");
  }
  if (s->flags & LR_SF_FINISHED) return luaL_error(L, "req:write: the response is complete");
  if (s->conn == NULL) goto closed;
  if (lr_stream_queue_blocked(s)) {
    lr_co_t *co = lr_co_current(L);
    if (co && co->L == L && lua_isyieldable(L)) {
      lua_settop(L, 2);
      s->wait = LR_WAIT_DRAIN;
      return lr_co_wait(L, co, 0, NULL, NULL, write_again_k);
    }
  }
  int rc;
  strref_t *sr = len > BIG_BODY ? ref_string(L, 2) : NULL;
  rc = lr_stream_send_data(s, data, len, sr ? release_strref : NULL, sr);
  if (rc == LR_ECLOSED) goto closed;
  if (rc) return luaL_error(L, "req:write: %s", rc == LR_ESTATE ? "response not streaming" : uv_strerror(rc));
  if (lr_stream_write_blocked(s)) {
    lr_co_t *co = lr_co_current(L);
    if (co && co->L == L && lua_isyieldable(L)) {
      s->wait = LR_WAIT_DRAIN;
      return lr_co_wait(L, co, 0, NULL, NULL, write_k);
    }
  }
  lua_pushboolean(L, 1);
  return 1;
closed:
  return lr_req_closed(L, check_req(L, 1));
}

static int m_trailers(lua_State *L) {
  lr_stream_t *s = check_stream(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  if (!(s->flags & LR_SF_STREAMING)) return luaL_error(L, "req:trailers: needs req:stream_reply first");
  lr_worker_t *w = s->worker;
  hlist_t hl = {w->scratch, 0, w->scratch_cap, s};
  hlist_add_table(L, &hl, 2);
  int rc = lr_stream_send_trailers(s, hl.h, hl.n);
  if (rc == LR_ECLOSED) {
    luaL_pushfail(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  if (rc) return luaL_error(L, "req:trailers: the response is complete");
  lua_pushboolean(L, 1);
  return 1;
}

/* -- reading the body -- */

static uint64_t timeout_arg(lua_State *L, int idx, const lr_config_t *cfg) {
  if (lua_istable(L, idx)) {
    lua_getfield(L, idx, "timeout");
    if (!lua_isnil(L, -1)) {
      lua_Number t = luaL_checknumber(L, -1);
      lua_pop(L, 1);
      return t <= 0 ? 1 : (uint64_t)(t * 1000);
    }
    lua_pop(L, 1);
  }
  return cfg->body_timeout_ms;
}

/* the body can't be read any more: it was too large, or the client left */
static int body_gone(lua_State *L, lr_req_t *r) {
  if (r->s && (r->s->flags & LR_SF_BODY_TOO_BIG)) {
    luaL_pushfail(L);
    lua_pushliteral(L, "too large");
    return 2;
  }
  return lr_req_closed(L, r);
}

static int read_body_k(lua_State *L, int status, lua_KContext ctx);

static int read_body_step(lua_State *L, lr_co_t *co) {
  lr_req_t *r = check_req(L, 1);
  lr_stream_t *s = r->s;
  size_t max = 65536;
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "length");
    if (!lua_isnil(L, -1)) max = (size_t)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    if (max == 0) max = 1;
  }
  if (s == NULL) goto closed;
  if (co && co->timed_out) {
    co->timed_out = 0;
    luaL_pushfail(L);
    lua_pushliteral(L, "timeout");
    return 2;
  }
  lr_buf_t out = {0};
  int fin;
  int n = lr_stream_read_body(s, &out, max, &fin);
  if (n > 0 || fin) {
    lua_pushlstring(L, out.base ? out.base : "", out.len);
    lua_pushstring(L, fin ? "fin" : "more");
    lr_buf_free(&out);
    return 2;
  }
  lr_buf_free(&out);
  if (n < 0) goto closed;
  if (co == NULL || !lua_isyieldable(L)) return luaL_error(L, "req:read_body: can't wait outside a request coroutine");
  s->wait = LR_WAIT_BODY;
  return lr_co_wait(L, co, timeout_arg(L, 2, co->app->lw->cfg), NULL, NULL, read_body_k);
closed:
  return body_gone(L, r);
}

static int read_body_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return read_body_step(L, lr_co_current(L));
}

static int m_read_body(lua_State *L) {
  check_req(L, 1);
  lua_settop(L, 2);
  return read_body_step(L, lr_co_current(L));
}

/* req:body(): the whole body, read once and kept for later calls */
static int body_k(lua_State *L, int status, lua_KContext ctx);

static int body_step(lua_State *L) {
  lr_req_t *r = check_req(L, 1);
  lr_co_t *co = lr_co_current(L);
  lr_stream_t *s = r->s;
  if (s == NULL) goto closed;
  if (co && co->timed_out) {
    co->timed_out = 0;
    co->acc.len = 0;
    luaL_pushfail(L);
    lua_pushliteral(L, "timeout");
    return 2;
  }
  lr_buf_t *acc = co ? &co->acc : NULL;
  lr_buf_t local = {0};
  if (acc == NULL) acc = &local;
  for (;;) {
    int fin;
    int n = lr_stream_read_body(s, acc, 1 << 20, &fin);
    if (n < 0) {
      acc->len = 0;
      lr_buf_free(&local);
      goto closed;
    }
    if (fin) break;
    if (n == 0) {
      if (co == NULL || !lua_isyieldable(L)) {
        lr_buf_free(&local);
        return luaL_error(L, "req:body: can't wait outside a request coroutine");
      }
      s->wait = LR_WAIT_BODY;
      return lr_co_wait(L, co, co->app->lw->cfg->body_timeout_ms, NULL, NULL, body_k);
    }
  }
  lua_pushlstring(L, acc->base ? acc->base : "", acc->len);
  acc->len = 0;
  lr_buf_free(&local);
  uservalues(L, 1, 1);
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "\1body");
  lua_pop(L, 1);
  return 1;
closed:
  return body_gone(L, r);
}

static int body_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return body_step(L);
}

static int m_body(lua_State *L) {
  check_req(L, 1);
  lua_settop(L, 1);
  if (uservalues(L, 1, 0)) {
    if (lua_getfield(L, -1, "\1body") == LUA_TSTRING) return 1;
    lua_pop(L, 2);
  }
  return body_step(L);
}

/* req:set_timeout(seconds): this handler must start its response within
 * seconds from now (0: no limit), replacing --handler-timeout; for long-poll
 * routes. Returns true; false once the response has started (nothing to bound). */
static int m_set_timeout(lua_State *L) {
  lr_req_t *r = check_req(L, 1);
  lua_Number t = luaL_checknumber(L, 2);
  luaL_argcheck(L, t >= 0 && t <= 1e7, 2, "seconds, 0 for no limit");
  lr_co_t *co = r->co;
  int ok = r->s && co && co->stream == r->s && !(r->s->flags & LR_SF_REPLIED);
  if (ok) lr_co_set_deadline(co, (uint64_t)(t * 1000 + 0.5));
  lua_pushboolean(L, ok);
  return 1;
}

static const luaL_Reg methods[] = {
    {"header", m_header},
    {"reply", m_reply},
    {"stream_reply", m_stream_reply},
    {"set_header", m_set_header},
    {"write", m_write},
    {"trailers", m_trailers},
    {"read_body", m_read_body},
    {"body", m_body},
    {"set_timeout", m_set_timeout},
    {NULL, NULL},
};

/* -- content negotiation for the answers C makes itself (500, 503) -- */

/* q of one media range ("text/html;level=1;q=0.5" → 0.5; none → 1) */
static double range_q(const char *p, const char *end) {
  for (; p < end; p++) {
    if (*p != ';') continue;
    const char *q = p + 1;
    while (q < end && (*q == ' ' || *q == '\t')) q++;
    if (q + 1 < end && (q[0] == 'q' || q[0] == 'Q') && q[1] == '=') {
      double v = 0, scale = 0;
      for (q += 2; q < end && ((*q >= '0' && *q <= '9') || *q == '.'); q++) {
        if (*q == '.') scale = 1;
        else if (scale) v += (*q - '0') * (scale /= 10);
        else v = v * 10 + (*q - '0');
      }
      return v;
    }
  }
  return 1;
}

/* Does the client ask for JSON at least as much as for text? The same rule
 * as lariat.http_error.wants_json: "application/json" or "application/…+json"
 * beats or ties every text/… range; any-type ranges and browsers get text. */
int lr_req_wants_json(const lr_stream_t *s) {
  double jq = 0, tq = 0;
  for (unsigned i = 0; i < s->n_headers; i++) {
    const lr_header_t *h = &s->headers[i];
    if (h->name.len != 6 || memcmp(h->name.base, "accept", 6) != 0) continue;
    const char *p = h->value.base, *end = p + h->value.len;
    while (p < end) {
      const char *comma = memchr(p, ',', (size_t)(end - p));
      const char *r_end = comma ? comma : end;
      while (p < r_end && (*p == ' ' || *p == '\t')) p++;
      const char *t_end = p;
      while (t_end < r_end && *t_end != ';' && *t_end != ' ') t_end++;
      size_t tl = (size_t)(t_end - p);
      double q = range_q(t_end, r_end);
      if ((tl == 16 && strncasecmp(p, "application/json", 16) == 0) ||
          (tl > 17 && strncasecmp(p, "application/", 12) == 0 && strncasecmp(t_end - 5, "+json", 5) == 0)) {
        if (q > jq) jq = q;
      } else if (tl > 5 && strncasecmp(p, "text/", 5) == 0) {
        if (q > tq) tq = q;
      }
      p = comma ? comma + 1 : end;
    }
  }
  return jq > 0 && jq >= tq;
}

/* creates the req metatable; its methods table is core.req_methods */
void lr_req_open(lua_State *L) {
  luaL_newmetatable(L, LR_REQ_MT);
  lua_newtable(L); /* methods: Lua modules add their own (query, cookies, ...) */
  luaL_setfuncs(L, methods, 0);
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, req_index, 1);
  lua_setfield(L, -3, "__index");
  lua_pushcfunction(L, req_newindex);
  lua_setfield(L, -3, "__newindex");
  lua_pushcfunction(L, req_tostring);
  lua_setfield(L, -3, "__tostring");
  lua_pushliteral(L, "req");
  lua_setfield(L, -3, "__name");
  lua_pop(L, 1);
  app_of(L)->req_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}
