/* The ws userdata and the WebSocket handshake.
 *
 * The handshake runs when dispatch answers "websocket", handler, opts: the
 * request is checked (RFC 6455 §4.2.1), the subprotocol and permessage-deflate
 * are negotiated, the core answers 101 and takes the connection, and the
 * scheduler runs handler(ws, req) in the same coroutine, which holds its app
 * version for as long as the socket is open.
 *
 * Waiting (recv, send under back-pressure) is a wait queue on the box: the
 * core's notify callback wakes it. The box outlives the connection; once the
 * handler returns, every method answers nil, "closed". */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bindings.h"

#define LR_WS_MT "lariat.ws"

typedef struct wsbox_s {
  lr_ws_t *ws;       /* NULL once released */
  lr_link_t readers; /* coroutines in recv/each */
  lr_link_t writers; /* coroutines waiting for the output to drain */
  int ref;           /* registry reference while the handler runs */
  lr_co_t *co;       /* the handler's coroutine while it runs */
  int code;          /* close code kept after release */
  char reason[124];
  size_t reason_len;
} wsbox_t;

static wsbox_t *check_box(lua_State *L, int idx) { return luaL_checkudata(L, idx, LR_WS_MT); }

static void splice(lr_link_t *from, lr_link_t *to) {
  lr_list_init(to);
  if (from->next == NULL || lr_list_empty(from)) return;
  to->next = from->next;
  to->prev = from->prev;
  to->next->prev = to;
  to->prev->next = to;
  lr_list_init(from);
}

/* from the core, in a loop callback: wake whoever waits for what happened.
 * Both lists are taken before anyone runs (a handler that ends may free the box) */
static int in_list(lr_link_t *q, lr_link_t *x) {
  for (lr_link_t *l = q->next; l != q; l = l->next)
    if (l == x) return 1;
  return 0;
}

static void on_ws_event(lr_ws_t *ws, int ev) {
  wsbox_t *b = lr_ws_app_data(ws);
  lr_link_t r, w;
  lr_list_init(&r);
  lr_list_init(&w);
  if (ev & (LR_WS_EV_MESSAGE | LR_WS_EV_CLOSED)) splice(&b->readers, &r);
  if (ev & (LR_WS_EV_DRAIN | LR_WS_EV_CLOSED)) splice(&b->writers, &w);
  /* the connection ended while its handler waits for something else (a
   * channel, a sleep): the handler is cancelled there; waiting on this
   * WebSocket it is told nil, "closed" instead */
  if ((ev & LR_WS_EV_CLOSED) && b->co && b->co->waiting && !in_list(&r, &b->co->wq) && !in_list(&w, &b->co->wq))
    lr_co_abandon(b->co);
  lr_wq_wake_all(&r);
  lr_wq_wake_all(&w);
}

static void release(wsbox_t *b) {
  if (b->ws == NULL) return;
  const char *r;
  size_t n;
  b->code = lr_ws_close_info(b->ws, &r, &n);
  if (n > sizeof b->reason) n = sizeof b->reason;
  memcpy(b->reason, r, n);
  b->reason_len = n;
  lr_ws_app_release(b->ws);
  b->ws = NULL;
}

static int push_closed(lua_State *L, wsbox_t *b) {
  int code = b->code ? b->code : 1006;
  const char *reason = b->reason;
  size_t n = b->reason_len;
  if (b->ws) code = lr_ws_close_info(b->ws, &reason, &n);
  luaL_pushfail(L);
  lua_pushliteral(L, "closed");
  lua_pushinteger(L, code);
  lua_pushlstring(L, reason, n);
  return 4;
}

static lr_co_t *waiting_co(lua_State *L, const char *what) {
  lr_co_t *co = lr_co_current(L);
  if (co == NULL || co->L != L || !lua_isyieldable(L))
    luaL_error(L, "ws:%s: can only wait inside a handler's coroutine (or one from lariat.spawn)", what);
  return co;
}

/* ---- recv / each ---- */

static uint64_t timeout_ms(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return 0;
  lua_Number t = luaL_checknumber(L, idx);
  return t <= 0 ? 1 : (uint64_t)(t * 1000 + 0.5);
}

/* returns results, or -1 to wait */
static int recv_now(lua_State *L, wsbox_t *b, int each) {
  if (b->ws == NULL) return each ? 0 : push_closed(L, b);
  int kind;
  const char *d;
  size_t n;
  int r = lr_ws_recv(b->ws, &kind, &d, &n);
  if (r == 1) {
    lua_pushlstring(L, d, n);
    lr_ws_consume(b->ws);
    lua_pushstring(L, kind == LR_WS_TEXT ? "text" : "binary");
    return 2;
  }
  if (r < 0) return each ? 0 : push_closed(L, b);
  return -1;
}

static int recv_k(lua_State *L, int status, lua_KContext ctx) {
  lr_co_t *co = lr_co_current(L);
  lr_link_unlink(&co->wq);
  wsbox_t *b = check_box(L, 1);
  int n = recv_now(L, b, 0);
  if (n >= 0) return n;
  if (co->timed_out) {
    co->timed_out = 0;
    luaL_pushfail(L);
    lua_pushliteral(L, "timeout");
    return 2;
  }
  return lr_wq_wait(L, co, &b->readers, timeout_ms(L, 2), recv_k);
}

/* ws:recv([timeout]) → msg, "text"|"binary" | nil, "closed", code, reason | nil, "timeout" */
static int m_recv(lua_State *L) {
  wsbox_t *b = check_box(L, 1);
  lua_settop(L, 2);
  uint64_t t = timeout_ms(L, 2);
  int n = recv_now(L, b, 0);
  if (n >= 0) return n;
  return lr_wq_wait(L, waiting_co(L, "recv"), &b->readers, t, recv_k);
}

static int each_k(lua_State *L, int status, lua_KContext ctx) {
  lr_co_t *co = lr_co_current(L);
  lr_link_unlink(&co->wq);
  wsbox_t *b = check_box(L, 1);
  int n = recv_now(L, b, 1);
  if (n >= 0) return n;
  return lr_wq_wait(L, co, &b->readers, 0, each_k);
}

static int each_iter(lua_State *L) {
  lua_settop(L, 0);
  lua_pushvalue(L, lua_upvalueindex(1));
  wsbox_t *b = check_box(L, 1);
  int n = recv_now(L, b, 1);
  if (n >= 0) return n;
  return lr_wq_wait(L, waiting_co(L, "each"), &b->readers, 0, each_k);
}

/* for msg, kind in ws:each() do ... end — ends when the connection closes */
static int m_each(lua_State *L) {
  check_box(L, 1);
  lua_settop(L, 1);
  lua_pushcclosure(L, each_iter, 1);
  return 1;
}

/* ---- send / ping / close ---- */

static int send_k(lua_State *L, int status, lua_KContext ctx) {
  lr_co_t *co = lr_co_current(L);
  lr_link_unlink(&co->wq);
  wsbox_t *b = check_box(L, 1);
  /* the message was queued, but the connection ended before it drained */
  if (b->ws == NULL || !lr_ws_can_send(b->ws)) return push_closed(L, b);
  if (lr_ws_write_blocked(b->ws)) return lr_wq_wait(L, co, &b->writers, 0, send_k);
  lua_pushboolean(L, 1);
  return 1;
}

/* ws:send(data[, "text"|"binary"]): without a kind, valid UTF-8 goes as text */
static int m_send(lua_State *L) {
  wsbox_t *b = check_box(L, 1);
  size_t n;
  const char *d = luaL_checklstring(L, 2, &n);
  static const char *const kinds[] = {"text", "binary", NULL};
  int kind;
  if (lua_isnoneornil(L, 3)) {
    kind = lr_utf8_valid(d, n) ? LR_WS_TEXT : LR_WS_BINARY;
  } else {
    kind = luaL_checkoption(L, 3, NULL, kinds) == 0 ? LR_WS_TEXT : LR_WS_BINARY;
    if (kind == LR_WS_TEXT && !lr_utf8_valid(d, n)) return luaL_argerror(L, 2, "text message is not valid UTF-8");
  }
  lua_settop(L, 3);
  if (b->ws == NULL || lr_ws_send(b->ws, kind, d, n) != 0) return push_closed(L, b);
  if (lr_ws_write_blocked(b->ws)) {
    lr_co_t *co = lr_co_current(L);
    if (co && co->L == L && lua_isyieldable(L)) return lr_wq_wait(L, co, &b->writers, 0, send_k);
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int m_ping(lua_State *L) {
  wsbox_t *b = check_box(L, 1);
  size_t n;
  const char *d = luaL_optlstring(L, 2, "", &n);
  if (n > 125) return luaL_argerror(L, 2, "ping payload over 125 bytes");
  if (b->ws == NULL || lr_ws_ping(b->ws, d, n) != 0) return push_closed(L, b);
  lua_pushboolean(L, 1);
  return 1;
}

/* ws:close([code[, reason]]): starts the closing handshake; recv then returns
 * nil, "closed" once queued messages are read */
static int m_close(lua_State *L) {
  wsbox_t *b = check_box(L, 1);
  lua_Integer code = luaL_optinteger(L, 2, 1000);
  size_t n;
  const char *r = luaL_optlstring(L, 3, "", &n);
  if (!((code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999)))
    return luaL_argerror(L, 2, "not a close code an endpoint may send");
  if (n > 123) return luaL_argerror(L, 3, "close reason over 123 bytes");
  if (!lr_utf8_valid(r, n)) return luaL_argerror(L, 3, "close reason is not valid UTF-8");
  if (b->ws == NULL || lr_ws_close(b->ws, (int)code, r, n) != 0) return push_closed(L, b);
  lua_pushboolean(L, 1);
  return 1;
}

static int m_gc(lua_State *L) {
  wsbox_t *b = luaL_checkudata(L, 1, LR_WS_MT);
  release(b);
  return 0;
}

static int m_tostring(lua_State *L) {
  wsbox_t *b = check_box(L, 1);
  lua_pushstring(L, b->ws ? "ws (open)" : "ws (closed)");
  return 1;
}

/* methods, then the fields set at the handshake (protocol, extensions) */
static int m_index(lua_State *L) {
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  lua_pop(L, 1);
  wsbox_t *b = check_box(L, 1);
  const char *k = lua_tostring(L, 2);
  if (k && strcmp(k, "closed") == 0) {
    lua_pushboolean(L, b->ws == NULL || !lr_ws_can_send(b->ws));
    return 1;
  }
  lua_getiuservalue(L, 1, 1);
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  return 1;
}

static const luaL_Reg methods[] = {
    {"recv", m_recv}, {"each", m_each}, {"send", m_send}, {"ping", m_ping}, {"close", m_close}, {NULL, NULL},
};

/* ---- the handshake ---- */

static void reply(lr_stream_t *s, int status, const char *msg, int version_hint) {
  lr_header_t h[2] = {{{"content-type", 12}, {"text/plain; charset=utf-8", 25}},
                      {{"sec-websocket-version", 21}, {"13", 2}}};
  lr_stream_send_head(s, status, h, version_hint ? 2 : 1, msg, strlen(msg), NULL, NULL, LR_FIN);
}

/* RFC 6455 §4.2.1 item 5: base64 of 16 bytes */
static int key_ok(const lr_str_t *k) {
  if (k == NULL || k->len != 24 || k->base[22] != '=' || k->base[23] != '=') return 0;
  for (size_t i = 0; i < 22; i++) {
    char c = k->base[i];
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/'))
      return 0;
  }
  return 1;
}

/* all values of a (possibly repeated) header, comma-joined into buf */
static size_t header_list(lr_stream_t *s, const char *name, char *buf, size_t cap) {
  size_t nl = strlen(name), len = 0;
  for (unsigned i = 0; i < s->n_headers; i++) {
    const lr_header_t *h = &s->headers[i];
    if (h->name.len != nl || memcmp(h->name.base, name, nl) != 0) continue;
    if (len + h->value.len + 2 >= cap) break;
    if (len) buf[len++] = ',';
    memcpy(buf + len, h->value.base, h->value.len);
    len += h->value.len;
  }
  buf[len] = '\0';
  return len;
}

/* subprotocol tokens are case-sensitive (RFC 6455 §4.1) */
static int has_item(const char *list, size_t len, const char *tok, size_t tl) {
  return lr_token_in_list(list, len, tok, tl, 0);
}

static lua_Number opt_num(lua_State *L, int t, const char *k, lua_Number def) {
  if (!lua_istable(L, t)) return def;
  lua_getfield(L, t, k);
  lua_Number v = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : def;
  lua_pop(L, 1);
  return v;
}

static int opt_bool(lua_State *L, int t, const char *k, int def) {
  if (!lua_istable(L, t)) return def;
  lua_getfield(L, t, k);
  int v = lua_isnil(L, -1) ? def : lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

/* opts.origins: a list of allowed origins, or fn(origin, req) → truthy */
static int origin_ok(lua_State *L, int opts, lr_stream_t *s) {
  if (!lua_istable(L, opts)) return 1;
  int t = lua_getfield(L, opts, "origins");
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    return 1;
  }
  const lr_str_t *o = lr_stream_header(s, "origin", 6);
  int ok = 0;
  if (t == LUA_TTABLE) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= n && !ok; i++) {
      lua_rawgeti(L, -1, i);
      size_t l;
      const char *v = lua_tolstring(L, -1, &l);
      if (v && o && ((l == 1 && v[0] == '*') || (l == o->len && strncasecmp(v, o->base, l) == 0))) ok = 1;
      lua_pop(L, 1);
    }
  } else {
    if (o)
      lua_pushlstring(L, o->base, o->len);
    else
      lua_pushnil(L);
    lua_pushvalue(L, 1);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
      lr_log(LR_LOG_ERROR, "websocket origins check failed: %s", lua_tostring(L, -1));
      ok = 0;
    } else {
      ok = lua_toboolean(L, -1);
    }
  }
  lua_pop(L, 1);
  return ok;
}

int lr_ws_handshake(lr_co_t *co) {
  lua_State *L = co->L;
  lr_stream_t *s = co->stream;
  lua_settop(L, 4);
  const int opts = 4;
  if (s->conn == NULL) return 0;
  int h2 = s->version == 20; /* RFC 8441: extended CONNECT with :protocol websocket */
  if ((s->version != 11 && !h2) || !(s->flags & LR_SF_WS_UPGRADE)) {
    reply(s, 426, "this resource speaks WebSocket: send upgrade: websocket\n", 1);
    return 0;
  }
  if (!h2 && (s->method.len != 3 || memcmp(s->method.base, "GET", 3) != 0)) {
    reply(s, 400, "a WebSocket handshake is a GET request\n", 0);
    return 0;
  }
  const lr_str_t *ver = lr_stream_header(s, "sec-websocket-version", 21);
  if (ver == NULL || ver->len != 2 || memcmp(ver->base, "13", 2) != 0) {
    reply(s, 426, "unsupported sec-websocket-version\n", 1);
    return 0;
  }
  const lr_str_t *key = lr_stream_header(s, "sec-websocket-key", 17);
  if (!h2 && !key_ok(key)) {
    reply(s, 400, "bad sec-websocket-key\n", 0);
    return 0;
  }
  if (!origin_ok(L, opts, s)) {
    reply(s, 403, "origin not allowed\n", 0);
    return 0;
  }
  lr_header_t h[5];
  size_t nh = 0;
  char accept[32];
  if (!h2) { /* h2 has no key and no upgrade headers (RFC 8441 §5) */
    lr_ws_accept_key(key->base, key->len, accept);
    h[nh++] = (lr_header_t){{"upgrade", 7}, {"websocket", 9}};
    h[nh++] = (lr_header_t){{"connection", 10}, {"upgrade", 7}};
    h[nh++] = (lr_header_t){{"sec-websocket-accept", 20}, {accept, 28}};
  }
  /* subprotocol: the server's first choice among those the client offered */
  char offered[1024];
  size_t olen = header_list(s, "sec-websocket-protocol", offered, sizeof offered);
  const char *proto = NULL;
  size_t plen = 0;
  if (olen && lua_istable(L, opts) && lua_getfield(L, opts, "protocols") == LUA_TTABLE) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= n && proto == NULL; i++) {
      lua_rawgeti(L, -1, i);
      size_t l;
      const char *v = lua_tolstring(L, -1, &l);
      if (v && l && has_item(offered, olen, v, l)) {
        proto = v; /* stays alive: the protocols table is on the stack */
        plen = l;
      }
      lua_pop(L, 1);
    }
  }
  if (proto) h[nh++] = (lr_header_t){{"sec-websocket-protocol", 22}, {proto, plen}};
  /* options */
  lr_ws_opts_t wo;
  memset(&wo, 0, sizeof wo);
  wo.max_message = (uint64_t)opt_num(L, opts, "max_message", 16 << 20);
  wo.ping_interval_ms = (uint64_t)(opt_num(L, opts, "ping_interval", 30) * 1000);
  wo.max_pings = (unsigned)opt_num(L, opts, "max_pings", 100);
  wo.max_queued = (size_t)opt_num(L, opts, "max_queued", 1 << 20);
  char ext[256];
  int deflate = 0;
  int comp_t = lua_istable(L, opts) ? lua_getfield(L, opts, "compress") : LUA_TNIL;
  int want = comp_t == LUA_TNIL || comp_t == LUA_TTABLE || (comp_t == LUA_TBOOLEAN && lua_toboolean(L, -1));
  int ct = lua_gettop(L);
  wo.compress_threshold = (size_t)opt_num(L, ct, "threshold", 64);
  if (want) {
    wo.server_max_window_bits = (int)opt_num(L, ct, "server_max_window_bits", 0);
    wo.client_max_window_bits = (int)opt_num(L, ct, "client_max_window_bits", 0);
    wo.server_no_context_takeover = opt_bool(L, ct, "server_no_context_takeover", 0);
    wo.client_no_context_takeover = opt_bool(L, ct, "client_no_context_takeover", 0);
    char offers[1024];
    size_t el = header_list(s, "sec-websocket-extensions", offers, sizeof offers);
    if (el && lr_ws_negotiate_deflate(offers, el, &wo, ext, sizeof ext)) {
      deflate = 1;
      h[nh++] = (lr_header_t){{"sec-websocket-extensions", 24}, {ext, strlen(ext)}};
    }
  }
  wo.deflate = deflate;
  lr_ws_t *ws = lr_ws_accept(s, h, nh, &wo);
  if (ws == NULL) {
    if (s->conn && !(s->flags & LR_SF_REPLIED)) reply(s, 503, "Service Unavailable\n", 0);
    return 0;
  }
  /* the ws userdata; its user value holds the negotiated fields */
  wsbox_t *b = lua_newuserdatauv(L, sizeof *b, 1);
  memset(b, 0, sizeof *b);
  lr_list_init(&b->readers);
  lr_list_init(&b->writers);
  b->ws = ws;
  luaL_setmetatable(L, LR_WS_MT);
  int bi = lua_gettop(L);
  lua_createtable(L, 0, 2);
  if (proto) {
    lua_pushlstring(L, proto, plen);
    lua_setfield(L, -2, "protocol");
  }
  if (deflate) {
    lua_pushstring(L, ext);
    lua_setfield(L, -2, "extensions");
  }
  lua_setiuservalue(L, bi, 1);
  lr_ws_set_app(ws, on_ws_event, b);
  lua_pushvalue(L, bi);
  b->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  co->ws = b;
  b->co = co;
  /* stack: req, handler, ws, req */
  lua_pushvalue(L, 3);
  lua_pushvalue(L, bi);
  lua_pushvalue(L, 1);
  lua_rotate(L, 2, 3);
  lua_settop(L, 4);
  return 1;
}

void lr_ws_box_event(void *box) {
  wsbox_t *b = box;
  if (b->ws) lr_ws_stream_event(b->ws);
}

void lr_ws_handler_done(lr_co_t *co, int ok) {
  wsbox_t *b = co->ws;
  co->ws = NULL;
  if (b == NULL) return;
  b->co = NULL;
  if (b->ws) {
    if (ok)
      lr_ws_close(b->ws, 1000, "", 0);
    else
      lr_ws_close(b->ws, 1011, "handler error", 13);
    release(b);
  }
  lr_link_t r, w;
  splice(&b->readers, &r);
  splice(&b->writers, &w);
  luaL_unref(co->app->L, LUA_REGISTRYINDEX, b->ref);
  lr_wq_wake_all(&r);
  lr_wq_wake_all(&w);
}

int lr_channel_open(lua_State *L);

void lr_ws_open(lua_State *L) {
  if (luaL_newmetatable(L, LR_WS_MT)) {
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_pushcclosure(L, m_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, m_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, m_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "ws");
    lua_setfield(L, -2, "__name");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, lr_l_spawn);
  lua_setfield(L, -2, "spawn");
  lr_channel_open(L);
}
