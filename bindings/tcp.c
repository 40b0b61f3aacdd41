/* lariat.tcp.connect and the socket userdata (cosockets, as OpenResty calls
 * them), lariat.dns.resolve. The connection is core/client.c's; this file
 * only waits on it. Every wait goes through lr_co_wait: when the request
 * ends meanwhile, the socket is closed (never pooled: it is mid-exchange). */
#include <stdlib.h>
#include <string.h>

#include "bindings.h"

#define SOCK_MT "lariat.sock"
#define DEFAULT_TIMEOUT_MS 60000
#define DEFAULT_IDLE_MS 60000
#define DEFAULT_POOL 32
#define DEFAULT_MAX_LINE (1u << 20) /* receive("*l") */
#define DEFAULT_MAX_ALL (8u << 20)  /* receive("*a"), as lariat.http's max_body */

typedef struct sock_s {
  lr_client_t *cl;   /* NULL once closed or pooled */
  lr_co_t *rco, *wco; /* coroutines waiting to read / to write (or connect): one
                       * may send while another receives */
  lr_buf_t rest;     /* what was read but not consumed when the connection closed */
  char err[160];     /* why it closed */
  uint64_t timeout_ms; /* sock:settimeout: each following operation; 0 = none */
  uint64_t deadline;   /* the operation under way */
  size_t max_line, max_all; /* bounds of receive("*l") / ("*a"): a peer can't grow our buffer without end */
  lr_worker_t *w;
} sock_t;

static void sock_notify(lr_client_t *cl, int ev) {
  sock_t *s = cl->owner;
  s->cl = cl; /* ev 0: moved to another connection object */
  if (ev & LR_CEV_CLOSED) {
    memcpy(s->err, cl->err, sizeof s->err);
    lr_buf_free(&s->rest);
    s->rest = cl->in; /* keep what was read: receive returns it before "closed" */
    cl->in = (lr_buf_t){0};
    s->cl = NULL;
  }
  if (ev && s->rco) lr_co_wake(s->rco);
  if (ev && s->wco) lr_co_wake(s->wco);
}

static void sock_close(sock_t *s) {
  if (s->cl) lr_client_close(s->cl);
  s->cl = NULL;
}

/* the wait was abandoned: a socket in the middle of an exchange is closed */
static void sock_cancel(lr_co_t *co, void *arg) {
  sock_t *s = arg;
  if (s->rco == co) s->rco = NULL;
  if (s->wco == co) s->wco = NULL;
  sock_close(s);
  snprintf(s->err, sizeof s->err, "closed");
}

static int sock_wait(lua_State *L, sock_t *s, int rd, lua_KContext ctx, lua_KFunction k) {
  lr_co_t *co = lr_co_current(L);
  if ((rd ? s->rco : s->wco) != NULL && (rd ? s->rco : s->wco) != co)
    return luaL_error(L, "socket busy: another coroutine is %s it", rd ? "reading from" : "writing to");
  uint64_t left = 0;
  if (s->deadline) {
    uint64_t now = uv_now(&s->w->loop);
    left = s->deadline > now ? s->deadline - now : 1;
  }
  if (rd)
    s->rco = co;
  else
    s->wco = co;
  lua_pushinteger(L, (lua_Integer)ctx); /* k finds its context on the stack */
  return lr_co_wait(L, co, left, sock_cancel, s, k);
}

/* after a wake: 1 when the operation's deadline passed */
static int sock_woken(lua_State *L, sock_t *s, lua_KContext *ctx) {
  lr_co_t *co = lr_co_current(L);
  if (s->rco == co) s->rco = NULL;
  if (s->wco == co) s->wco = NULL;
  *ctx = (lua_KContext)lua_tointeger(L, -1);
  lua_pop(L, 1);
  return co->timed_out || (s->deadline && uv_now(&s->w->loop) >= s->deadline);
}

static void start_op(sock_t *s) {
  s->deadline = s->timeout_ms ? uv_now(&s->w->loop) + s->timeout_ms : 0;
}

static sock_t *check_sock(lua_State *L) { return luaL_checkudata(L, 1, SOCK_MT); }

static lr_worker_t *worker_of(lua_State *L, const char *what) {
  lr_co_t *co = lr_co_current(L);
  if (co == NULL) luaL_error(L, "%s: only inside a handler's coroutine (or one from lariat.spawn)", what);
  return co->app->lw->w;
}

static int fail(lua_State *L, const char *msg) {
  luaL_pushfail(L);
  lua_pushstring(L, msg);
  return 2;
}

/* ---- connect ---- */

static int connect_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  sock_t *s = lua_touserdata(L, 1);
  int late = sock_woken(L, s, &ctx);
  if (s->cl == NULL) return fail(L, s->err);
  if (s->cl->state == LR_CL_OPEN) {
    s->timeout_ms = (uint64_t)ctx; /* back to the socket's own timeout */
    lua_settop(L, 1);
    return 1;
  }
  if (late) {
    sock_close(s);
    return fail(L, "timeout");
  }
  return sock_wait(L, s, 0, ctx, connect_k);
}

static double opt_number(lua_State *L, int t, const char *k, double def) {
  if (lua_type(L, t) != LUA_TTABLE) return def;
  lua_getfield(L, t, k);
  double v = lua_isnil(L, -1) ? def : luaL_checknumber(L, -1);
  lua_pop(L, 1);
  return v;
}

static int opt_bool(lua_State *L, int t, const char *k, int def) {
  if (lua_type(L, t) != LUA_TTABLE) return def;
  lua_getfield(L, t, k);
  int v = lua_isnil(L, -1) ? def : lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

/* the string stays referenced by the options table while used */
static const char *opt_string(lua_State *L, int t, const char *k) {
  if (lua_type(L, t) != LUA_TTABLE) return NULL;
  lua_getfield(L, t, k);
  const char *v = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
  lua_pop(L, 1);
  return v;
}

/* lariat.tcp.connect(host, port[, {tls=, sni=, verify=true, ca=, timeout=, max_line=, max_all=}]) → sock | nil, err */
int lr_l_tcp_connect(lua_State *L) {
  const char *host = luaL_checkstring(L, 1);
  lua_Integer port = luaL_checkinteger(L, 2);
  luaL_argcheck(L, port > 0 && port < 65536, 2, "port out of range");
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  lr_worker_t *w = worker_of(L, "lariat.tcp.connect");
  lr_client_opts_t o = {0};
  o.host = host;
  o.port = (int)port;
  o.tls = opt_bool(L, 3, "tls", 0);
  o.sni = opt_string(L, 3, "sni");
  o.verify = opt_bool(L, 3, "verify", 1);
  o.ca = opt_string(L, 3, "ca");
  o.alpn = opt_string(L, 3, "alpn");
  double t = opt_number(L, 3, "timeout", DEFAULT_TIMEOUT_MS / 1000.0);
  double max_line = opt_number(L, 3, "max_line", DEFAULT_MAX_LINE);
  double max_all = opt_number(L, 3, "max_all", DEFAULT_MAX_ALL);
  luaL_argcheck(L, max_line >= 1 && max_all >= 1, 3, "max_line and max_all must be positive");
  lua_settop(L, 3);
  sock_t *s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  s->w = w;
  s->max_line = (size_t)max_line;
  s->max_all = (size_t)max_all;
  luaL_setmetatable(L, SOCK_MT);
  lua_replace(L, 1);
  lua_settop(L, 1);
  char err[160];
  if (lr_client_open(w, &o, sock_notify, s, &s->cl, err, sizeof err) < 0) return fail(L, err);
  if (s->cl == NULL) return fail(L, s->err); /* failed at once (told through notify) */
  s->timeout_ms = t > 0 ? (uint64_t)(t * 1000 + 0.5) : 0;
  start_op(s);
  if (s->cl->state == LR_CL_OPEN) { /* from the pool */
    s->timeout_ms = DEFAULT_TIMEOUT_MS;
    return 1;
  }
  return sock_wait(L, s, 0, DEFAULT_TIMEOUT_MS, connect_k);
}

/* ---- send ---- */

static int send_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  sock_t *s = lua_touserdata(L, 1);
  int late = sock_woken(L, s, &ctx);
  if (s->cl == NULL) return fail(L, s->err);
  if (!lr_client_write_blocked(s->cl)) {
    lua_pushinteger(L, (lua_Integer)ctx);
    return 1;
  }
  if (late) return fail(L, "timeout");
  return sock_wait(L, s, 0, ctx, send_k);
}

/* sock:send(data) → bytes | nil, err. Queued at once; waits while the
 * connection has more than LR_OUT_HIGH unsent. */
static int l_send(lua_State *L) {
  sock_t *s = check_sock(L);
  size_t len;
  const char *p;
  if (lua_istable(L, 2)) { /* a table of strings, as OpenResty accepts */
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    lua_Integer n = luaL_len(L, 2);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_geti(L, 2, i);
      luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    lua_replace(L, 2);
  }
  p = luaL_checklstring(L, 2, &len);
  if (s->cl == NULL) return fail(L, s->err[0] ? s->err : "closed");
  if (lr_client_write(s->cl, p, len) < 0) return fail(L, "closed");
  if (!lr_client_write_blocked(s->cl)) {
    lua_pushinteger(L, (lua_Integer)len);
    return 1;
  }
  lr_co_t *co = lr_co_current(L);
  if (co == NULL || !lua_isyieldable(L)) {
    lua_pushinteger(L, (lua_Integer)len);
    return 1;
  }
  start_op(s);
  lua_settop(L, 1);
  return sock_wait(L, s, 0, (lua_KContext)len, send_k);
}

/* ---- receive ---- */

enum { RX_LINE = -1, RX_ALL = -2 };

static lr_buf_t *sock_in(sock_t *s) { return s->cl ? &s->cl->in : &s->rest; }

static void sock_consume(sock_t *s, size_t n) {
  if (s->cl) {
    s->cl->in_max = 0;
    lr_client_consume(s->cl, n);
  } else {
    lr_buf_consume(&s->rest, n);
  }
}

/* 1 (result pushed), or 0: wait for more */
static int rx_try(lua_State *L, sock_t *s, lua_Integer want, int late) {
  lr_buf_t *in = sock_in(s);
  int eof = s->cl == NULL || s->cl->eof;
  if (want >= 0 && in->len >= (size_t)want) {
    lua_pushlstring(L, in->base, (size_t)want);
    sock_consume(s, (size_t)want);
    return 1;
  }
  const char *over = NULL;
  if (want == RX_LINE) {
    char *nl = in->len ? memchr(in->base, '\n', in->len) : NULL;
    if (nl && (size_t)(nl - in->base) <= s->max_line) {
      size_t n = (size_t)(nl - in->base);
      lua_pushlstring(L, in->base, n && nl[-1] == '\r' ? n - 1 : n);
      sock_consume(s, n + 1);
      return 1;
    }
    if (nl || in->len > s->max_line) over = "line too long";
  }
  if (want == RX_ALL && in->len > s->max_all) over = "too large";
  if (over) { /* the rest of it is still coming: the socket can't be used after this */
    size_t n = want == RX_LINE ? s->max_line : s->max_all;
    luaL_pushfail(L);
    lua_pushstring(L, over);
    lua_pushlstring(L, in->base, n);
    sock_close(s);
    lr_buf_free(&s->rest);
    snprintf(s->err, sizeof s->err, "closed");
    return 3;
  }
  if (want == RX_ALL && eof) {
    lua_pushlstring(L, in->base ? in->base : "", in->len);
    sock_consume(s, in->len);
    return 1;
  }
  if (!eof && !late) {
    /* the whole answer must fit in the buffer: let it grow past the default pause */
    if (s->cl) lr_client_want(s->cl, want >= 0 ? (size_t)want : (want == RX_LINE ? s->max_line : s->max_all) + 1);
    return 0;
  }
  luaL_pushfail(L);
  lua_pushstring(L, late && !eof ? "timeout" : "closed");
  lua_pushlstring(L, in->base ? in->base : "", in->len);
  sock_consume(s, in->len);
  return 3;
}

static int receive_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  sock_t *s = lua_touserdata(L, 1);
  int late = sock_woken(L, s, &ctx);
  int n = rx_try(L, s, (lua_Integer)ctx, late);
  if (n) return n;
  return sock_wait(L, s, 1, ctx, receive_k);
}

/* sock:receive(n | "*l" | "*a") → data | nil, err, partial */
static int l_receive(lua_State *L) {
  sock_t *s = check_sock(L);
  lua_Integer want = RX_LINE;
  if (lua_type(L, 2) == LUA_TNUMBER) {
    want = luaL_checkinteger(L, 2);
    luaL_argcheck(L, want >= 0, 2, "negative size");
  } else if (!lua_isnoneornil(L, 2)) {
    const char *p = luaL_checkstring(L, 2);
    if (*p == '*') p++;
    if (*p == 'l')
      want = RX_LINE;
    else if (*p == 'a')
      want = RX_ALL;
    else
      return luaL_argerror(L, 2, "invalid pattern (want a size, \"*l\" or \"*a\")");
  }
  lua_settop(L, 1);
  int n = rx_try(L, s, want, 0);
  if (n) return n;
  start_op(s);
  return sock_wait(L, s, 1, (lua_KContext)want, receive_k);
}

/* ---- the rest ---- */

/* sock:setlimits(max_line, max_all): bytes receive("*l") and receive("*a") may take (nil: unchanged) */
static int l_setlimits(lua_State *L) {
  sock_t *s = check_sock(L);
  lua_Integer line = luaL_optinteger(L, 2, (lua_Integer)s->max_line);
  lua_Integer all = luaL_optinteger(L, 3, (lua_Integer)s->max_all);
  luaL_argcheck(L, line > 0, 2, "limit must be positive");
  luaL_argcheck(L, all > 0, 3, "limit must be positive");
  s->max_line = (size_t)line;
  s->max_all = (size_t)all;
  return 0;
}

static int l_settimeout(lua_State *L) {
  sock_t *s = check_sock(L);
  if (lua_isnoneornil(L, 2)) {
    s->timeout_ms = 0;
  } else {
    lua_Number t = luaL_checknumber(L, 2);
    s->timeout_ms = t > 0 ? (uint64_t)(t * 1000 + 0.5) : 0;
    if (t > 0 && s->timeout_ms == 0) s->timeout_ms = 1;
  }
  return 0;
}

/* sock:setkeepalive([idle_s[, size]]) → 1 | nil, err: back to this worker's pool */
static int l_setkeepalive(lua_State *L) {
  sock_t *s = check_sock(L);
  lua_Number idle = luaL_optnumber(L, 2, DEFAULT_IDLE_MS / 1000.0);
  lua_Integer size = luaL_optinteger(L, 3, DEFAULT_POOL);
  luaL_argcheck(L, size >= 0, 3, "negative pool size");
  if (s->cl == NULL) return fail(L, s->err[0] ? s->err : "closed");
  lr_client_t *cl = s->cl;
  s->cl = NULL;
  snprintf(s->err, sizeof s->err, "closed");
  uint64_t idle_ms = idle > 0 ? (uint64_t)(idle * 1000 + 0.5) : 3600 * 1000;
  if (lr_client_keepalive(cl, idle_ms, (unsigned)size) < 0) return fail(L, "unread data or closed: not pooled");
  lua_pushinteger(L, 1);
  return 1;
}

static int l_close(lua_State *L) {
  sock_t *s = check_sock(L);
  if (s->cl == NULL) return fail(L, "closed");
  sock_close(s);
  snprintf(s->err, sizeof s->err, "closed");
  lua_pushinteger(L, 1);
  return 1;
}

static int l_gc(lua_State *L) {
  sock_t *s = check_sock(L);
  sock_close(s);
  lr_buf_free(&s->rest);
  return 0;
}

/* sock:info() → { reused=, alpn= "h2"|nil } */
static int l_info(lua_State *L) {
  sock_t *s = check_sock(L);
  lua_createtable(L, 0, 2);
  if (s->cl) {
    lua_pushboolean(L, s->cl->reused);
    lua_setfield(L, -2, "reused");
    lua_pushboolean(L, s->cl->h2);
    lua_setfield(L, -2, "h2");
  }
  return 1;
}

static int l_tostring(lua_State *L) {
  sock_t *s = check_sock(L);
  lua_pushfstring(L, "lariat.sock (%s)", s->cl ? "open" : "closed");
  return 1;
}

/* ---- lariat.dns.resolve ---- */

typedef struct resolve_s {
  lr_dns_query_t *q;
  lr_co_t *co;
  int done, status, n;
  struct sockaddr_storage addrs[LR_DNS_MAX];
} resolve_t;

static void push_addrs(lua_State *L, const struct sockaddr_storage *a, int n) {
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    char buf[64];
    if (a[i].ss_family == AF_INET)
      uv_ip4_name((const struct sockaddr_in *)&a[i], buf, sizeof buf);
    else
      uv_ip6_name((const struct sockaddr_in6 *)&a[i], buf, sizeof buf);
    lua_pushstring(L, buf);
    lua_rawseti(L, -2, i + 1);
  }
}

static void on_resolved(void *arg, int status, const struct sockaddr_storage *addrs, int n) {
  resolve_t *r = arg;
  r->q = NULL;
  r->done = 1;
  r->status = status;
  r->n = n;
  if (n) memcpy(r->addrs, addrs, (size_t)n * sizeof *addrs);
  if (r->co) lr_co_wake(r->co);
}

static void resolve_cancel(lr_co_t *co, void *arg) {
  (void)co;
  resolve_t *r = arg;
  r->co = NULL;
  lr_dns_cancel(r->q);
  r->q = NULL;
}

static int resolve_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  resolve_t *r = lua_touserdata(L, 2);
  lr_co_t *co = lr_co_current(L);
  r->co = NULL;
  if (r->done) {
    if (r->status < 0 || r->n == 0) {
      luaL_pushfail(L);
      lua_pushfstring(L, "could not resolve %s: %s", lua_tostring(L, 1), uv_strerror(r->status ? r->status : UV_EAI_NONAME));
      return 2;
    }
    push_addrs(L, r->addrs, r->n);
    return 1;
  }
  if (co->timed_out) {
    resolve_cancel(co, r);
    return fail(L, "timeout");
  }
  r->co = co;
  return lr_co_wait(L, co, 0, resolve_cancel, r, resolve_k); /* woken early (stopping): wait on */
}

/* lariat.dns.resolve(name) → { "addr", ... } | nil, err */
int lr_l_dns_resolve(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  lr_worker_t *w = worker_of(L, "lariat.dns.resolve");
  struct sockaddr_storage a[LR_DNS_MAX];
  int n = lr_dns_cached(w, name, a, LR_DNS_MAX);
  if (n > 0) {
    push_addrs(L, a, n);
    return 1;
  }
  if (n < 0) {
    luaL_pushfail(L);
    lua_pushfstring(L, "could not resolve %s: %s", name, uv_strerror(n));
    return 2;
  }
  lua_settop(L, 1);
  resolve_t *r = lua_newuserdatauv(L, sizeof *r, 0);
  memset(r, 0, sizeof *r);
  r->co = lr_co_current(L);
  r->q = lr_dns_query(w, name, on_resolved, r);
  if (r->q == NULL) return fail(L, "out of memory");
  return lr_co_wait(L, r->co, 30000, resolve_cancel, r, resolve_k);
}

static const luaL_Reg sock_methods[] = {
    {"send", l_send},
    {"receive", l_receive},
    {"setlimits", l_setlimits},
    {"settimeout", l_settimeout},
    {"setkeepalive", l_setkeepalive},
    {"close", l_close},
    {"info", l_info},
    {NULL, NULL},
};

void lr_tcp_open(lua_State *L) {
  if (luaL_newmetatable(L, SOCK_MT)) {
    luaL_newlib(L, sock_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, l_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, lr_l_tcp_connect);
  lua_setfield(L, -2, "tcp_connect");
  lua_pushcfunction(L, lr_l_dns_resolve);
  lua_setfield(L, -2, "dns_resolve");
}
