/*
 * lariat.zlib: gzip framing for the gzip middleware and for tests.
 *
 *   local zlib = require "lariat.zlib"
 *   zlib.gzip(data[, level])       -> string           (level 0..9, default 6)
 *   zlib.gunzip(data[, max_size])  -> string | nil, err (default max 16 MiB)
 *
 * Both run to completion without yielding: they are meant for response-sized
 * buffers. gunzip bounds its output so a small "zip bomb" cannot exhaust the
 * Lua allocator, and accepts concatenated gzip members (RFC 1952 §2.2).
 */
#include <limits.h>
#include <string.h>
#include <zlib.h>

#include <lauxlib.h>
#include <lua.h>

#define LR_ZLIB_DEFAULT_MAX (16u * 1024u * 1024u)
#define LR_ZLIB_CHUNK 16384

/* Lua error messages for zlib return codes; the zlib message when it has one. */
static const char *lr_zlib_msg(const z_stream *zs, int rc)
{
    if (zs->msg != NULL)
        return zs->msg;
    switch (rc) {
    case Z_MEM_ERROR: return "out of memory";
    case Z_BUF_ERROR: return "truncated gzip data";
    case Z_DATA_ERROR: return "invalid gzip data";
    default: return "zlib error";
    }
}

/* gzip(data[, level]) */
static int lr_zlib_gzip(lua_State *L)
{
    size_t len;
    const char *data = luaL_checklstring(L, 1, &len);
    lua_Integer level = luaL_optinteger(L, 2, 6);
    luaL_argcheck(L, level >= 0 && level <= 9, 2, "level must be 0..9");
    luaL_argcheck(L, len <= UINT_MAX, 1, "data too large");

    z_stream zs;
    memset(&zs, 0, sizeof zs);
    /* 15 + 16: maximum window, gzip header and trailer instead of zlib's */
    int rc = deflateInit2(&zs, (int)level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
    if (rc != Z_OK)
        return luaL_error(L, "gzip: %s", lr_zlib_msg(&zs, rc));

    /* deflateBound gives a size the whole output fits in: one deflate call */
    uLong bound = deflateBound(&zs, (uLong)len);
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, (size_t)bound);
    zs.next_in = (Bytef *)data;
    zs.avail_in = (uInt)len;
    zs.next_out = (Bytef *)out;
    zs.avail_out = (uInt)bound;
    rc = deflate(&zs, Z_FINISH);
    size_t produced = (size_t)(bound - zs.avail_out);
    deflateEnd(&zs);
    if (rc != Z_STREAM_END)
        return luaL_error(L, "gzip: %s", lr_zlib_msg(&zs, rc));
    luaL_pushresultsize(&b, produced);
    return 1;
}

/* gunzip(data[, max_size]) */
static int lr_zlib_gunzip(lua_State *L)
{
    size_t len;
    const char *data = luaL_checklstring(L, 1, &len);
    lua_Integer max = luaL_optinteger(L, 2, LR_ZLIB_DEFAULT_MAX);
    luaL_argcheck(L, max >= 0, 2, "max_size must be >= 0");
    luaL_argcheck(L, len <= UINT_MAX, 1, "data too large");

    z_stream zs;
    memset(&zs, 0, sizeof zs);
    int rc = inflateInit2(&zs, 15 + 16); /* gzip only */
    if (rc != Z_OK)
        return luaL_error(L, "gunzip: %s", lr_zlib_msg(&zs, rc));

    luaL_Buffer b;
    luaL_buffinit(L, &b);
    zs.next_in = (Bytef *)data;
    zs.avail_in = (uInt)len;
    size_t total = 0;
    const char *err = NULL;
    for (;;) {
        char *out = luaL_prepbuffsize(&b, LR_ZLIB_CHUNK);
        zs.next_out = (Bytef *)out;
        zs.avail_out = LR_ZLIB_CHUNK;
        rc = inflate(&zs, Z_NO_FLUSH);
        size_t produced = LR_ZLIB_CHUNK - zs.avail_out;
        total += produced;
        if (total > (size_t)max) {
            err = "output larger than max_size";
            break;
        }
        luaL_addsize(&b, produced);
        if (rc == Z_STREAM_END) {
            if (zs.avail_in == 0)
                break;
            /* another gzip member follows */
            rc = inflateReset(&zs);
            if (rc != Z_OK) {
                err = lr_zlib_msg(&zs, rc);
                break;
            }
            continue;
        }
        if (rc == Z_BUF_ERROR && zs.avail_in == 0) {
            err = "truncated gzip data";
            break;
        }
        if (rc != Z_OK) {
            err = lr_zlib_msg(&zs, rc);
            break;
        }
    }
    inflateEnd(&zs);
    if (err != NULL) {
        lua_pushnil(L);
        lua_pushfstring(L, "gunzip: %s", err);
        return 2;
    }
    luaL_pushresult(&b);
    return 1;
}

int luaopen_lariat_zlib(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"gzip", lr_zlib_gzip},
        {"gunzip", lr_zlib_gunzip},
        {NULL, NULL},
    };
    luaL_newlib(L, funcs);
    return 1;
}
