/*
 * lariat.compress: HTTP content codings (gzip, br, zstd) behind one interface,
 * for the compression middleware, lariat.static's tooling and tests.
 *
 *   local compress = require "lariat.compress"
 *   compress.encodings               -> { "zstd", "br", "gzip" } (those built in)
 *   compress.encode(enc, data[, level])     -> string (whole body, one call)
 *   local z = compress.new(enc[, level])    -- a stream, for streamed replies
 *   z:write(data)   -> string   bytes that decode to everything written so far
 *                               (Z_SYNC_FLUSH / BROTLI_OPERATION_FLUSH /
 *                               ZSTD_e_flush): an SSE event reaches the client
 *   z:update(data)  -> string   no flush: whatever the encoder emits, maybe ""
 *   z:finish([data])-> string   the end of the stream; z is closed after it
 *   z:close()                   frees the encoder now (the GC would later)
 *
 * Levels: gzip 0..9 (default 6), br 0..11 (default 5), zstd 1..19 (default 3).
 * The only Lua allocation per call is the output string: input is read in
 * place and the encoder writes straight into a luaL_Buffer.
 */
#include <limits.h>
#include <string.h>

#include <brotli/encode.h>
#include <zlib.h>
#include <zstd.h>

#include <lauxlib.h>
#include <lua.h>

#include "bindings.h"

#define LR_COMPRESS_MT "lariat.compress.stream"
#define LR_COMPRESS_CHUNK 16384

typedef enum { LR_GZIP, LR_BR, LR_ZSTD } lr_coding_t;
typedef enum { LR_OP_NONE, LR_OP_FLUSH, LR_OP_FINISH } lr_op_t;

static const char *const coding_names[] = {"gzip", "br", "zstd", NULL};
static const int level_min[] = {0, 0, 1}, level_max[] = {9, 11, 19}, level_def[] = {6, 5, 3};

typedef struct {
    lr_coding_t coding;
    int open; /* 0 once finished or closed: the encoder is freed */
    union {
        z_stream z;
        BrotliEncoderState *br;
        ZSTD_CStream *zs;
    } u;
} lr_cstream_t;

static lr_coding_t check_coding(lua_State *L, int idx)
{
    const char *name = luaL_checkstring(L, idx);
    if (strcmp(name, "x-gzip") == 0)
        return LR_GZIP;
    return (lr_coding_t)luaL_checkoption(L, idx, NULL, coding_names);
}

static int check_level(lua_State *L, int idx, lr_coding_t c)
{
    lua_Integer level = luaL_optinteger(L, idx, level_def[c]);
    if (level < level_min[c] || level > level_max[c])
        return luaL_argerror(L, idx, lua_pushfstring(L, "%s level must be %d..%d", coding_names[c],
                                                      level_min[c], level_max[c]));
    return (int)level;
}

static void cstream_free(lr_cstream_t *st)
{
    if (!st->open)
        return;
    st->open = 0;
    switch (st->coding) {
    case LR_GZIP: deflateEnd(&st->u.z); break;
    case LR_BR: BrotliEncoderDestroyInstance(st->u.br); break;
    case LR_ZSTD: ZSTD_freeCStream(st->u.zs); break;
    }
}

/* 0, or an error message. size: the whole input's when it is known (encode),
 * -1 for a stream of unknown length */
static const char *cstream_init(lr_cstream_t *st, lr_coding_t c, int level, long long size)
{
    size_t size_hint = size > 0 ? (size_t)size : size == 0 ? 1 : 0;
    memset(st, 0, sizeof *st);
    st->coding = c;
    switch (c) {
    case LR_GZIP:
        /* 15 + 16: maximum window, gzip header and trailer instead of zlib's */
        if (deflateInit2(&st->u.z, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
            return "out of memory";
        break;
    case LR_BR:
        st->u.br = BrotliEncoderCreateInstance(NULL, NULL, NULL);
        if (st->u.br == NULL)
            return "out of memory";
        BrotliEncoderSetParameter(st->u.br, BROTLI_PARAM_QUALITY, (uint32_t)level);
        BrotliEncoderSetParameter(st->u.br, BROTLI_PARAM_MODE, BROTLI_MODE_TEXT);
        if (size_hint) {
            /* a known size: no window (memory) beyond what the body needs */
            BrotliEncoderSetParameter(st->u.br, BROTLI_PARAM_SIZE_HINT,
                                      size_hint > (1u << 30) ? (1u << 30) : (uint32_t)size_hint);
            int lgwin = BROTLI_MIN_WINDOW_BITS;
            while (lgwin < BROTLI_MAX_WINDOW_BITS && ((size_t)1 << lgwin) - 16 < size_hint)
                lgwin++;
            BrotliEncoderSetParameter(st->u.br, BROTLI_PARAM_LGWIN, (uint32_t)lgwin);
        } else {
            /* a stream of unknown length (SSE, proxied bodies) may stay open for
             * hours: a 256 KiB window instead of 4 MiB keeps each one small */
            BrotliEncoderSetParameter(st->u.br, BROTLI_PARAM_LGWIN, 18);
        }
        break;
    case LR_ZSTD:
        st->u.zs = ZSTD_createCCtx();
        if (st->u.zs == NULL)
            return "out of memory";
        ZSTD_CCtx_setParameter(st->u.zs, ZSTD_c_compressionLevel, level);
        if (size >= 0)
            ZSTD_CCtx_setPledgedSrcSize(st->u.zs, (unsigned long long)size); /* sizes the window to the body */
        else
            ZSTD_CCtx_setParameter(st->u.zs, ZSTD_c_windowLog, 18); /* as brotli's above */
        break;
    }
    st->open = 1;
    return NULL;
}

/* Feeds data with op into the encoder and leaves the output on the stack as
 * one string. Returns NULL or an error message (nothing pushed then). */
static const char *cstream_run(lua_State *L, lr_cstream_t *st, const char *data, size_t len,
                               lr_op_t op, size_t first_out)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    size_t cap = first_out ? first_out : LR_COMPRESS_CHUNK;
    switch (st->coding) {
    case LR_GZIP: {
        z_stream *z = &st->u.z;
        int flush = op == LR_OP_FINISH ? Z_FINISH : op == LR_OP_FLUSH ? Z_SYNC_FLUSH : Z_NO_FLUSH;
        z->next_in = (Bytef *)data;
        for (;;) {
            /* avail_in is a uInt: feed more than 4 GiB in slices */
            size_t slice = len > UINT_MAX ? UINT_MAX : len;
            z->avail_in = (uInt)slice;
            int last = slice == len;
            for (;;) {
                if (cap > UINT_MAX)
                    cap = UINT_MAX;
                z->next_out = (Bytef *)luaL_prepbuffsize(&b, cap);
                z->avail_out = (uInt)cap;
                int rc = deflate(z, last ? flush : Z_NO_FLUSH);
                luaL_addsize(&b, cap - z->avail_out);
                if (rc == Z_STREAM_END)
                    break;
                if (rc != Z_OK && rc != Z_BUF_ERROR)
                    return z->msg ? z->msg : "deflate failed";
                /* done when the input is consumed and the output buffer was not filled */
                if (z->avail_in == 0 && z->avail_out != 0)
                    break;
                cap = LR_COMPRESS_CHUNK;
            }
            len -= slice;
            if (last)
                break;
        }
        break;
    }
    case LR_BR: {
        BrotliEncoderOperation bop = op == LR_OP_FINISH  ? BROTLI_OPERATION_FINISH
                                     : op == LR_OP_FLUSH ? BROTLI_OPERATION_FLUSH
                                                         : BROTLI_OPERATION_PROCESS;
        const uint8_t *in = (const uint8_t *)data;
        size_t avail_in = len;
        for (;;) {
            size_t avail_out = cap;
            uint8_t *out = (uint8_t *)luaL_prepbuffsize(&b, cap);
            if (!BrotliEncoderCompressStream(st->u.br, bop, &avail_in, &in, &avail_out, &out, NULL))
                return "brotli encoder failed";
            luaL_addsize(&b, cap - avail_out);
            cap = LR_COMPRESS_CHUNK;
            if (avail_in == 0 && !BrotliEncoderHasMoreOutput(st->u.br)) {
                if (op != LR_OP_FINISH || BrotliEncoderIsFinished(st->u.br))
                    break;
            }
        }
        break;
    }
    case LR_ZSTD: {
        ZSTD_EndDirective end = op == LR_OP_FINISH ? ZSTD_e_end : op == LR_OP_FLUSH ? ZSTD_e_flush : ZSTD_e_continue;
        ZSTD_inBuffer in = {data, len, 0};
        for (;;) {
            ZSTD_outBuffer out = {luaL_prepbuffsize(&b, cap), cap, 0};
            size_t left = ZSTD_compressStream2(st->u.zs, &out, &in, end);
            if (ZSTD_isError(left))
                return ZSTD_getErrorName(left);
            luaL_addsize(&b, out.pos);
            cap = LR_COMPRESS_CHUNK;
            /* continue: done once the input is taken; flush/end: once nothing is left */
            if (end == ZSTD_e_continue ? in.pos == in.size : left == 0)
                break;
        }
        break;
    }
    }
    luaL_pushresult(&b);
    return NULL;
}

/* ---- the stream userdata ---- */

static lr_cstream_t *check_open(lua_State *L)
{
    lr_cstream_t *st = luaL_checkudata(L, 1, LR_COMPRESS_MT);
    if (!st->open)
        luaL_error(L, "compress stream is finished");
    return st;
}

static int stream_feed(lua_State *L, lr_op_t op)
{
    lr_cstream_t *st = check_open(L);
    size_t len = 0;
    const char *data = op == LR_OP_FINISH ? luaL_optlstring(L, 2, "", &len) : luaL_checklstring(L, 2, &len);
    const char *err = cstream_run(L, st, data, len, op, 0);
    if (op == LR_OP_FINISH || err != NULL)
        cstream_free(st); /* an encoder that failed is in no state to go on */
    if (err != NULL)
        return luaL_error(L, "compress: %s", err);
    return 1;
}

static int m_write(lua_State *L) { return stream_feed(L, LR_OP_FLUSH); }
static int m_update(lua_State *L) { return stream_feed(L, LR_OP_NONE); }
static int m_finish(lua_State *L) { return stream_feed(L, LR_OP_FINISH); }

static int m_close(lua_State *L)
{
    cstream_free(luaL_checkudata(L, 1, LR_COMPRESS_MT));
    return 0;
}

static int m_tostring(lua_State *L)
{
    lr_cstream_t *st = luaL_checkudata(L, 1, LR_COMPRESS_MT);
    lua_pushfstring(L, "compress stream (%s%s)", coding_names[st->coding], st->open ? "" : ", finished");
    return 1;
}

/* ---- module functions ---- */

/* new(enc[, level]) */
static int l_new(lua_State *L)
{
    lr_coding_t c = check_coding(L, 1);
    int level = check_level(L, 2, c);
    lr_cstream_t *st = lua_newuserdatauv(L, sizeof *st, 0);
    st->open = 0;
    luaL_setmetatable(L, LR_COMPRESS_MT);
    const char *err = cstream_init(st, c, level, -1);
    if (err != NULL)
        return luaL_error(L, "compress.new: %s", err);
    return 1;
}

/* encode(enc, data[, level]): one stream sized for the data, run to the end */
static int l_encode(lua_State *L)
{
    lr_coding_t c = check_coding(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    int level = check_level(L, 3, c);
    /* a userdata, not a C local: an allocation error in cstream_run still
     * frees the encoder (through __gc) */
    lr_cstream_t *st = lua_newuserdatauv(L, sizeof *st, 0);
    st->open = 0;
    luaL_setmetatable(L, LR_COMPRESS_MT);
    const char *err = cstream_init(st, c, level, (long long)len);
    if (err != NULL)
        return luaL_error(L, "compress.encode: %s", err);
    /* the bound of the whole output: usually one pass, one buffer */
    size_t bound = c == LR_GZIP ? deflateBound(&st->u.z, len > ULONG_MAX ? ULONG_MAX : (uLong)len)
                   : c == LR_BR ? BrotliEncoderMaxCompressedSize(len)
                                : ZSTD_compressBound(len);
    if (bound == 0 || bound > 64u * 1024 * 1024)
        bound = 0; /* no bound (or a huge one): grow as needed */
    err = cstream_run(L, st, data, len, LR_OP_FINISH, bound);
    cstream_free(st);
    if (err != NULL)
        return luaL_error(L, "compress.encode: %s", err);
    return 1;
}

int luaopen_lariat_compress(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"write", m_write}, {"update", m_update}, {"finish", m_finish}, {"close", m_close}, {NULL, NULL},
    };
    static const luaL_Reg meta[] = {
        {"__gc", m_close}, {"__close", m_close}, {"__tostring", m_tostring}, {NULL, NULL},
    };
    static const luaL_Reg funcs[] = {
        {"new", l_new}, {"encode", l_encode}, {NULL, NULL},
    };
    if (luaL_newmetatable(L, LR_COMPRESS_MT)) {
        luaL_setfuncs(L, meta, 0);
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    luaL_newlib(L, funcs);
    lua_createtable(L, 3, 0);
    lua_pushliteral(L, "zstd");
    lua_rawseti(L, -2, 1);
    lua_pushliteral(L, "br");
    lua_rawseti(L, -2, 2);
    lua_pushliteral(L, "gzip");
    lua_rawseti(L, -2, 3);
    lua_setfield(L, -2, "encodings");
    return 1;
}
