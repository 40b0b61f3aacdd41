/* Files as response bodies, for Lua: req:sendfile(path[, opts]) and
 * core.file_info(path, valid, root) (what lariat.static asks before it
 * answers). Both go through the worker's open-file cache (core/file.c).
 *
 * Plain HTTP/1.x: the core sends the file with sendfile(2). TLS and HTTP/2
 * can't: the file is read on libuv's thread pool (uv_fs_read), never on the
 * loop, and sent like req:write sends, in pieces of the output buffer's size
 * with the same back-pressure; a body up to WHOLE_MAX is read whole and sent
 * with a content-length, a larger one is streamed. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

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

/* core.file_conditional(req): does the request carry range, if-range,
 * if-none-match or if-modified-since? (lariat.static's fast path: one scan
 * in C instead of building req.headers) */
static int l_file_conditional(lua_State *L) {
  lr_req_t *r = luaL_checkudata(L, 1, LR_REQ_MT);
  int found = 0;
  for (unsigned i = 0; r->s && i < r->s->n_headers && !found; i++) {
    const lr_str_t *n = &r->s->headers[i].name;
    found = (n->len == 5 && memcmp(n->base, "range", 5) == 0) || (n->len == 8 && memcmp(n->base, "if-range", 8) == 0) ||
            (n->len == 13 && memcmp(n->base, "if-none-match", 13) == 0) ||
            (n->len == 17 && memcmp(n->base, "if-modified-since", 17) == 0);
  }
  lua_pushboolean(L, found);
  return 1;
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
      rc = lr_stream_send_file(s, status, h, nh, f, (uint64_t)off, n);
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

void lr_file_lua_open(lua_State *L) {
  lua_pushcfunction(L, l_file_info);
  lua_setfield(L, -2, "file_info");
  lua_pushcfunction(L, l_file_conditional);
  lua_setfield(L, -2, "file_conditional");
  luaL_getmetatable(L, LR_REQ_MT);
  lua_getfield(L, -1, "__index");
  lua_getupvalue(L, -1, 1); /* the methods table */
  lua_pushcfunction(L, m_sendfile);
  lua_setfield(L, -2, "sendfile");
  lua_pop(L, 3);
}
