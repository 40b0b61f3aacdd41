/* Files as response bodies, for Lua: req:sendfile(path[, opts]),
 * core.file_info(path, valid, root) (what lariat.static asks before it
 * answers) and core.file_memo / file_memo_send (the response lariat.static
 * learnt for a path, sent again in one call). All go through the worker's
 * open-file cache (core/file.c).
 *
 * Plain HTTP/1.x: the core sends the file with sendfile(2). TLS and HTTP/2
 * can't: the file is read from the page cache without waiting
 * (preadv2 RWF_NOWAIT) or else on libuv's thread pool (uv_fs_read), never
 * blocking the loop, and sent like req:write sends, in pieces of the output buffer's size
 * with the same back-pressure; a body up to WHOLE_MAX is read whole and sent
 * with a content-length, a larger one is streamed. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* preadv2, RWF_NOWAIT */
#endif
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "bindings.h"

#define WHOLE_MAX (1024 * 1024) /* read at once below this (lariat.static's max_buffer) */
#define VALID_MS 2000           /* open-file cache validity by default */

typedef struct rd_s {
  uv_fs_t fs;
  lr_co_t *co;   /* NULL once the wait was cancelled: the read's callback frees */
  lr_file_t *f;
  char *buf;
  size_t have, want; /* bytes in buf, bytes of this piece */
  uint64_t pos, left; /* file offset of the next read; bytes still to send */
  int inflight, whole, status;
  ssize_t err;
} rd_t;

static lr_lworker_t *lw_of(lua_State *L) {
  lr_app_t *app;
  lua_getallocf(L, (void **)&app);
  return app->lw;
}

static int push_err(lua_State *L, int err) {
  luaL_pushfail(L);
  switch (err) {
    case UV_ENOENT: case UV_ENOTDIR: lua_pushliteral(L, "not found"); break;
    case UV_EACCES: case UV_EPERM: lua_pushliteral(L, "permission denied"); break;
    case UV_EISDIR: lua_pushliteral(L, "is a directory"); break;
    case UV_EINVAL: lua_pushliteral(L, "not a regular file"); break;
    default: lua_pushstring(L, uv_strerror(err)); break;
  }
  return 2;
}

static uint64_t valid_ms(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return VALID_MS;
  lua_Number v = luaL_checknumber(L, idx);
  return v <= 0 ? 0 : (uint64_t)(v * 1000);
}

static int under(const char *real, const char *root, size_t rl) {
  if (rl == 1 && root[0] == '/') return real[0] == '/';
  return strncmp(real, root, rl) == 0 && (real[rl] == '\0' || real[rl] == '/');
}

/* core.file_info(path[, valid_s[, root]]) → "file", size, mtime | "directory" | nil, err.
 * With root (a real path), a file whose real path lies outside it is "not found". */
static int l_file_info(lua_State *L) {
  size_t len, rl = 0;
  const char *path = luaL_checklstring(L, 1, &len);
  uint64_t valid = valid_ms(L, 2);
  const char *root = luaL_optlstring(L, 3, NULL, &rl);
  lr_file_t *f;
  int r = lr_file_open(lw_of(L)->w, path, len, valid, &f);
  if (r == UV_EISDIR) { /* not cached: directories are asked for rarely (redirects, index files) */
    char *real = root ? realpath(path, NULL) : NULL;
    int ok = root == NULL || (real && under(real, root, rl));
    free(real);
    if (!ok) return push_err(L, UV_ENOENT);
    lua_pushliteral(L, "directory");
    return 1;
  }
  if (r) return push_err(L, r);
  if (root && f->real == NULL) f->real = realpath(f->path, NULL); /* kept while dev/ino stay the same */
  if (root && (f->real == NULL || !under(f->real, root, rl))) {
    lr_file_unref(f);
    return push_err(L, UV_ENOENT);
  }
  lua_pushliteral(L, "file");
  lua_pushinteger(L, (lua_Integer)f->size);
  lua_pushinteger(L, (lua_Integer)(f->mtime_ns / 1000000000));
  lr_file_unref(f);
  return 3;
}

/* does the request carry range, if-range, if-none-match or if-modified-since?
 * (one scan in C instead of building req.headers) */
static int conditional(const lr_stream_t *s) {
  for (unsigned i = 0; s && i < s->n_headers; i++) {
    const lr_str_t *n = &s->headers[i].name;
    if ((n->len == 5 && memcmp(n->base, "range", 5) == 0) || (n->len == 8 && memcmp(n->base, "if-range", 8) == 0) ||
        (n->len == 13 && memcmp(n->base, "if-none-match", 13) == 0) ||
        (n->len == 17 && memcmp(n->base, "if-modified-since", 17) == 0))
      return 1;
  }
  return 0;
}

/* ---- reading for TLS and HTTP/2 ---- */

static void rd_free(rd_t *rd) {
  lr_file_unref(rd->f);
  free(rd->buf);
  free(rd);
}

static void on_read(uv_fs_t *fs) {
  rd_t *rd = fs->data;
  ssize_t n = fs->result;
  uv_fs_req_cleanup(fs);
  rd->inflight = 0;
  if (rd->co == NULL) {
    rd_free(rd);
    return;
  }
  if (n <= 0) {
    rd->err = n < 0 ? n : UV_EIO; /* 0: the file shrank under us */
  } else {
    rd->have += (size_t)n;
    rd->pos += (uint64_t)n;
  }
  lr_co_wake(rd->co);
}

static void rd_cancel(lr_co_t *co, void *arg) {
  (void)co;
  rd_t *rd = arg;
  if (rd->inflight) {
    rd->co = NULL; /* on_read frees */
    uv_cancel((uv_req_t *)&rd->fs);
  } else {
    rd_free(rd);
  }
}

static int pump_k(lua_State *L, int status, lua_KContext ctx);

/* A read of what the page cache holds, on the loop: RWF_NOWAIT returns
 * EAGAIN rather than wait for the disk, so the loop never blocks, and a
 * cached file (the usual case) costs no thread-pool handoff, which on a
 * worker pinned to one core is two context switches and a contended lock
 * per piece. What isn't cached (or a file system without RWF_NOWAIT) goes
 * to the thread pool as before. */
static ssize_t read_cached(int fd, char *p, size_t n, uint64_t pos) {
#ifdef RWF_NOWAIT
  struct iovec iov = {p, n};
  ssize_t r;
  do r = preadv2(fd, &iov, 1, (off_t)pos, RWF_NOWAIT);
  while (r < 0 && errno == EINTR);
  return r;
#else
  (void)fd, (void)p, (void)n, (void)pos;
  return -1;
#endif
}

/* done (or failed): frees rd, returns the Lua results */
static int rd_end(lua_State *L, rd_t *rd, lr_req_t *r, int ok) {
  lr_stream_t *s = r->s;
  ssize_t err = rd->err;
  rd_free(rd);
  lua_pushnil(L);
  lua_replace(L, 4);
  if (ok) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (s && s->conn && (s->flags & LR_SF_REPLIED)) lr_stream_abort(s); /* a truncated body, not a short one */
  if (err) {
    luaL_pushfail(L);
    lua_pushfstring(L, "read failed: %s", uv_strerror((int)err));
    return 2;
  }
  return lr_req_closed(L, r);
}

static int pump(lua_State *L) {
  lr_req_t *r = luaL_checkudata(L, 1, LR_REQ_MT);
  rd_t *rd = lua_touserdata(L, 4);
  lr_co_t *co = lr_co_current(L);
  lr_stream_t *s = r->s;
  for (;;) {
    if (rd->inflight) return lr_co_wait(L, co, 0, rd_cancel, rd, pump_k); /* woken for another reason */
    if (rd->err || s == NULL || s->conn == NULL) return rd_end(L, rd, r, 0);
    if (rd->have < rd->want && rd->whole) {
      /* keep reading: a read may return less than asked */
    } else if (rd->whole) {
      lr_header_t *h;
      size_t n = lr_req_head_fields(L, s, 3, &h);
      char *buf = rd->buf;
      rd->buf = NULL;
      int rc = lr_stream_send_head(s, rd->status, h, n, buf, rd->have, free, buf, LR_FIN);
      return rd_end(L, rd, r, rc == 0);
    } else if (rd->have) {
      char *buf = rd->buf;
      size_t n = rd->have;
      rd->buf = NULL;
      rd->have = 0;
      rd->left -= n;
      if (lr_stream_send_data(s, buf, n, free, buf)) return rd_end(L, rd, r, 0);
      if (rd->left == 0) return rd_end(L, rd, r, lr_stream_finish(s) == 0);
      if (lr_stream_write_blocked(s)) {
        s->wait = LR_WAIT_DRAIN;
        return lr_co_wait(L, co, 0, rd_cancel, rd, pump_k);
      }
    } else if (lr_stream_write_blocked(s)) {
      s->wait = LR_WAIT_DRAIN;
      return lr_co_wait(L, co, 0, rd_cancel, rd, pump_k);
    }
    if (!rd->whole) rd->want = rd->left < LR_OUT_HIGH ? (size_t)rd->left : LR_OUT_HIGH;
    if (rd->buf == NULL && (rd->buf = malloc(rd->want ? rd->want : 1)) == NULL) {
      rd->err = UV_ENOMEM;
      continue;
    }
    ssize_t got = read_cached(rd->f->fd, rd->buf + rd->have, rd->want - rd->have, rd->pos);
    if (got > 0) {
      rd->have += (size_t)got;
      rd->pos += (uint64_t)got;
      continue;
    }
    if (got == 0) { /* the file shrank under us */
      rd->err = UV_EIO;
      continue;
    }
    uv_buf_t b = uv_buf_init(rd->buf + rd->have, (unsigned)(rd->want - rd->have));
    rd->fs.data = rd;
    int e = uv_fs_read(&lw_of(L)->w->loop, &rd->fs, rd->f->fd, &b, 1, (int64_t)rd->pos, on_read);
    if (e) {
      rd->err = e;
      continue;
    }
    rd->inflight = 1;
    return lr_co_wait(L, co, 0, rd_cancel, rd, pump_k);
  }
}

static int pump_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return pump(L);
}

/* ---- req:sendfile ---- */

static lua_Integer opt_int(lua_State *L, int t, const char *k, lua_Integer def) {
  if (lua_getfield(L, t, k) == LUA_TNIL) {
    lua_pop(L, 1);
    return def;
  }
  lua_Integer v = luaL_checkinteger(L, -1);
  lua_pop(L, 1);
  return v;
}

/* req:sendfile(path[, {status=200, headers=, offset=0, length=, valid=2}]) → true | nil, err
 * A complete response whose body is the file (or length bytes of it from
 * offset); content-type and validators are the caller's to set. */
static int m_sendfile(lua_State *L) {
  lr_req_t *r = luaL_checkudata(L, 1, LR_REQ_MT);
  size_t len;
  const char *path = luaL_checklstring(L, 2, &len);
  lua_settop(L, 3);
  int status = 200;
  lua_Integer off = 0, want = -1;
  uint64_t valid = VALID_MS;
  if (!lua_isnil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    status = (int)opt_int(L, 3, "status", 200);
    off = opt_int(L, 3, "offset", 0);
    want = opt_int(L, 3, "length", -1);
    lua_getfield(L, 3, "valid");
    valid = valid_ms(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, 3, "headers");
    lua_replace(L, 3);
  }
  if (status < 200 || status > 599) return luaL_argerror(L, 3, "status out of range (200..599)");
  if (!lua_isnil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  lr_stream_t *s = r->s;
  if (s == NULL) return luaL_error(L, "request is finished");
  if (s->flags & LR_SF_REPLIED) return luaL_error(L, "req:sendfile: response already sent");
  if (s->conn == NULL) return lr_req_closed(L, r);
  lr_file_t *f;
  int e = lr_file_open(s->worker, path, len, valid, &f);
  if (e) return push_err(L, e);
  if (off < 0 || (uint64_t)off > f->size || (want >= 0 && (uint64_t)want > f->size - (uint64_t)off)) {
    lr_file_unref(f);
    luaL_pushfail(L);
    lua_pushliteral(L, "range outside the file");
    return 2;
  }
  uint64_t n = want >= 0 ? (uint64_t)want : f->size - (uint64_t)off;
  int rc;
  if (lr_stream_can_sendfile(s) || n == 0 || (s->flags & LR_SF_HEAD) || !lr_status_has_body(status)) {
    lr_header_t *h;
    size_t nh = lr_req_head_fields(L, s, 3, &h);
    if (lr_stream_can_sendfile(s))
      rc = lr_stream_send_file(s, status, h, nh, f, (uint64_t)off, n, 0);
    else /* no body to read: the length goes out as the content-length */
      rc = lr_stream_send_head(s, status, h, nh, NULL, (size_t)n, NULL, NULL, LR_FIN);
    lr_file_unref(f);
    if (rc == LR_ECLOSED) return lr_req_closed(L, r);
    if (rc) return luaL_error(L, "req:sendfile: %s", uv_strerror(rc));
    lua_pushboolean(L, 1);
    return 1;
  }
  lr_co_t *co = lr_co_current(L);
  if (co == NULL || co->L != L || !lua_isyieldable(L)) {
    lr_file_unref(f);
    return luaL_error(L, "req:sendfile: can't wait outside a request coroutine");
  }
  rd_t *rd = calloc(1, sizeof *rd);
  if (rd == NULL) {
    lr_file_unref(f);
    return luaL_error(L, "out of memory");
  }
  rd->co = co;
  rd->f = f;
  rd->pos = (uint64_t)off;
  rd->left = n;
  rd->status = status;
  rd->whole = n <= WHOLE_MAX;
  if (rd->whole) rd->want = (size_t)n;
  lua_pushlightuserdata(L, rd); /* 4: the read, across yields */
  if (!rd->whole) {
    /* a streamed body: the head goes first (its fields are used at once) */
    lr_header_t *h;
    size_t nh = lr_req_head_fields(L, s, 3, &h);
    rc = lr_stream_send_head(s, status, h, nh, NULL, 0, NULL, NULL, 0);
    if (rc) return rd_end(L, rd, r, 0);
  }
  return pump(L);
}

/* ---- a file lariat.static served whole, with its response ready ---- */

/* core.file_memo(path, valid_s, siblings, headers) → memo | nil
 * core.file_memo_send(req, memo) → true (out, or the client is gone) |
 *   false (not for this request: another method, a conditional or range
 *   request, a compressing middleware around) | nil, err (the file or its
 *   siblings changed: forget the memo) | req:sendfile's results
 * The memo is what lariat.static learnt on the slow path: which file (its
 * identity, not a reference: the open-file cache alone decides how long a
 * descriptor stays open), the precompressed siblings that were missing, and
 * the response's header fields, checked once. A plain HTTP/1.1 GET of it is
 * then one cache lookup and sendfile: no Lua table, no string built. The
 * siblings are looked at again once the memo is `valid` old, as the cache
 * looks at a file (a sibling appearing is seen as late as a file changing). */
#define MEMO_MT "lariat.file_memo"
#define MEMO_FIELDS 8
#define MEMO_SIBLINGS 4

typedef struct memo_s {
  uint64_t size, dev, ino;
  int64_t mtime_ns;
  uint64_t checked, valid; /* loop ms of the last sibling check; validity */
  const char *path;        /* the memo's user value 1 keeps the string */
  size_t path_len;
  unsigned n_sib, n_h;
  lr_str_t sib[MEMO_SIBLINGS];
  lr_header_t h[MEMO_FIELDS];
  char *mem; /* sibling paths and field values */
} memo_t;

static int memo_gc(lua_State *L) {
  memo_t *m = lua_touserdata(L, 1);
  free(m->mem);
  m->mem = NULL;
  return 0;
}

/* the fields lariat.static sets: lowercase names, so they go out as given */
static int name_ok(const char *n, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (!((n[i] >= 'a' && n[i] <= 'z') || n[i] == '-')) return 0;
  return len > 0;
}

static int value_ok(const char *v, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (v[i] == '\r' || v[i] == '\n' || v[i] == '\0') return 0;
  return 1;
}

static int l_file_memo(lua_State *L) {
  size_t len;
  const char *path = luaL_checklstring(L, 1, &len);
  uint64_t valid = valid_ms(L, 2);
  luaL_checktype(L, 4, LUA_TTABLE);
  int has_sib = !lua_isnoneornil(L, 3);
  if (has_sib) luaL_checktype(L, 3, LUA_TTABLE);
  /* sizes first: one block for every string */
  size_t need = 0;
  unsigned n_sib = has_sib ? (unsigned)lua_rawlen(L, 3) : 0, n_h = 0;
  if (n_sib > MEMO_SIBLINGS) return luaL_pushfail(L), 1;
  for (unsigned i = 1; i <= n_sib; i++) {
    if (lua_rawgeti(L, 3, i) != LUA_TSTRING) return luaL_argerror(L, 3, "paths expected");
    need += lua_rawlen(L, -1) + 1;
    lua_pop(L, 1);
  }
  lua_pushnil(L);
  while (lua_next(L, 4)) {
    size_t vl;
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING || n_h == MEMO_FIELDS) {
      lua_pop(L, 2);
      return luaL_pushfail(L), 1; /* anything unusual: req:sendfile's checks */
    }
    size_t nl;
    const char *n = lua_tolstring(L, -2, &nl), *v = lua_tolstring(L, -1, &vl);
    if (!name_ok(n, nl) || !value_ok(v, vl)) {
      lua_pop(L, 2);
      return luaL_pushfail(L), 1;
    }
    need += nl + vl + 2;
    n_h++;
    lua_pop(L, 1);
  }
  lr_file_t *f;
  if (lr_file_open(lw_of(L)->w, path, len, valid, &f)) return luaL_pushfail(L), 1;
  memo_t *m = lua_newuserdatauv(L, sizeof *m, 2);
  memset(m, 0, sizeof *m);
  luaL_setmetatable(L, MEMO_MT);
  m->size = f->size;
  m->mtime_ns = f->mtime_ns;
  m->dev = f->dev;
  m->ino = f->ino;
  m->checked = uv_now(&lw_of(L)->w->loop);
  m->valid = valid;
  lr_file_unref(f);
  char *p = m->mem = malloc(need ? need : 1);
  if (p == NULL) return luaL_error(L, "out of memory");
  for (unsigned i = 1; i <= n_sib; i++, m->n_sib++) {
    size_t n;
    lua_rawgeti(L, 3, i);
    const char *sp = lua_tolstring(L, -1, &n);
    memcpy(p, sp, n + 1);
    m->sib[m->n_sib] = (lr_str_t){p, n};
    p += n + 1;
    lua_pop(L, 1);
  }
  lua_pushnil(L);
  while (lua_next(L, 4)) {
    size_t nl, vl;
    const char *n = lua_tolstring(L, -2, &nl), *v = lua_tolstring(L, -1, &vl);
    lr_header_t *h = &m->h[m->n_h++];
    h->name = (lr_str_t){p, nl};
    memcpy(p, n, nl);
    p += nl + 1;
    memcpy(p, v, vl);
    h->value = (lr_str_t){p, vl};
    p += vl + 1;
    lua_pop(L, 1);
  }
  lua_pushvalue(L, 1);
  m->path = lua_tolstring(L, -1, &m->path_len);
  lua_setiuservalue(L, -2, 1);
  /* req:sendfile's options, for the connections that can't sendfile */
  lua_createtable(L, 0, 2);
  lua_pushvalue(L, 4);
  lua_setfield(L, -2, "headers");
  lua_pushvalue(L, 2);
  lua_setfield(L, -2, "valid");
  lua_setiuservalue(L, -2, 2);
  return 1;
}

static int is_get_or_head(const lr_str_t *m) {
  return (m->len == 3 && memcmp(m->base, "GET", 3) == 0) || (m->len == 4 && memcmp(m->base, "HEAD", 4) == 0);
}

/* is the file still the one the memo was made from, siblings still missing? */
static int memo_current(memo_t *m, lr_worker_t *w, lr_file_t **out) {
  lr_file_t *f;
  if (lr_file_open(w, m->path, m->path_len, m->valid, &f)) return 0;
  if (f->size != m->size || f->mtime_ns != m->mtime_ns || f->ino != m->ino || f->dev != m->dev) {
    lr_file_unref(f);
    return 0;
  }
  uint64_t now = uv_now(&w->loop);
  if (now - m->checked >= m->valid) {
    for (unsigned i = 0; i < m->n_sib; i++) {
      lr_file_t *z;
      if (lr_file_open(w, m->sib[i].base, m->sib[i].len, m->valid, &z) == 0) {
        lr_file_unref(z);
        lr_file_unref(f);
        return 0;
      }
    }
    m->checked = now;
  }
  *out = f;
  return 1;
}

/* the userdata at idx if its metatable is upvalue up: luaL_checkudata
 * without looking the metatable up by name (a third of this call's cost) */
static void *check_ud(lua_State *L, int idx, int up, const char *what) {
  void *p = lua_touserdata(L, idx);
  if (p && lua_getmetatable(L, idx)) {
    int ok = lua_rawequal(L, -1, lua_upvalueindex(up));
    lua_pop(L, 1);
    if (ok) return p;
  }
  luaL_typeerror(L, idx, what);
  return NULL;
}

/* upvalues: the req metatable, the memo metatable, "would_compress",
 * "\1resp_headers" (req's user value keys, interned once) */
static int l_file_memo_send(lua_State *L) {
  lr_req_t *r = check_ud(L, 1, 1, "req");
  memo_t *m = check_ud(L, 2, 2, "memo");
  lr_stream_t *s = r->s;
  if (s == NULL || s->conn == NULL || (s->flags & LR_SF_REPLIED) || m->mem == NULL || !is_get_or_head(&s->method) ||
      conditional(s)) {
    lua_pushboolean(L, 0);
    return 1;
  }
  /* fields a middleware left on req: would_compress wants the body;
   * req:set_header ones are merged by req:sendfile */
  int merge = 0;
  if (lua_getiuservalue(L, 1, 1) == LUA_TTABLE) {
    lua_pushvalue(L, lua_upvalueindex(3));
    if (lua_rawget(L, -2) != LUA_TNIL) {
      lua_pushboolean(L, 0);
      return 1;
    }
    lua_pushvalue(L, lua_upvalueindex(4));
    merge = lua_rawget(L, -3) != LUA_TNIL;
  }
  lr_file_t *f;
  if (!memo_current(m, s->worker, &f)) {
    luaL_pushfail(L);
    lua_pushliteral(L, "changed");
    return 2;
  }
  if (merge || !lr_stream_can_sendfile(s)) {
    lr_file_unref(f);
    lua_settop(L, 2);
    lua_getiuservalue(L, 2, 2);
    lua_getiuservalue(L, 2, 1);
    lua_replace(L, 2); /* req, path, options */
    return m_sendfile(L);
  }
  int rc = lr_stream_send_file(s, 200, m->h, m->n_h, f, 0, f->size, LR_CHECKED);
  lr_file_unref(f);
  if (rc && rc != LR_ECLOSED) return luaL_error(L, "lariat.static: %s", uv_strerror(rc));
  lua_pushboolean(L, 1);
  return 1;
}

void lr_file_lua_open(lua_State *L) {
  lua_pushcfunction(L, l_file_info);
  lua_setfield(L, -2, "file_info");
  lua_pushcfunction(L, l_file_memo);
  lua_setfield(L, -2, "file_memo");
  luaL_getmetatable(L, LR_REQ_MT);
  if (luaL_newmetatable(L, MEMO_MT)) {
    lua_pushcfunction(L, memo_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pushliteral(L, "would_compress");
  lua_pushliteral(L, "\1resp_headers");
  lua_pushcclosure(L, l_file_memo_send, 4);
  lua_setfield(L, -2, "file_memo_send");
  luaL_getmetatable(L, LR_REQ_MT);
  lua_getfield(L, -1, "__index");
  lua_getupvalue(L, -1, 1); /* the methods table */
  lua_pushcfunction(L, m_sendfile);
  lua_setfield(L, -2, "sendfile");
  lua_pop(L, 3);
}
