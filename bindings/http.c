/* lariat.http.request: the HTTP client. One exchange = one userdata that
 * holds the connection (core/client.c) and the response parser
 * (core/http1_client.c). The response is parsed in the connection's
 * callback, in C; the coroutine is woken only when it has something to
 * take: the head, body bytes (stream = true), the end, or an error.
 * Every wait goes through lr_co_wait: a cancelled request closes its
 * connection (mid-exchange: never pooled). */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bindings.h"

#define EXCH_MT "lariat.http.exchange"
#define DEFAULT_TIMEOUT_MS 10000
#define DEFAULT_MAX_BODY (8u << 20)
#define POOL_IDLE_MS 60000
#define POOL_SIZE 64

enum { PH_CONNECT, PH_SEND, PH_HEAD, PH_BODY, PH_DONE };

typedef struct exch_s {
  lr_client_t *cl;
  lr_co_t *co;
  lr_worker_t *w;
  int phase;
  int closed;         /* the connection ended (cl is NULL) */
  int got_bytes;      /* some of the response arrived */
  int retried;        /* a pooled connection failed: tried once more on a fresh one */
  int reused;
  int stream;
  int body_fn;        /* the request body comes from a function (not replayable) */
  int body_sent;      /* the last chunk of a function's body is queued */
  uint64_t deadline;  /* the whole exchange */
  uint64_t read_ms;   /* each wait for response bytes; 0 = only the deadline */
  uint64_t connect_ms;
  char err[160];
  /* the URL, split */
  char *host, *target, *hosthdr, *method;
  int port, tls;
  int verify;
  char *ca;
  lr_h2c_stream_t *h2s; /* the exchange runs on an HTTP/2 session */
  int version;          /* opts.version: 11, 20 or 0 (h2 if ALPN picks it) */
  int refused;          /* the h2 server refused the stream unprocessed (GOAWAY, REFUSED_STREAM) */
  uint64_t idle_ms;     /* opts.keepalive_timeout: the pooled connection or idle h2 session's life */
  /* concurrent first requests to one h2 origin share one connection: the first
   * (leader) connects, the others wait in its list for the session */
  lr_link_t coal;       /* leader: in pending_h2; waiter: in the leader's waiters */
  lr_link_t waiters;
  char *coal_key;       /* leader only */
  int coal_role;        /* 0, COAL_LEADER or COAL_WAITER */
  int coalesced;        /* waited once already: connect on its own now */
  /* reverse proxy (lariat.proxy): the request whose stream is forwarded */
  lr_req_t *req;      /* kept alive by the exchange's user value */
  int proxy, chunked_up;
  lr_stunnel_t *tun;  /* an HTTP/2 client's WebSocket (RFC 8441), switched upstream: the stream tunnel */
  char ws_key[25], ws_accept[29]; /* the handshake made for it (HTTP/2 has no key) */
  const struct pxt_s *pt; /* a proxy's precompiled target: host, hosthdr, ca are its (not freed here) */
  int light;          /* no box: a light userdata at 2 (px_handler), freed at the end or at cancel */
  lr_co_t *hco;       /* a proxy route C runs without a req: the coroutine whose stream is forwarded */
  lr_buf_t scratch;   /* request body bytes on their way up */
  /* host, hosthdr, target and method live here when they fit (exch_strdup):
   * no allocation per request for them */
  size_t strs_used;
  char strs[240];
  lr_h1c_t h;         /* last: its 3 KiB header index is never cleared */
} exch_t;

/* lariat.proxy(url, opts) without `before`: everything about the upstream
 * that does not depend on the request, worked out once when the route is
 * registered (no option lookup, URL parse or copy per request). A userdata
 * without __gc: the strings and headers are in its own block, so they stay
 * valid while anything (a finaliser at lua_close included) can look. */
typedef struct pxt_s {
  const char *host, *hosthdr, *base, *ca; /* ca may be NULL */
  size_t base_len;
  int port, tls, verify, version;
  uint64_t timeout_ms, connect_ms, read_ms, idle_ms;
  size_t n_hd;       /* opts.headers, validated */
  lr_header_t *hd;
  const char *key;   /* the connection pool's key (not for a WebSocket upgrade: other ALPN) */
  uint32_t key_hash;
} pxt_t;

/* The Lua userdata is a box around a pointer: the exchange itself (3.5 KiB
 * with its header table) lives in C memory and is reused, so a request
 * costs the Lua collector a few bytes, not kilobytes. */
#define EXCH(L, i) exch_at(L, i)
#define MAX_FREE_EXCH 64
static __thread exch_t *free_exch[MAX_FREE_EXCH];
static __thread unsigned n_free_exch;

/* A proxy route's exchange has no box: nothing but its own coroutine ever
 * holds it (no response object goes to Lua), so a light userdata does, and
 * the exchange is freed when it ends or its wait is cancelled. */
static exch_t *exch_at(lua_State *L, int i) {
  void *p = lua_touserdata(L, i);
  return lua_islightuserdata(L, i) ? p : *(exch_t **)p;
}

/* ---- one connection for concurrent first requests to an h2 origin ---- */

enum { COAL_LEADER = 1, COAL_WAITER };
static __thread lr_link_t pending_h2; /* leaders connecting to an origin that may speak h2 */

static exch_t *coal_leader(const char *key) {
  if (pending_h2.next == NULL) lr_list_init(&pending_h2);
  for (lr_link_t *l = pending_h2.next; l != &pending_h2; l = l->next) {
    exch_t *ld = LR_CONTAINER_OF(l, exch_t, coal);
    if (strcmp(ld->coal_key, key) == 0) return ld;
  }
  return NULL;
}

/* the leader's connect ended (a session, h1 by ALPN, failure, cancel): its waiters try again */
static void coal_end(exch_t *ex) {
  if (ex->coal_role == COAL_WAITER) lr_link_unlink(&ex->coal);
  if (ex->coal_role == COAL_LEADER) {
    lr_link_unlink(&ex->coal);
    while (!lr_list_empty(&ex->waiters)) {
      exch_t *w = LR_CONTAINER_OF(ex->waiters.next, exch_t, coal);
      lr_link_unlink(&w->coal);
      w->coal_role = 0;
      if (w->co) lr_co_wake(w->co);
    }
    free(ex->coal_key);
    ex->coal_key = NULL;
  }
  ex->coal_role = 0;
}

/* ---- the connection's side: parse, and wake the coroutine when it can proceed ---- */

static void pump(exch_t *ex) {
  lr_client_t *cl = ex->cl;
  while (cl && cl->in.len && !ex->h.done && !ex->h.failed) {
    size_t used;
    ex->got_bytes = 1;
    int r = lr_h1c_feed(&ex->h, cl->in.base, cl->in.len, &used);
    lr_client_consume(cl, used);
    if (r < 0 || used == 0) break;
  }
  /* the server finished sending (FIN, close_notify) and all of it is parsed:
   * that ends a response framed by the close, or cuts one short */
  if (cl && cl->eof && cl->in.len == 0 && ex->phase >= PH_SEND && !ex->h.done && !ex->h.failed &&
      lr_h1c_eof(&ex->h) < 0) {
    lr_client_close(cl);
    ex->cl = NULL;
    ex->closed = 1;
    snprintf(ex->err, sizeof ex->err, "closed");
  }
}

static int worth_waking(exch_t *ex) {
  if (ex->closed || ex->h.failed || ex->h.done) return 1;
  switch (ex->phase) {
  case PH_CONNECT: return ex->cl && ex->cl->state == LR_CL_OPEN;
  case PH_SEND: return ex->h2s ? !lr_h2c_write_blocked(ex->h2s) : ex->cl && !lr_client_write_blocked(ex->cl);
  case PH_HEAD: return ex->h.headers_done;
  case PH_BODY: return ex->stream && ex->h.body.len > 0;
  }
  return 0;
}

static void exch_notify(lr_client_t *cl, int ev) {
  exch_t *ex = cl->owner;
  ex->cl = cl;
  if (ev == 0) return;
  if (ex->phase >= PH_SEND) pump(ex);
  if (ev & LR_CEV_CLOSED) {
    ex->cl = NULL;
    ex->closed = 1;
    if (ex->phase >= PH_SEND && !ex->h.done && lr_h1c_eof(&ex->h) < 0) snprintf(ex->err, sizeof ex->err, "closed");
    else if (ex->phase < PH_SEND) memcpy(ex->err, cl->err, sizeof ex->err);
  }
  if (ex->co && worth_waking(ex)) lr_co_wake(ex->co);
}

static void exch_release(exch_t *ex, int reuse) {
  coal_end(ex);
  if (ex->h2s) {
    lr_h2c_release(ex->h2s);
    ex->h2s = NULL;
  }
  if (ex->tun) {
    lr_stunnel_free(ex->tun); /* closes the upstream */
    ex->tun = NULL;
  }
  lr_client_t *cl = ex->cl;
  ex->cl = NULL;
  if (cl == NULL) return;
  if (reuse && ex->h.done && ex->h.keep_alive)
    lr_client_keepalive(cl, ex->idle_ms, POOL_SIZE);
  else
    lr_client_close(cl);
}

static void exch_h2_notify(void *owner) {
  exch_t *ex = owner;
  if (ex->h.headers_done) ex->got_bytes = 1;
  if (ex->h2s && lr_h2c_refused(ex->h2s)) ex->refused = 1;
  if (ex->h.failed && !ex->h.done && !ex->closed) {
    ex->closed = 1;
    snprintf(ex->err, sizeof ex->err, "closed");
  }
  if (ex->co && worth_waking(ex)) lr_co_wake(ex->co);
}

static void exch_free(exch_t *ex);

static void exch_cancel(lr_co_t *co, void *arg) {
  (void)co;
  exch_t *ex = arg;
  ex->co = NULL;
  exch_release(ex, 0);
  ex->closed = 1;
  snprintf(ex->err, sizeof ex->err, "closed");
  if (ex->light) exch_free(ex); /* its coroutine never resumes */
}

/* room for a string of n bytes and its NUL in ex->strs, or malloc'd if it
 * does not fit there; NULL when out of memory */
static char *exch_stralloc(exch_t *ex, size_t n) {
  if (n < sizeof ex->strs - ex->strs_used) {
    char *d = ex->strs + ex->strs_used;
    ex->strs_used += n + 1;
    return d;
  }
  return malloc(n + 1);
}

static char *exch_strdup(exch_t *ex, const char *s, size_t n) {
  char *d = exch_stralloc(ex, n);
  if (d == NULL) return NULL;
  if (n) memcpy(d, s, n);
  d[n] = 0;
  return d;
}

static void exch_strfree(exch_t *ex, char *p) {
  if (p < ex->strs || p >= ex->strs + sizeof ex->strs) free(p);
}

static void exch_free(exch_t *ex) {
  exch_release(ex, 1); /* a finished response read to its end is pooled; else closed */
  if (ex->pt == NULL) { /* a proxy route's are its target's */
    exch_strfree(ex, ex->host);
    exch_strfree(ex, ex->hosthdr);
    free(ex->ca);
  }
  exch_strfree(ex, ex->target);
  exch_strfree(ex, ex->method);
  ex->host = ex->target = ex->hosthdr = ex->method = ex->ca = NULL;
  ex->pt = NULL;
  if (n_free_exch < MAX_FREE_EXCH && ex->h.head.cap <= 16384 && ex->h.body.cap <= 65536 && ex->scratch.cap <= 65536) {
    free_exch[n_free_exch++] = ex; /* its buffers go with it */
    return;
  }
  lr_h1c_free(&ex->h);
  lr_buf_free(&ex->scratch);
  free(ex);
}

/* the box's metatable, also kept under this key: found without hashing its name */
static const char exch_mt_key = 0;

/* __gc of the box metatable only, which nothing else carries: no lookup of it by name */
static int exch_gc(lua_State *L) {
  exch_t **box = lua_touserdata(L, 1);
  if (box == NULL || lua_rawlen(L, 1) != sizeof *box) return 0;
  exch_t *ex = *box;
  if (ex == NULL) return 0;
  *box = NULL;
  exch_free(ex);
  return 0;
}

/* The exchange ended and nothing will look at it again (not a streamed
 * response, whose read function holds the box): back to the free list now
 * rather than whenever the collector gets to the box, so the next request
 * finds it there instead of allocating and clearing a fresh one. */
static void exch_done(lua_State *L, exch_t *ex) {
  if (ex->light) {
    exch_free(ex);
    return;
  }
  exch_t **box = lua_touserdata(L, 2);
  if (ex->stream && !ex->proxy) return;
  if (box && *box == ex) {
    *box = NULL;
    exch_free(ex);
  }
}

/* ---- waiting ---- */

static int fail(lua_State *L, const char *msg) {
  luaL_pushfail(L);
  lua_pushstring(L, msg);
  return 2;
}

static uint64_t now_ms(exch_t *ex) { return uv_now(&ex->w->loop); }

static int px_error(lua_State *L, exch_t *ex, const char *err);
static lr_stream_t *px_stream(exch_t *ex);

/* the exchange failed: nil, err to the caller, or for the proxy, 502/504 to the client */
static int fail_ex(lua_State *L, exch_t *ex, const char *msg) {
  if (ex->proxy) return px_error(L, ex, msg);
  exch_release(ex, 0);
  fail(L, msg); /* msg may live in ex: pushed before ex goes */
  exch_done(L, ex);
  return 2;
}

/* wait for the connection with the tighter of the deadline and the phase's own timeout */
static int exch_wait(lua_State *L, exch_t *ex, uint64_t phase_ms, lua_KFunction k) {
  uint64_t now = now_ms(ex);
  uint64_t left = ex->deadline > now ? ex->deadline - now : 1;
  if (phase_ms && phase_ms < left) left = phase_ms;
  ex->co = lr_co_current(L);
  return lr_co_wait(L, ex->co, left, exch_cancel, ex, k);
}

static exch_t *woken(lua_State *L, int *late) {
  exch_t *ex = EXCH(L, 2);
  lr_co_t *co = lr_co_current(L);
  ex->co = NULL;
  *late = co->timed_out || now_ms(ex) >= ex->deadline;
  return ex;
}

static int timed_out(lua_State *L, exch_t *ex) {
  exch_release(ex, 0);
  ex->closed = 1;
  snprintf(ex->err, sizeof ex->err, "timeout");
  return fail_ex(L, ex, "timeout");
}

/* ---- the response ---- */

/* Short strings responses repeat (header names, most values) are pushed
 * from a per-state cache rather than by lua_pushlstring, which hashes and
 * interns each one (~230 instructions): 64 slots of strings up to 16 bytes,
 * keyed by their bytes; the strings themselves sit in the cache userdata's
 * user value, so they also stay interned from one response to the next. */
#define SC_SLOTS 64
typedef struct strcache_s {
  uint64_t w[SC_SLOTS][2]; /* the bytes, zero-padded */
  uint8_t len[SC_SLOTS];   /* 0: empty slot */
} strcache_t;
static const char sc_key = 0;

typedef struct sc_s {
  strcache_t *c;
  int idx; /* stack index of the strings' table */
} sc_t;

/* pushes the strings' table (remove it at sc->idx when done) */
static void sc_open(lua_State *L, sc_t *sc) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &sc_key) == LUA_TUSERDATA) {
    sc->c = lua_touserdata(L, -1);
  } else {
    lua_pop(L, 1);
    sc->c = lua_newuserdatauv(L, sizeof *sc->c, 1);
    memset(sc->c, 0, sizeof *sc->c);
    lua_createtable(L, SC_SLOTS, 0);
    lua_setiuservalue(L, -2, 1);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &sc_key);
  }
  lua_getiuservalue(L, -1, 1);
  lua_remove(L, -2);
  sc->idx = lua_gettop(L);
}

static void sc_push(lua_State *L, sc_t *sc, const char *p, size_t n) {
  if (n == 0 || n > 16) {
    lua_pushlstring(L, p, n);
    return;
  }
  uint64_t w0 = 0, w1 = 0;
  memcpy(&w0, p, n < 8 ? n : 8);
  if (n > 8) memcpy(&w1, p + 8, n - 8);
  unsigned slot = (unsigned)(((w0 * 0x9E3779B97F4A7C15ull) ^ (w1 * 0xC2B2AE3D27D4EB4Full) ^ n) >> 58);
  strcache_t *c = sc->c;
  if (c->len[slot] == n && c->w[slot][0] == w0 && c->w[slot][1] == w1) {
    lua_rawgeti(L, sc->idx, slot + 1);
    return;
  }
  lua_pushlstring(L, p, n);
  lua_pushvalue(L, -1);
  lua_rawseti(L, sc->idx, slot + 1);
  c->len[slot] = (uint8_t)n;
  c->w[slot][0] = w0;
  c->w[slot][1] = w1;
}

/* a repeated header (set-cookie above all, which can't be comma-joined) is a
 * Lua array of its values in order, as lua-resty-http has it; once, a string.
 * Names come lowercase from both parsers. Repeats are found here, comparing
 * lengths first (a few dozen headers at most), rather than by a table lookup
 * per header. */
static void push_headers(lua_State *L, exch_t *ex) {
  unsigned nh = ex->h.n_headers - ex->h.n_trailers;
  sc_t sc;
  sc_open(L, &sc);
  lua_createtable(L, 0, (int)nh);
  for (unsigned i = 0; i < nh; i++) {
    lr_str_t n = lr_h1c_header_name(&ex->h, i), v = lr_h1c_header_value(&ex->h, i);
    unsigned j, reps = 0;
    for (j = 0; j < i; j++)
      if (ex->h.hdr[j].name_len == n.len && memcmp(lr_h1c_header_name(&ex->h, j).base, n.base, n.len) == 0) break;
    if (j < i) continue; /* in the array of its first */
    for (j = i + 1; j < nh; j++)
      if (ex->h.hdr[j].name_len == n.len && memcmp(lr_h1c_header_name(&ex->h, j).base, n.base, n.len) == 0) reps++;
    sc_push(L, &sc, n.base, n.len);
    if (reps == 0) {
      sc_push(L, &sc, v.base, v.len);
    } else {
      lua_createtable(L, (int)reps + 1, 0);
      lua_Integer k = 1;
      for (j = i; j < nh; j++) {
        if (ex->h.hdr[j].name_len != n.len || memcmp(lr_h1c_header_name(&ex->h, j).base, n.base, n.len) != 0) continue;
        v = lr_h1c_header_value(&ex->h, j);
        sc_push(L, &sc, v.base, v.len);
        lua_rawseti(L, -2, k++);
      }
    }
    lua_rawset(L, -3);
  }
  lua_remove(L, sc.idx);
}

static int res_read(lua_State *L);
static int retry_or_fail(lua_State *L, exch_t *ex);
static int px_head(lua_State *L, exch_t *ex);
static int px_send(lua_State *L, exch_t *ex, lr_h2c_t *hs);

/* res = { status=, headers=, version=, body= | read= } */
static void push_response(lua_State *L, exch_t *ex) {
  lua_createtable(L, 0, 4); /* 4: a power of 2, no room wasted */
  lua_pushinteger(L, ex->h.status);
  lua_setfield(L, -2, "status");
  push_headers(L, ex);
  lua_setfield(L, -2, "headers");
  lua_pushstring(L, ex->h.version == 20 ? "HTTP/2" : ex->h.version == 10 ? "HTTP/1.0" : "HTTP/1.1");
  lua_setfield(L, -2, "version");
  if (ex->stream) {
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, res_read, 1);
    lua_setfield(L, -2, "read");
  }
}

static int body_error(lua_State *L, exch_t *ex) {
  const char *e = ex->h.too_big                ? "body too big"
                  : ex->h2s && ex->closed       ? "closed" /* the stream was reset */
                  : ex->h.failed                ? "invalid response"
                  : ex->err[0]                  ? ex->err
                                                : "closed";
  return fail_ex(L, ex, e);
}

static int whole_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  int late;
  exch_t *ex = woken(L, &late);
  if (ex->h.done) {
    ex->phase = PH_DONE;
    lua_pushlstring(L, ex->h.body.base ? ex->h.body.base : "", ex->h.body.len);
    lua_setfield(L, -2, "body");
    ex->h.body.len = 0;
    exch_release(ex, 1);
    exch_done(L, ex);
    return 1;
  }
  if (ex->h.failed || ex->closed) return body_error(L, ex);
  if (late) return timed_out(L, ex);
  return exch_wait(L, ex, ex->read_ms, whole_k);
}

static int head_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  int late;
  exch_t *ex = woken(L, &late);
  if (ex->h.headers_done) {
    ex->phase = PH_BODY;
    lua_settop(L, 2);
    if (ex->proxy) return px_head(L, ex);
    push_response(L, ex);
    if (ex->stream) return 1;
    lr_co_current(L)->timed_out = 0;
    return whole_k(L, LUA_OK, 0);
  }
  if (ex->refused) return retry_or_fail(L, ex);
  if (ex->h.failed) return body_error(L, ex);
  if (ex->closed) return retry_or_fail(L, ex);
  if (late) return timed_out(L, ex);
  return exch_wait(L, ex, ex->read_ms, head_k);
}

/* ---- sending ---- */

static int start_exchange(lua_State *L, exch_t *ex);
static int send_body_fn(lua_State *L, exch_t *ex);
static int retry_or_fail(lua_State *L, exch_t *ex);

static int after_send(lua_State *L, exch_t *ex) {
  ex->phase = PH_HEAD;
  pump(ex);
  lua_settop(L, 2);
  if (worth_waking(ex)) { /* already there: no event would come */
    lr_co_current(L)->timed_out = 0;
    return head_k(L, LUA_OK, 0);
  }
  return exch_wait(L, ex, ex->read_ms, head_k);
}

/* a pooled connection may have been closed by the server just as we sent:
 * one more try on a fresh connection, when the request can be sent again */
static int retry_or_fail(lua_State *L, exch_t *ex) {
  if ((ex->reused || ex->refused) && !ex->got_bytes && !ex->retried && !ex->body_fn) {
    ex->retried = 1;
    ex->coalesced = 0; /* refused streams retried together share the next connection too */
    exch_release(ex, 0);
    lr_h1c_init(&ex->h, strcmp(ex->method, "HEAD") == 0, ex->stream, ex->h.max_body);
    return start_exchange(L, ex);
  }
  return fail_ex(L, ex, ex->err[0] ? ex->err : "closed");
}

static int drain_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  int late;
  exch_t *ex = woken(L, &late);
  if (ex->closed) return retry_or_fail(L, ex);
  if (ex->h2s ? lr_h2c_write_blocked(ex->h2s) : ex->cl && lr_client_write_blocked(ex->cl)) {
    if (late) return timed_out(L, ex);
    return exch_wait(L, ex, 0, drain_k);
  }
  if (ex->body_fn && !ex->body_sent) return send_body_fn(L, ex);
  return after_send(L, ex);
}

static int body_fn_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  exch_t *ex = EXCH(L, 2);
  size_t n = 0;
  const char *p = lua_tolstring(L, -1, &n);
  if (!lua_isnil(L, -1) && p == NULL) return luaL_error(L, "lariat.http.request: body function must return strings");
  if (ex->h2s ? ex->closed : ex->cl == NULL) return retry_or_fail(L, ex);
  int last = p == NULL || n == 0;
  if (ex->h2s)
    lr_h2c_write(ex->h2s, p, p ? n : 0, last);
  else
    lr_h1c_write_chunk(ex->cl, p, p ? n : 0);
  lua_settop(L, 2);
  if (last) ex->body_sent = 1;
  if (ex->h2s ? lr_h2c_write_blocked(ex->h2s) : lr_client_write_blocked(ex->cl)) return exch_wait(L, ex, 0, drain_k);
  if (last) return after_send(L, ex);
  return send_body_fn(L, ex);
}

/* body = function() → chunk | nil: called until it returns nil or "" (it may wait) */
static int send_body_fn(lua_State *L, exch_t *ex) {
  (void)ex;
  lua_settop(L, 2);
  lua_getfield(L, 1, "body");
  lua_callk(L, 0, 1, 0, body_fn_k);
  return body_fn_k(L, LUA_OK, 0);
}

/* the caller's headers, copied out of Lua (a value converted from a number
 * would otherwise be a string only the stack holds) */
/* opts[k] pushed: nil when the options are a plain URL string */
static void opt_field(lua_State *L, const char *k) {
  if (lua_type(L, 1) == LUA_TTABLE) lua_getfield(L, 1, k);
  else lua_pushnil(L);
}

static size_t collect_headers(lua_State *L, lr_buf_t *text, lr_header_t *hd, size_t max) {
  size_t off[64][4], n = 0;
  text->len = 0;
  opt_field(L, "headers");
  if (lua_istable(L, -1)) {
    lua_pushnil(L);
    while (lua_next(L, -2) && n < max && n < 64) {
      int vt = lua_type(L, -1);
      if (lua_type(L, -2) == LUA_TSTRING && (vt == LUA_TSTRING || vt == LUA_TNUMBER)) {
        size_t kl, vl;
        const char *k = lua_tolstring(L, -2, &kl);
        lua_pushvalue(L, -1);
        const char *v = lua_tolstring(L, -1, &vl);
        lr_header_t probe = {{k, kl}, {v, vl}};
        if (lr_header_valid(&probe)) {
          off[n][0] = text->len;
          off[n][1] = kl;
          lr_buf_append(text, k, kl);
          off[n][2] = text->len;
          off[n][3] = vl;
          lr_buf_append(text, v, vl);
          n++;
        }
        lua_pop(L, 1);
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  for (size_t i = 0; i < n; i++) {
    hd[i].name = (lr_str_t){text->base + off[i][0], off[i][1]};
    hd[i].value = (lr_str_t){text->base + off[i][2], off[i][3]};
  }
  return n;
}


/* the request as an HTTP/2 stream on session hs */
static int h2_submit(lua_State *L, exch_t *ex, lr_h2c_t *hs) {
  if (ex->proxy) return px_send(L, ex, hs);
  lr_header_t hd[64];
  lr_buf_t text = {0};
  size_t n = collect_headers(L, &text, hd, 64);
  opt_field(L, "body");
  size_t blen = 0;
  const char *body = lua_isstring(L, -1) ? lua_tolstring(L, -1, &blen) : NULL;
  ex->h2s = lr_h2c_request(hs, ex->method, ex->tls ? "https" : "http", ex->hosthdr, ex->target, hd, n, body, blen,
                           ex->body_fn, &ex->h, exch_h2_notify, ex);
  lr_buf_free(&text);
  lua_settop(L, 2);
  if (ex->h2s == NULL) return fail_ex(L, ex, "closed");
  if (ex->body_fn) { /* DATA frames as the function hands out chunks, under the stream's window */
    ex->phase = PH_SEND;
    return send_body_fn(L, ex);
  }
  ex->phase = PH_HEAD;
  if (worth_waking(ex)) {
    lr_co_current(L)->timed_out = 0;
    return head_k(L, LUA_OK, 0);
  }
  return exch_wait(L, ex, ex->read_ms, head_k);
}

static int send_request(lua_State *L, exch_t *ex) {
  ex->phase = PH_SEND;
  ex->body_sent = 0;
  if (ex->cl->h2 || (!ex->tls && ex->version == 20)) { /* ALPN picked h2 (or h2c by prior knowledge):
                                                          * the connection becomes this origin's session */
    lr_client_t *cl = ex->cl;
    ex->cl = NULL;
    lr_h2c_t *hs = lr_h2c_start(cl, ex->idle_ms);
    coal_end(ex); /* the waiters find the session */
    if (hs == NULL) {
      lr_client_close(cl);
      return fail_ex(L, ex, "out of memory");
    }
    return h2_submit(L, ex, hs);
  }
  coal_end(ex); /* HTTP/1.1 after all: the waiters connect on their own */
  if (ex->proxy) return px_send(L, ex, NULL);
  lr_header_t hd[64];
  lr_buf_t text = {0};
  size_t n = collect_headers(L, &text, hd, 64);
  opt_field(L, "body");
  size_t blen = 0;
  const char *body = NULL;
  if (lua_isstring(L, -1)) body = lua_tolstring(L, -1, &blen);
  int r = lr_h1c_write_head(ex->cl, ex->method, ex->target, ex->hosthdr, hd, n,
                            ex->body_fn ? -1 : (int64_t)blen);
  lr_buf_free(&text);
  if (r == 0 && blen) r = lr_client_write(ex->cl, body, blen);
  lua_settop(L, 2);
  if (r < 0) return retry_or_fail(L, ex);
  if (ex->body_fn) return send_body_fn(L, ex);
  if (lr_client_write_blocked(ex->cl)) return exch_wait(L, ex, 0, drain_k);
  return after_send(L, ex);
}

static int open_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  int late;
  exch_t *ex = woken(L, &late);
  if (ex->cl && ex->cl->state == LR_CL_OPEN) return send_request(L, ex);
  if (ex->closed) return fail_ex(L, ex, ex->err[0] ? ex->err : "closed");
  if (late) return timed_out(L, ex);
  return exch_wait(L, ex, ex->connect_ms, open_k);
}

static int coal_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  int late;
  exch_t *ex = woken(L, &late);
  if (ex->coal_role == COAL_WAITER) { /* still waiting: the connect timeout */
    coal_end(ex);
    return timed_out(L, ex);
  }
  ex->coalesced = 1;
  return start_exchange(L, ex);
}

/* the request body's length: -1 unknown (it streams), 0 none */
static int64_t px_body_len(const lr_stream_t *s) {
  int64_t blen = s->content_length;
  if (blen < 0 && (s->flags & LR_SF_BODY_DONE) && s->body.len == 0) blen = 0;
  return blen;
}

/* HTTP/2 is asked for (ALPN, or h2c by prior knowledge) unless the caller
 * pinned 1.1 or it is an Upgrade */
static int exch_want_h2(int tls, int version, int ws) {
  return tls ? version != 11 && !ws : version == 20 && !ws;
}

static const char *exch_alpn(int tls, int want_h2) {
  return tls ? (want_h2 ? "\x02h2\x08http/1.1" : "\x08http/1.1") : want_h2 ? "h2c" : NULL;
}

static int start_exchange(lua_State *L, exch_t *ex) {
  lr_client_opts_t o = {0};
  o.host = ex->host;
  o.port = ex->port;
  o.tls = ex->tls;
  o.verify = ex->verify;
  o.ca = ex->ca;
  lr_stream_t *ps = ex->proxy ? px_stream(ex) : NULL;
  int ws = ps && (ps->flags & LR_SF_WS_UPGRADE); /* an Upgrade is HTTP/1.1's */
  int want_h2 = exch_want_h2(ex->tls, ex->version, ws);
  o.alpn = exch_alpn(ex->tls, want_h2);
  if (ex->pt && !ws) { /* the route worked the pool key out once */
    o.key = ex->pt->key;
    o.key_hash = ex->pt->key_hash;
  }
  o.fresh = ex->retried && !ex->refused;
  o.replayable = !ex->body_fn && !(ps && px_body_len(ps) != 0);
  ex->closed = 0;
  ex->err[0] = 0;
  if (want_h2 && !o.fresh) { /* a session to this origin already: one more stream on it */
    char kbuf[1024]; /* on the stack: a copy only for a leader, who keeps it */
    const char *key = o.key ? o.key : lr_client_key_into(&o, kbuf, sizeof kbuf) >= 0 ? kbuf : NULL;
    lr_h2c_t *hs = key ? lr_h2c_find(ex->w, key) : NULL;
    if (hs) {
      ex->reused = 1;
      return h2_submit(L, ex, hs);
    }
    exch_t *ld = key && !ex->coalesced ? coal_leader(key) : NULL;
    if (ld) { /* its connection is on the way: wait for it rather than open another */
      ex->coal_role = COAL_WAITER;
      lr_list_push(&ld->waiters, &ex->coal);
      ex->phase = PH_CONNECT;
      lua_settop(L, 2);
      return exch_wait(L, ex, ex->connect_ms, coal_k);
    }
    if (key && (ex->coal_key = strdup(key)) != NULL) {
      ex->coal_role = COAL_LEADER;
      lr_list_init(&ex->waiters);
      lr_list_push(&pending_h2, &ex->coal);
    }
  }
  ex->phase = PH_CONNECT;
  char err[160];
  if (lr_client_open(ex->w, &o, exch_notify, ex, &ex->cl, err, sizeof err) < 0) return fail_ex(L, ex, err);
  if (ex->cl == NULL) return fail_ex(L, ex, ex->err[0] ? ex->err : "closed");
  ex->reused = ex->cl->reused;
  if (ex->cl->state == LR_CL_OPEN) return send_request(L, ex);
  lua_settop(L, 2);
  /* the connect timeout bounds this wait only; the deadline bounds all */
  uint64_t now = now_ms(ex);
  uint64_t left = ex->deadline > now ? ex->deadline - now : 1;
  if (ex->connect_ms && ex->connect_ms < left) left = ex->connect_ms;
  ex->co = lr_co_current(L);
  return lr_co_wait(L, ex->co, left, exch_cancel, ex, open_k);
}

/* ---- res:read() for stream = true ---- */

static int read_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  exch_t *ex = EXCH(L, lua_upvalueindex(1));
  lr_co_t *co = lr_co_current(L);
  ex->co = NULL;
  int late = co->timed_out || now_ms(ex) >= ex->deadline;
  if (ex->h.body.len) {
    lua_pushlstring(L, ex->h.body.base, ex->h.body.len);
    if (ex->h2s) lr_h2c_consume(ex->h2s, ex->h.body.len);
    ex->h.body.len = 0;
    pump(ex); /* room again: parse what waits in the connection */
    if (ex->h.done) exch_release(ex, 1);
    return 1;
  }
  if (ex->h.done) {
    ex->phase = PH_DONE;
    exch_release(ex, 1);
    lua_pushnil(L);
    return 1;
  }
  if (ex->h.failed || ex->closed) return body_error(L, ex);
  if (late) return timed_out(L, ex);
  uint64_t now = now_ms(ex);
  uint64_t left = ex->deadline > now ? ex->deadline - now : 1;
  if (ex->read_ms && ex->read_ms < left) left = ex->read_ms;
  ex->co = co;
  return lr_co_wait(L, co, left, exch_cancel, ex, read_k);
}

static int res_read(lua_State *L) {
  exch_t *ex = EXCH(L, lua_upvalueindex(1));
  lr_co_t *co = lr_co_current(L);
  if (co == NULL) return luaL_error(L, "res:read: only inside a handler's coroutine (or one from lariat.spawn)");
  co->timed_out = 0;
  if (ex->phase == PH_DONE && !ex->h.body.len) {
    lua_pushnil(L);
    return 1;
  }
  if (ex->h.body.len || ex->h.done || ex->h.failed || ex->closed) return read_k(L, LUA_OK, 0);
  uint64_t now = now_ms(ex);
  uint64_t left = ex->deadline > now ? ex->deadline - now : 1;
  if (ex->read_ms && ex->read_ms < left) left = ex->read_ms;
  ex->co = co;
  return lr_co_wait(L, co, left, exch_cancel, ex, read_k);
}

/* ---- reverse proxy: the request's stream up, the response down, in C ---- */

static lr_stream_t *px_stream(exch_t *ex) { return ex->req ? ex->req->s : ex->hco ? ex->hco->stream : NULL; }

/* the proxied exchange is over: the handler returns nothing (it answered) */
static int px_end(lua_State *L, exch_t *ex) {
  exch_done(L, ex);
  return 0;
}

static int px_error(lua_State *L, exch_t *ex, const char *err) {
  exch_release(ex, 0);
  lr_stream_t *s = px_stream(ex);
  lua_settop(L, 2);
  if (s == NULL || (s->flags & LR_SF_RESET)) return px_end(L, ex); /* the client left: nobody to tell */
  int status = strcmp(err, "timeout") == 0 ? 504 : 502;
  lr_log(LR_LOG_WARN, "proxy: upstream %s:%d%s: %s (%d)", ex->host, ex->port, ex->target, err, status);
  if (!(s->flags & LR_SF_REPLIED)) {
    static const lr_header_t ct = {{"content-type", 12}, {"text/plain; charset=utf-8", 25}};
    const char *body = status == 504 ? "Gateway Timeout\n" : "Bad Gateway\n";
    lr_stream_send_head(s, status, &ct, 1, body, strlen(body), NULL, NULL, LR_FIN);
  } else if (!(s->flags & LR_SF_FINISHED)) {
    lr_stream_abort(s); /* a truncated response, never a fake complete one */
  }
  return px_end(L, ex);
}

/* b is lowercase; the first byte is compared here, most names differ there */
static inline int eq_ci(lr_str_t a, const char *b) {
  size_t n = strlen(b);
  return a.len == n && n && ((unsigned char)a.base[0] | 0x20) == (unsigned char)b[0] &&
         strncasecmp(a.base, b, n) == 0;
}

/* hop-by-hop (RFC 9110 §7.6.1): the fixed ones and those the Connection header names */
static int px_hop(lr_str_t name, const lr_str_t *conn) {
  if (lr_header_is_hop_by_hop(name.base, name.len) || eq_ci(name, "te") || eq_ci(name, "trailer") ||
      eq_ci(name, "proxy-authenticate") || eq_ci(name, "proxy-authorization"))
    return 1;
  return conn && lr_token_in_list(conn->base, conn->len, name.base, name.len, 1);
}

/* a Connection value naming only what is hop-by-hop anyway (keep-alive or
 * close, nearly every one) drops nothing more: no list search per header */
static const lr_str_t *px_conn_names(const lr_str_t *conn) {
  return conn == NULL || eq_ci(*conn, "keep-alive") || eq_ci(*conn, "close") ? NULL : conn;
}

#define PX_MAX_HEADERS 128

static int px_body(lua_State *L, exch_t *ex);

static int px_body_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  int late;
  exch_t *ex = woken(L, &late);
  if (ex->closed) return fail_ex(L, ex, ex->err[0] ? ex->err : "closed");
  if (late) return timed_out(L, ex);
  return px_body(L, ex);
}

/* the request body, as it arrives, up to the upstream */
static int px_body(lua_State *L, exch_t *ex) {
  for (;;) {
    lr_stream_t *s = px_stream(ex);
    if (s == NULL) {
      exch_release(ex, 0);
      return px_end(L, ex);
    }
    if (ex->h2s ? ex->closed : ex->cl == NULL) return fail_ex(L, ex, ex->err[0] ? ex->err : "closed");
    if (ex->h2s && ex->h.done) return after_send(L, ex); /* answered already: the rest is not wanted */
    if (ex->h2s ? lr_h2c_write_blocked(ex->h2s) : lr_client_write_blocked(ex->cl))
      return exch_wait(L, ex, 0, px_body_k);
    int fin;
    ex->scratch.len = 0;
    int n = lr_stream_read_body(s, &ex->scratch, 64 * 1024, &fin);
    if (n < 0) { /* the client left, or its body passed --max-body (the core answered 413) */
      exch_release(ex, 0);
      return px_end(L, ex);
    }
    if (ex->h2s) {
      if (n > 0 || fin) lr_h2c_write(ex->h2s, ex->scratch.base, (size_t)n, fin);
    } else if (n > 0) {
      if (ex->chunked_up)
        lr_h1c_write_chunk(ex->cl, ex->scratch.base, ex->scratch.len);
      else
        lr_client_write(ex->cl, ex->scratch.base, ex->scratch.len);
    }
    if (fin) {
      if (ex->chunked_up && !ex->h2s) lr_h1c_write_chunk(ex->cl, NULL, 0);
      ex->body_sent = 1;
      return after_send(L, ex);
    }
    if (n == 0) {
      s->wait = LR_WAIT_BODY;
      return exch_wait(L, ex, 0, px_body_k);
    }
  }
}

typedef struct px_head_s {
  lr_header_t hd[PX_MAX_HEADERS];
  size_t n;
  lr_buf_t text; /* the caller's overrides */
  char peer[64], fwd[1024];
} px_head_t;

/* the request head: the client's headers minus hop-by-hop ones, plus x-forwarded-*
 * and the caller's overrides (opts.headers) */
static void px_build(lua_State *L, exch_t *ex, lr_stream_t *s, px_head_t *ph) {
  lr_header_t *hd = ph->hd;
  char *peer = ph->peer, *fwd = ph->fwd;
  lr_header_t over_buf[64];
  const lr_header_t *over = over_buf;
  ph->text = (lr_buf_t){0};
  size_t n_over;
  if (ex->pt) {
    over = ex->pt->hd;
    n_over = ex->pt->n_hd;
  } else {
    n_over = collect_headers(L, &ph->text, over_buf, 64);
  }
  const lr_str_t *conn = px_conn_names(lr_stream_header(s, "connection", 10));
  const lr_str_t *xff = lr_stream_header(s, "x-forwarded-for", 15);
  int own_key = (s->flags & LR_SF_WS_UPGRADE) && s->version == 20; /* the proxy makes the handshake's key (RFC 8441 has none) */
  size_t n = 0;
  for (unsigned i = 0; i < s->n_headers && n < PX_MAX_HEADERS - 8; i++) {
    lr_str_t name = s->headers[i].name;
    if ((name.len && name.base[0] == ':') || px_hop(name, conn) || eq_ci(name, "host") || eq_ci(name, "x-forwarded-for") ||
        eq_ci(name, "x-forwarded-proto") || eq_ci(name, "x-forwarded-host"))
      continue;
    if (own_key && eq_ci(name, "sec-websocket-key")) continue;
    int overridden = 0;
    for (size_t j = 0; j < n_over; j++)
      if (name.len == over[j].name.len && strncasecmp(name.base, over[j].name.base, name.len) == 0) overridden = 1;
    if (!overridden) hd[n++] = s->headers[i];
  }
  /* x-forwarded-for: what the client sent, then the client */
  int port;
  if (lr_stream_peer(s, peer, sizeof ph->peer, &port) != 0) memcpy(peer, "unknown", 8);
  size_t fl = 0, pl = strlen(peer); /* "<what the client sent>, <peer>", at most 1023 bytes */
  if (xff) {
    fl = xff->len < sizeof ph->fwd - 1 ? xff->len : sizeof ph->fwd - 1;
    memcpy(fwd, xff->base, fl);
    size_t k = fl + 2 < sizeof ph->fwd ? 2 : sizeof ph->fwd - 1 - fl;
    memcpy(fwd + fl, ", ", k);
    fl += k;
  }
  if (pl > sizeof ph->fwd - 1 - fl) pl = sizeof ph->fwd - 1 - fl;
  memcpy(fwd + fl, peer, pl);
  fl += pl;
  hd[n++] = (lr_header_t){{"x-forwarded-for", 15}, {fwd, fl}};
  const char *scheme = lr_stream_scheme(s);
  hd[n++] = (lr_header_t){{"x-forwarded-proto", 17}, {scheme, strlen(scheme)}};
  if (s->authority.len) hd[n++] = (lr_header_t){{"x-forwarded-host", 16}, s->authority};
  for (size_t j = 0; j < n_over && n < PX_MAX_HEADERS; j++) hd[n++] = over[j];
  if (s->flags & LR_SF_WS_UPGRADE) { /* the core hid these: a WebSocket is tunnelled */
    hd[n++] = (lr_header_t){{"connection", 10}, {"upgrade", 7}};
    hd[n++] = (lr_header_t){{"upgrade", 7}, {"websocket", 9}};
  }
  ph->n = n;
}

/* the request head up (HTTP/1.1 on ex->cl, or a stream of session hs), then its body */
static int px_send(lua_State *L, exch_t *ex, lr_h2c_t *hs) {
  lr_stream_t *s = px_stream(ex);
  if (s == NULL) {
    exch_release(ex, 0);
    return px_end(L, ex);
  }
  px_head_t ph;
  px_build(L, ex, s, &ph);
  int64_t blen = px_body_len(s);
  int r;
  if ((s->flags & LR_SF_WS_UPGRADE) && s->version == 20) {
    /* RFC 8441 → RFC 6455: the extended CONNECT goes up as a GET with Upgrade
     * (px_build added it) and a key of ours; its DATA is no request body but
     * the tunnel's, relayed once the upstream switched */
    blen = 0;
    if (lr_ws_client_key(ex->ws_key, ex->ws_accept) != 0) {
      lr_buf_free(&ph.text);
      return fail_ex(L, ex, "out of entropy");
    }
    if (ph.n < PX_MAX_HEADERS) ph.hd[ph.n++] = (lr_header_t){{"sec-websocket-key", 17}, {ex->ws_key, 24}};
  }
  if (hs) { /* no Host, no hop-by-hop: lr_h2c_request drops them */
    if (ph.n < PX_MAX_HEADERS) /* the proxy takes trailers: down to h2 clients, and h1 ones that accept them */
      ph.hd[ph.n++] = (lr_header_t){{"te", 2}, {"trailers", 8}};
    ex->phase = PH_SEND;
    ex->h2s = lr_h2c_request(hs, ex->method, ex->tls ? "https" : "http", ex->hosthdr, ex->target, ph.hd, ph.n,
                             NULL, 0, blen != 0, &ex->h, exch_h2_notify, ex);
    r = ex->h2s ? 0 : -1;
  } else {
    /* trailers (a chunked trailer section) for a client that takes them: HTTP/2,
     * or HTTP/1.1 with TE: trailers. RFC 9110 §10.1.4: TE is named in Connection */
    if ((s->version == 20 || (s->flags & LR_SF_TE_TRAILERS)) && !(s->flags & LR_SF_WS_UPGRADE) &&
        ph.n + 2 <= PX_MAX_HEADERS) {
      ph.hd[ph.n++] = (lr_header_t){{"te", 2}, {"trailers", 8}};
      ph.hd[ph.n++] = (lr_header_t){{"connection", 10}, {"te", 2}};
    }
    ex->chunked_up = blen < 0;
    r = lr_h1c_write_head(ex->cl, ex->method, ex->target, ex->hosthdr, ph.hd, ph.n, blen);
  }
  lr_buf_free(&ph.text);
  lua_settop(L, 2);
  if (r < 0) return hs ? fail_ex(L, ex, "closed") : retry_or_fail(L, ex);
  if (blen == 0) return after_send(L, ex);
  ex->body_fn = 1; /* the body is read once from the client: no retry after this */
  return px_body(L, ex);
}

static int px_resp(lua_State *L, exch_t *ex);

/* an h2 upstream's trailers (grpc-status, …): the client's side carries them if it can */
static void px_trailers(exch_t *ex, lr_stream_t *s) {
  lr_header_t hd[LR_H1C_MAX_HEADERS];
  size_t n = 0;
  for (unsigned i = ex->h.n_headers - ex->h.n_trailers; i < ex->h.n_headers; i++) {
    lr_str_t name = lr_h1c_header_name(&ex->h, i);
    if (!px_hop(name, NULL)) hd[n++] = (lr_header_t){name, lr_h1c_header_value(&ex->h, i)};
  }
  lr_stream_send_trailers(s, hd, n);
}

static int px_resp_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  exch_t *ex = EXCH(L, 2);
  lr_co_t *co = lr_co_current(L);
  ex->co = NULL;
  if (co->timed_out && !ex->h.body.len && !ex->h.done && !ex->closed && !ex->h.failed) return timed_out(L, ex);
  return px_resp(L, ex);
}

/* the response body down to the client, as fast as the client takes it */
static int px_resp(lua_State *L, exch_t *ex) {
  for (;;) {
    lr_stream_t *s = px_stream(ex);
    if (s == NULL || (s->flags & LR_SF_RESET)) {
      exch_release(ex, 0);
      return px_end(L, ex);
    }
    if (ex->h.body.len) {
      if (lr_stream_write_blocked(s)) {
        s->wait = LR_WAIT_DRAIN;
        ex->co = lr_co_current(L);
        return lr_co_wait(L, ex->co, 0, exch_cancel, ex, px_resp_k);
      }
      lr_stream_send_data(s, ex->h.body.base, ex->h.body.len, NULL, NULL);
      if (ex->h2s) lr_h2c_consume(ex->h2s, ex->h.body.len);
      ex->h.body.len = 0;
      pump(ex);
      continue;
    }
    if (ex->h.done) {
      if (ex->h.n_trailers) px_trailers(ex, s);
      else lr_stream_finish(s);
      exch_release(ex, 1);
      return px_end(L, ex);
    }
    if (ex->h.failed || ex->closed) return body_error(L, ex);
    return exch_wait(L, ex, ex->read_ms, px_resp_k);
  }
}

/* ---- WebSocket for HTTP/2 clients: the stream tunnel (core/tunnel.c) ---- */

static void px_tunnel_wake(void *arg) {
  exch_t *ex = arg;
  if (ex->co) lr_co_wake(ex->co);
}

static int px_tunnel(lua_State *L, exch_t *ex);

static int px_tunnel_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  exch_t *ex = EXCH(L, 2);
  lr_co_t *co = lr_co_current(L);
  ex->co = NULL;
  if (co->stopping) { /* the server stops: the stream ends after what is queued, like the HTTP/1.1 tunnel */
    lr_stream_t *s = px_stream(ex);
    if (s && s->conn && !(s->flags & (LR_SF_FINISHED | LR_SF_RESET))) lr_stream_finish(s);
    exch_release(ex, 0);
    return px_end(L, ex);
  }
  return px_tunnel(L, ex);
}

/* the handler's coroutine stays with the tunnel: no timeout (WebSockets idle
 * for long), woken by either side, cancelled with the stream */
static int px_tunnel(lua_State *L, exch_t *ex) {
  if (lr_stunnel_pump(ex->tun)) {
    exch_release(ex, 0);
    return px_end(L, ex);
  }
  ex->co = lr_co_current(L);
  return lr_co_wait(L, ex->co, 0, exch_cancel, ex, px_tunnel_k);
}

/* the upstream answered 101 to the handshake made for an HTTP/2 client: checked
 * (RFC 6455 §4.1: upgrade websocket, our accept), the client's CONNECT gets 200
 * with the upstream's other headers (subprotocol, extensions), then the tunnel */
static int px_ws_h2(lua_State *L, exch_t *ex, lr_stream_t *s, lr_header_t *hd, size_t n) {
  int upgrade = 0, accepted = 0;
  unsigned nh = ex->h.n_headers - ex->h.n_trailers;
  for (unsigned i = 0; i < nh; i++) {
    lr_str_t name = lr_h1c_header_name(&ex->h, i), v = lr_h1c_header_value(&ex->h, i);
    if (eq_ci(name, "upgrade")) upgrade = lr_token_in_list(v.base, v.len, "websocket", 9, 1);
    if (eq_ci(name, "sec-websocket-accept")) accepted = v.len == 28 && memcmp(v.base, ex->ws_accept, 28) == 0;
  }
  if (!upgrade || !accepted) return fail_ex(L, ex, "bad upgrade");
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (!eq_ci(hd[i].name, "sec-websocket-accept")) hd[k++] = hd[i];
  if (lr_stream_send_head(s, 200, hd, k, NULL, 0, NULL, NULL, 0) != 0) {
    exch_release(ex, 0);
    return px_end(L, ex);
  }
  lr_client_t *cl = ex->cl;
  ex->cl = NULL;
  ex->tun = lr_stunnel_start(s, cl, px_tunnel_wake, ex);
  if (ex->tun == NULL) {
    lr_client_close(cl);
    lr_stream_abort(s);
    return px_end(L, ex);
  }
  return px_tunnel(L, ex);
}

static int px_head(lua_State *L, exch_t *ex) {
  lr_stream_t *s = px_stream(ex);
  if (s == NULL || (s->flags & LR_SF_RESET)) {
    exch_release(ex, 0);
    return px_end(L, ex);
  }
  lr_header_t hd[LR_H1C_MAX_HEADERS];
  size_t n = 0;
  lr_str_t conn = {0};
  unsigned nh = ex->h.n_headers - ex->h.n_trailers;
  for (unsigned i = 0; i < nh; i++)
    if (eq_ci(lr_h1c_header_name(&ex->h, i), "connection")) conn = lr_h1c_header_value(&ex->h, i);
  const lr_str_t *named = px_conn_names(conn.len ? &conn : NULL);
  for (unsigned i = 0; i < nh && n < LR_H1C_MAX_HEADERS - 2; i++) {
    lr_str_t name = lr_h1c_header_name(&ex->h, i);
    if (px_hop(name, named) || eq_ci(name, "date")) continue;
    hd[n++] = (lr_header_t){name, lr_h1c_header_value(&ex->h, i)};
  }
  if (ex->h.status == 101) {
    lr_client_t *cl = ex->cl;
    if ((s->flags & LR_SF_WS_UPGRADE) && s->version == 20 && cl && !ex->h.failed) return px_ws_h2(L, ex, s, hd, n);
    if ((s->flags & LR_SF_WS_UPGRADE) && cl && !ex->h.failed) {
      hd[n++] = (lr_header_t){{"upgrade", 7}, {"websocket", 9}};
      hd[n++] = (lr_header_t){{"connection", 10}, {"Upgrade", 7}};
      ex->cl = NULL; /* the tunnel owns it now */
      if (lr_tunnel_start(s, cl, hd, n) == 0) return px_end(L, ex);
      ex->cl = cl;
    }
    return fail_ex(L, ex, "bad upgrade");
  }
  /* an HTTP/2 client takes a 2xx for "switched": the upstream's other answers (4xx, …) pass */
  if ((s->flags & LR_SF_WS_UPGRADE) && s->version == 20 && ex->h.status < 300) return fail_ex(L, ex, "bad upgrade");
  if (ex->h.done && !ex->h.n_trailers) { /* all of it is here: one write, with content-length */
    lr_stream_send_head(s, ex->h.status, hd, n, ex->h.body.base, ex->h.body.len, NULL, NULL, LR_FIN);
    ex->h.body.len = 0;
    exch_release(ex, 1);
    return px_end(L, ex);
  }
  lr_stream_send_head(s, ex->h.status, hd, n, NULL, 0, NULL, NULL, 0);
  return px_resp(L, ex);
}

/* ---- lariat.http.request{...} ---- */

/* http[s]://host[:port][/path?query] */
static int parse_url(exch_t *ex, const char *url, char *err, size_t errlen) {
  const char *p;
  if (strncasecmp(url, "http://", 7) == 0) {
    p = url + 7;
    ex->tls = 0;
    ex->port = 80;
  } else if (strncasecmp(url, "https://", 8) == 0) {
    p = url + 8;
    ex->tls = 1;
    ex->port = 443;
  } else {
    snprintf(err, errlen, "bad url (want http:// or https://)");
    return -1;
  }
  const char *end = p + strcspn(p, "/?#");
  const char *hs = p, *he;
  const char *portp = NULL;
  if (*p == '[') {
    hs = p + 1;
    he = memchr(hs, ']', (size_t)(end - hs));
    if (he == NULL) goto bad;
    if (he + 1 < end && he[1] == ':') portp = he + 2;
  } else {
    he = memchr(p, ':', (size_t)(end - p));
    if (he) portp = he + 1;
    else he = end;
  }
  if (he == hs) goto bad;
  if (portp) {
    char *pe;
    long v = strtol(portp, &pe, 10);
    if (pe != end || v <= 0 || v > 65535) goto bad;
    ex->port = (int)v;
  }
  ex->host = exch_strdup(ex, hs, (size_t)(he - hs));
  ex->hosthdr = exch_strdup(ex, p, (size_t)(end - p));
  const char *path = end;
  size_t plen = strcspn(path, "#");
  if (plen == 0 || path[0] != '/') {
    ex->target = exch_stralloc(ex, 1 + plen);
    if (ex->target) {
      ex->target[0] = '/';
      memcpy(ex->target + 1, path, plen);
      ex->target[plen + 1] = 0;
    }
  } else {
    ex->target = exch_strdup(ex, path, plen);
  }
  if (!ex->host || !ex->hosthdr || !ex->target) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  return 0;
bad:
  snprintf(err, errlen, "bad url");
  return -1;
}

/* seconds (the value on top) → ms; 0 or less: 0 (none) */
static uint64_t opt_ms(lua_State *L) {
  lua_Number t = luaL_checknumber(L, -1);
  uint64_t v = t > 0 ? (uint64_t)(t * 1000 + 0.5) : 0;
  return t > 0 && v == 0 ? 1 : v;
}

typedef struct opts_s {
  const char *url, *method;
  uint64_t max_body, timeout;
} opts_t;

/* the options table at 1, in one pass over what it holds rather than a
 * lookup per option (a call sets a few of a dozen): defaults set first */
static void read_opts(lua_State *L, exch_t *ex, int proxy, opts_t *o) {
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    size_t kl;
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &kl) : NULL;
    int t = lua_type(L, -1);
#define KEY(s) (kl == sizeof s - 1 && memcmp(k, s, sizeof s - 1) == 0)
    if (k == NULL || t == LUA_TNIL) {
    } else if (KEY("url") || KEY("method")) { /* strings only: they are used after the loop, as the table holds them */
      if (t != LUA_TSTRING) luaL_error(L, "lariat.http.request: %s must be a string", k);
      *(k[0] == 'u' ? &o->url : &o->method) = lua_tostring(L, -1);
    } else if (KEY("body")) {
      if (t != LUA_TSTRING && t != LUA_TFUNCTION) luaL_error(L, "lariat.http.request: body must be a string or a function");
      ex->body_fn = t == LUA_TFUNCTION;
    } else if (KEY("verify")) {
      ex->verify = lua_toboolean(L, -1);
    } else if (KEY("ca")) {
      free(ex->ca);
      ex->ca = strdup(luaL_checkstring(L, -1));
    } else if (KEY("stream")) {
      if (!proxy) ex->stream = lua_toboolean(L, -1);
    } else if (KEY("version")) {
      const char *v = luaL_checkstring(L, -1);
      ex->version = strcmp(v, "2") == 0 || strcmp(v, "2.0") == 0 ? 20 : strcmp(v, "1.1") == 0 ? 11 : 0;
    } else if (KEY("max_body")) {
      o->max_body = (uint64_t)luaL_checkinteger(L, -1);
    } else if (KEY("timeout")) {
      o->timeout = opt_ms(L);
    } else if (KEY("connect_timeout")) {
      ex->connect_ms = opt_ms(L);
    } else if (KEY("read_timeout")) {
      ex->read_ms = opt_ms(L);
    } else if (KEY("keepalive_timeout")) {
      ex->idle_ms = opt_ms(L);
    }
#undef KEY
    lua_pop(L, 1);
  }
}

/* a cleared exchange (from this thread's free list when it can) for coroutine co */
static exch_t *exch_alloc(lua_State *L, lr_co_t *co) {
  exch_t *ex = n_free_exch ? free_exch[--n_free_exch] : calloc(1, sizeof *ex);
  if (ex == NULL) {
    luaL_error(L, "out of memory");
    return NULL;
  }
  lr_buf_t scratch = ex->scratch;
  memset(ex, 0, offsetof(exch_t, strs)); /* lr_h1c_init does h later and keeps its buffers */
  ex->scratch = scratch;
  ex->scratch.len = 0;
  ex->w = co->app->lw->w;
  return ex;
}

/* the exchange from the options table at 1 (or a URL string: a plain GET),
 * pushed at 2. The proxy's: the stack is opts, req, path_info; the box goes
 * in at 2 and req becomes its user value (kept alive with it); method is the
 * request's */
static exch_t *exch_new(lua_State *L, int proxy, const lr_str_t *method) {
  int plain = !proxy && lua_type(L, 1) == LUA_TSTRING;
  if (!plain) luaL_checktype(L, 1, LUA_TTABLE);
  lr_co_t *co = lr_co_current(L);
  if (co == NULL) luaL_error(L, "lariat.http.request: only inside a handler's coroutine (or one from lariat.spawn)");
  lua_settop(L, proxy ? 3 : 1);
  exch_t **box = lua_newuserdatauv(L, sizeof *box, proxy); /* the proxy's holds req */
  *box = NULL;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &exch_mt_key);
  lua_setmetatable(L, -2);
  if (proxy) {
    lua_rotate(L, 2, 1);
    lua_pushvalue(L, 3);
    lua_setiuservalue(L, 2, 1);
  }
  exch_t *ex = exch_alloc(L, co);
  *box = ex;
  /* a proxy has no deadline for the whole exchange (bodies may be long) but
   * bounds each wait for the upstream, as nginx's proxy_*_timeout do */
  opts_t o = {NULL, NULL, DEFAULT_MAX_BODY, proxy ? 24 * 3600 * 1000 : DEFAULT_TIMEOUT_MS};
  ex->verify = 1;
  ex->stream = proxy;
  ex->connect_ms = ex->read_ms = proxy ? 60000 : 0;
  ex->idle_ms = POOL_IDLE_MS;
  if (plain) o.url = lua_tostring(L, 1);
  else read_opts(L, ex, proxy, &o);
  if (o.url == NULL) luaL_error(L, "lariat.http.request: url must be a string");
  char err[160];
  if (parse_url(ex, o.url, err, sizeof err)) {
    luaL_error(L, "lariat.http.request: %s: %s", err, o.url);
    return NULL;
  }
  size_t ml = method ? method->len : o.method ? strlen(o.method) : 3;
  ex->method = exch_strdup(ex, method ? method->base : o.method ? o.method : "GET", ml);
  if (ex->method == NULL) luaL_error(L, "out of memory");
  for (char *m = ex->method; *m; m++)
    if (*m >= 'a' && *m <= 'z') *m = (char)(*m - 32);
  ex->deadline = uv_now(&ex->w->loop) + o.timeout;
  lr_h1c_init(&ex->h, strcmp(ex->method, "HEAD") == 0, ex->stream, o.max_body);
  return ex;
}

int lr_l_http_request(lua_State *L) {
  exch_t *ex = exch_new(L, 0, NULL);
  return start_exchange(L, ex);
}

/* the upstream target of the proxy whose options have base (the upstream URL's
 * path): the request's own target for none, else base followed by path_info
 * (nginx proxy_pass with a URI) or alone on a route without `*`, then the query */
static char *px_target(exch_t *ex, lr_stream_t *st, const char *base, size_t bl, const char *info, size_t il) {
  size_t ql = st->query.len;
  if (bl == 0) {
    base = st->target.base; /* the request's own target, query included */
    bl = st->target.len;
    info = NULL;
    ql = 0;
  }
  if (info && bl && base[bl - 1] == '/' && il && info[0] == '/') {
    info++;
    il--;
  }
  if (info == NULL) il = 0;
  size_t n = bl + il + (ql ? ql + 1 : 0);
  char *t = exch_stralloc(ex, n);
  if (t == NULL) return NULL;
  memcpy(t, base, bl);
  if (il) memcpy(t + bl, info, il);
  if (ql) {
    t[bl + il] = '?';
    memcpy(t + bl + il + 1, st->query.base, ql);
  }
  t[n] = 0;
  return t;
}

/* core.http_proxy(req, opts[, path_info]): the handler lariat.proxy builds.
 * opts: url (the upstream; its path is the target unless base is set),
 * base, same_target, headers, timeout, connect_timeout, read_timeout,
 * verify, ca. The same opts table serves every request when no `before`
 * hook edits it: nothing is built per request in Lua. */
int lr_l_http_proxy(lua_State *L) {
  lr_req_t *r = luaL_checkudata(L, 1, LR_REQ_MT);
  luaL_checktype(L, 2, LUA_TTABLE);
  lr_stream_t *st = r->s;
  if (st == NULL) return 0; /* the client is gone already */
  lua_settop(L, 3);
  lua_rotate(L, 1, 1); /* path_info, req, opts */
  lua_insert(L, 1);    /* opts, path_info, req */
  lua_insert(L, 2);    /* opts, req, path_info */
  exch_t *ex = exch_new(L, 1, &st->method);
  ex->proxy = 1;
  ex->req = r;
  ex->h.max_body = 0; /* --max-body bounds what clients send, not what upstreams answer */
  char *target = NULL;
  if (lua_getfield(L, 1, "base") == LUA_TSTRING) {
    size_t bl, il = 0;
    const char *base = lua_tolstring(L, -1, &bl);
    const char *info = lua_type(L, 4) == LUA_TSTRING ? lua_tolstring(L, 4, &il) : NULL;
    target = px_target(ex, st, base, bl, info, il);
  } else {
    lua_getfield(L, 1, "same_target");
    if (lua_toboolean(L, -1)) target = strndup(st->target.base, st->target.len);
  }
  lua_settop(L, 2);
  if (target) {
    exch_strfree(ex, ex->target);
    ex->target = target;
  }
  return start_exchange(L, ex);
}

/* the exchange of proxy route pt for stream st (of request r, or of
 * coroutine co's own when C runs the route without a req), info its
 * path_info or NULL; the stack is then 1 (r or anything), 2 the exchange */
static int px_start(lua_State *L, lr_co_t *co, lr_req_t *r, lr_stream_t *st, const pxt_t *pt, const char *info,
                    size_t il) {
  exch_t *ex = exch_alloc(L, co);
  ex->light = 1;
  ex->pt = pt;
  ex->host = (char *)pt->host;
  ex->hosthdr = (char *)pt->hosthdr;
  ex->ca = (char *)pt->ca;
  ex->port = pt->port;
  ex->tls = pt->tls;
  ex->verify = pt->verify;
  ex->version = pt->version;
  ex->proxy = ex->stream = 1;
  ex->req = r;
  ex->hco = r ? NULL : co;
  size_t ml = st->method.len;
  ex->method = exch_stralloc(ex, ml);
  ex->target = px_target(ex, st, pt->base, pt->base_len, info, il);
  if (ex->method == NULL || ex->target == NULL) {
    exch_free(ex);
    return luaL_error(L, "out of memory");
  }
  for (size_t i = 0; i < ml; i++) {
    char c = st->method.base[i];
    ex->method[i] = (char)(c >= 'a' && c <= 'z' ? c - 32 : c);
  }
  ex->method[ml] = 0;
  ex->deadline = uv_now(&ex->w->loop) + pt->timeout_ms;
  ex->connect_ms = pt->connect_ms;
  ex->read_ms = pt->read_ms;
  ex->idle_ms = pt->idle_ms;
  lr_h1c_init(&ex->h, ml == 4 && memcmp(ex->method, "HEAD", 4) == 0, 1, 0);
  lua_settop(L, 1); /* path_info is in the target now */
  lua_pushlightuserdata(L, ex);
  return start_exchange(L, ex);
}

/* the handler lariat.proxy(url, opts) returns without `before`: handler(req)
 * with the target (pxt_t) as its upvalue. The Lua router runs it as it runs
 * any handler; it reads nothing from Lua but path_info, and that from the
 * request's path when C matched the route. */
static int px_handler(lua_State *L) {
  lr_req_t *r = luaL_checkudata(L, 1, LR_REQ_MT);
  lr_stream_t *st = r->s;
  if (st == NULL) return 0; /* the client is gone already */
  lr_co_t *co = lr_co_current(L);
  if (co == NULL) return luaL_error(L, "lariat.proxy: only inside a handler's coroutine");
  const pxt_t *pt = lua_touserdata(L, lua_upvalueindex(1));
  lua_settop(L, 1);
  const char *info = NULL;
  size_t il = 0;
  if (r->pi_len >= 0) {
    info = st->path.base + r->pi_off;
    il = (size_t)r->pi_len;
  } else if (pt->base_len) {
    lua_getfield(L, 1, "path_info"); /* set by the router in Lua; held at 2 while used */
    info = lua_tolstring(L, 2, &il);
  }
  return px_start(L, co, r, st, pt, info, il);
}

/* see bindings.h */
const void *lr_http_proxy_target(lua_State *L, int idx) {
  if (lua_tocfunction(L, idx) != px_handler || lua_getupvalue(L, idx, 1) == NULL) return NULL;
  const void *pt = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return pt;
}

int lr_http_proxy_run(lua_State *L, const void *pt, int pi_off, int pi_len) {
  lr_co_t *co = lr_co_current(L);
  lr_stream_t *st = co ? co->stream : NULL;
  if (st == NULL) return 0;
  const char *info = pi_len >= 0 ? st->path.base + pi_off : NULL;
  return px_start(L, co, NULL, st, pt, info, pi_len >= 0 ? (size_t)pi_len : 0);
}

/* core.http_proxy_handler(url, base, opts) → handler(req): url is the
 * upstream's origin and "/", base its path ("" for none) */
static int l_proxy_handler(lua_State *L) {
  luaL_checkstring(L, 1);
  size_t bl;
  const char *base = luaL_checklstring(L, 2, &bl);
  if (lua_isnoneornil(L, 3)) {
    lua_settop(L, 2);
    lua_newtable(L);
  }
  luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  lua_rotate(L, 1, 1); /* opts, url, base: read_opts and collect_headers read opts at 1 */
  /* the URL and options read as an exchange's (exch_new's defaults), in a
   * userdata: collected, whatever raises (its strings fit its own arena) */
  exch_t *u = lua_newuserdatauv(L, sizeof *u, 0);
  memset(u, 0, sizeof *u);
  char err[160];
  if (parse_url(u, lua_tostring(L, 2), err, sizeof err))
    return luaL_error(L, "lariat.proxy: %s: %s", err, lua_tostring(L, 2));
  opts_t uo = {NULL, NULL, 0, 24 * 3600 * 1000};
  u->verify = 1;
  u->connect_ms = u->read_ms = 60000;
  u->idle_ms = POOL_IDLE_MS;
  read_opts(L, u, 1, &uo); /* a bad option raises here, once */
  pxt_t t = {0};
  t.verify = u->verify;
  const char *ca = u->ca;
  t.version = u->version;
  t.timeout_ms = uo.timeout;
  t.connect_ms = u->connect_ms;
  t.read_ms = u->read_ms;
  t.idle_ms = u->idle_ms;
  t.port = u->port;
  t.tls = u->tls;
  t.base_len = bl;
  lr_buf_t text = {0};
  lr_header_t over[64];
  t.n_hd = collect_headers(L, &text, over, 64);
  lr_client_opts_t o = {.host = u->host, .port = u->port, .tls = u->tls, .verify = t.verify, .ca = ca};
  o.alpn = exch_alpn(o.tls, exch_want_h2(o.tls, t.version, 0));
  char kbuf[1024];
  int kl = lr_client_key_into(&o, kbuf, sizeof kbuf);
  if (kl < 0) kbuf[kl = 0] = 0; /* too long: no key kept, worked out per request */
  size_t hl = strlen(u->host) + 1, hhl = strlen(u->hosthdr) + 1, cal = ca ? strlen(ca) + 1 : 0;
  size_t size = sizeof t + t.n_hd * sizeof(lr_header_t) + hl + hhl + bl + 1 + cal + (size_t)kl + 1 + text.len;
  pxt_t *pt = lua_newuserdatauv(L, size, 0);
  char *p = (char *)(pt + 1) + t.n_hd * sizeof(lr_header_t);
  t.hd = (lr_header_t *)(pt + 1);
  t.host = memcpy(p, u->host, hl), p += hl;
  t.hosthdr = memcpy(p, u->hosthdr, hhl), p += hhl;
  t.base = memcpy(p, base, bl + 1), p += bl + 1;
  if (ca) t.ca = memcpy(p, ca, cal), p += cal;
  if (kl) t.key = memcpy(p, kbuf, (size_t)kl + 1), t.key_hash = lr_client_key_hash(kbuf);
  p += kl + 1;
  if (text.len) memcpy(p, text.base, text.len);
  for (size_t i = 0; i < t.n_hd; i++) {
    t.hd[i].name = (lr_str_t){p + (over[i].name.base - text.base), over[i].name.len};
    t.hd[i].value = (lr_str_t){p + (over[i].value.base - text.base), over[i].value.len};
  }
  *pt = t;
  lr_buf_free(&text);
  exch_strfree(u, u->host); /* a long URL's parts did not fit the arena */
  exch_strfree(u, u->hosthdr);
  exch_strfree(u, u->target);
  free(u->ca);
  lua_pushcclosure(L, px_handler, 1);
  return 1;
}

/* the reuse cache of this thread, once its last app's state is closed */
void lr_http_cache_free(void) {
  while (n_free_exch) {
    exch_t *ex = free_exch[--n_free_exch];
    lr_h1c_free(&ex->h);
    lr_buf_free(&ex->scratch);
    free(ex);
  }
}

void lr_http_open(lua_State *L) {
  if (luaL_newmetatable(L, EXCH_MT)) {
    lua_pushcfunction(L, exch_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_rawsetp(L, LUA_REGISTRYINDEX, &exch_mt_key);
  lua_pushcfunction(L, lr_l_http_request);
  lua_setfield(L, -2, "http_request");
  lua_pushcfunction(L, lr_l_http_proxy);
  lua_setfield(L, -2, "http_proxy");
  lua_pushcfunction(L, l_proxy_handler);
  lua_setfield(L, -2, "http_proxy_handler");
}
