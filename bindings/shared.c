/* lariat.shared(name[, {size = bytes}]): a dictionary shared by every worker
 * thread (and every app version), for counters, caches, sessions and rate
 * limits — OpenResty's lua_shared_dict.
 *
 * Values are stored serialised (strings, numbers, booleans, tables of them),
 * so no Lua object crosses a thread. One mutex per dictionary; every call
 * holds it for a hash lookup and a copy, never while Lua runs. Each entry
 * may expire; when the size cap is reached the least recently used entries
 * are evicted (expired ones first).
 *
 * With --redis the dictionary lives in Redis instead (cluster.c), shared by
 * every lariat instance using it; the serialisation below is shared. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bindings.h"

#define LR_SHARED_MT "lariat.shared"
#define DEFAULT_SIZE (64u * 1024 * 1024)
#define ENTRY_OVERHEAD 64 /* bookkeeping counted against the cap per entry */

enum { T_NIL, T_FALSE, T_TRUE, T_INT, T_NUM, T_STR, T_TABLE, T_END };

typedef struct entry_s {
  struct entry_s *hnext;  /* hash chain */
  lr_link_t lru;          /* most recently used first */
  uint64_t hash;
  double expires;         /* 0: never */
  size_t klen, vlen;
  char data[];            /* key bytes, then value bytes */
} entry_t;

typedef struct dict_s {
  struct dict_s *next;    /* in the process-wide list */
  pthread_mutex_t lock;
  entry_t **buckets;
  size_t nbuckets, count, bytes, cap;
  lr_link_t lru;
  char name[64];
} dict_t;

static pthread_mutex_t dicts_lock = PTHREAD_MUTEX_INITIALIZER;
static dict_t *dicts;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME_COARSE, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t hash_of(const char *p, size_t n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
  return h;
}

/* ---- serialisation: tag byte, then payload ---- */

void lr__shared_ser(lua_State *L, int idx, luaL_Buffer *b, int depth) {
  idx = lua_absindex(L, idx);
  switch (lua_type(L, idx)) {
    case LUA_TNIL: luaL_addchar(b, T_NIL); break;
    case LUA_TBOOLEAN: luaL_addchar(b, lua_toboolean(L, idx) ? T_TRUE : T_FALSE); break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        lua_Integer v = lua_tointeger(L, idx);
        luaL_addchar(b, T_INT);
        luaL_addlstring(b, (const char *)&v, sizeof v);
      } else {
        lua_Number v = lua_tonumber(L, idx);
        luaL_addchar(b, T_NUM);
        luaL_addlstring(b, (const char *)&v, sizeof v);
      }
      break;
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      uint64_t len = n;
      luaL_addchar(b, T_STR);
      luaL_addlstring(b, (const char *)&len, sizeof len);
      luaL_addlstring(b, s, n);
      break;
    }
    case LUA_TTABLE:
      if (depth > 32) luaL_error(L, "shared: table nested too deeply (or a cycle)");
      luaL_addchar(b, T_TABLE);
      lua_pushnil(L);
      while (lua_next(L, idx)) {
        int kt = lua_type(L, -2);
        if (kt != LUA_TSTRING && kt != LUA_TNUMBER && kt != LUA_TBOOLEAN)
          luaL_error(L, "shared: table keys must be strings, numbers or booleans");
        /* the buffer may sit on the stack: keep key/value above it */
        lr__shared_ser(L, -2, b, depth + 1);
        lr__shared_ser(L, -1, b, depth + 1);
        lua_pop(L, 1);
      }
      luaL_addchar(b, T_END);
      break;
    default: luaL_error(L, "shared: can't store a %s value", luaL_typename(L, idx));
  }
}

/* pushes the value at *p and advances it */
void lr__shared_deser(lua_State *L, const char **p, const char *end) {
  luaL_checkstack(L, 3, "shared: value too deep");
  char tag = *(*p)++;
  switch (tag) {
    case T_FALSE: lua_pushboolean(L, 0); break;
    case T_TRUE: lua_pushboolean(L, 1); break;
    case T_INT: {
      lua_Integer v;
      memcpy(&v, *p, sizeof v);
      *p += sizeof v;
      lua_pushinteger(L, v);
      break;
    }
    case T_NUM: {
      lua_Number v;
      memcpy(&v, *p, sizeof v);
      *p += sizeof v;
      lua_pushnumber(L, v);
      break;
    }
    case T_STR: {
      uint64_t n;
      memcpy(&n, *p, sizeof n);
      *p += sizeof n;
      lua_pushlstring(L, *p, (size_t)n);
      *p += n;
      break;
    }
    case T_TABLE:
      lua_newtable(L);
      while (*p < end && **p != T_END) {
        lr__shared_deser(L, p, end);
        lr__shared_deser(L, p, end);
        lua_rawset(L, -3);
      }
      (*p)++;
      break;
    default: lua_pushnil(L); break;
  }
}

/* ---- the table ---- */

static entry_t **slot_of(dict_t *d, const char *k, size_t n, uint64_t h) {
  entry_t **e = &d->buckets[h & (d->nbuckets - 1)];
  while (*e && !((*e)->hash == h && (*e)->klen == n && memcmp((*e)->data, k, n) == 0)) e = &(*e)->hnext;
  return e;
}

static size_t cost(const entry_t *e) { return sizeof *e + e->klen + e->vlen + ENTRY_OVERHEAD; }

static void remove_at(dict_t *d, entry_t **slot) {
  entry_t *e = *slot;
  *slot = e->hnext;
  lr_link_unlink(&e->lru);
  d->count--;
  d->bytes -= cost(e);
  free(e);
}

static void remove_entry(dict_t *d, entry_t *e) { remove_at(d, slot_of(d, e->data, e->klen, e->hash)); }

/* live entry for key, or NULL (an expired one is dropped on the way) */
static entry_t *lookup(dict_t *d, const char *k, size_t n, double now) {
  uint64_t h = hash_of(k, n);
  entry_t **slot = slot_of(d, k, n, h);
  entry_t *e = *slot;
  if (e && e->expires && e->expires <= now) {
    remove_at(d, slot);
    return NULL;
  }
  return e;
}

static void grow(dict_t *d) {
  size_t nb = d->nbuckets * 2;
  entry_t **b = calloc(nb, sizeof *b);
  if (b == NULL) return;
  for (size_t i = 0; i < d->nbuckets; i++) {
    entry_t *e = d->buckets[i];
    while (e) {
      entry_t *next = e->hnext;
      e->hnext = b[e->hash & (nb - 1)];
      b[e->hash & (nb - 1)] = e;
      e = next;
    }
  }
  free(d->buckets);
  d->buckets = b;
  d->nbuckets = nb;
}

/* make room for `need` bytes: expired entries first, then least recently used */
static int make_room(dict_t *d, size_t need, double now) {
  if (need > d->cap) return 0;
  if (d->bytes + need <= d->cap) return 1;
  for (lr_link_t *l = d->lru.prev; l != &d->lru && d->bytes + need > d->cap;) {
    entry_t *e = LR_CONTAINER_OF(l, entry_t, lru);
    l = l->prev;
    if (e->expires && e->expires <= now) remove_entry(d, e);
  }
  while (d->bytes + need > d->cap && !lr_list_empty(&d->lru))
    remove_entry(d, LR_CONTAINER_OF(d->lru.prev, entry_t, lru));
  return 1;
}

/* store (replacing) key → value bytes; returns 0 or a message */
static const char *store(dict_t *d, const char *k, size_t kn, const char *v, size_t vn, double expires, double now) {
  entry_t *old = lookup(d, k, kn, now);
  if (old) remove_entry(d, old);
  entry_t *e = malloc(sizeof *e + kn + vn);
  if (e == NULL) return "out of memory";
  e->hash = hash_of(k, kn);
  e->klen = kn;
  e->vlen = vn;
  e->expires = expires;
  memcpy(e->data, k, kn);
  memcpy(e->data + kn, v, vn);
  if (!make_room(d, cost(e), now)) {
    free(e);
    return "value larger than the dictionary";
  }
  if (d->count >= d->nbuckets) grow(d);
  entry_t **slot = &d->buckets[e->hash & (d->nbuckets - 1)];
  e->hnext = *slot;
  *slot = e;
  lr_list_push(&d->lru, &e->lru);
  lr_link_unlink(&e->lru);
  /* push at the front: most recently used */
  e->lru.next = d->lru.next;
  e->lru.prev = &d->lru;
  d->lru.next->prev = &e->lru;
  d->lru.next = &e->lru;
  d->count++;
  d->bytes += cost(e);
  return NULL;
}

static void touch(dict_t *d, entry_t *e) {
  lr_link_unlink(&e->lru);
  e->lru.next = d->lru.next;
  e->lru.prev = &d->lru;
  d->lru.next->prev = &e->lru;
  d->lru.next = &e->lru;
}

/* ---- Lua ---- */

static dict_t *check_dict(lua_State *L) { return *(dict_t **)luaL_checkudata(L, 1, LR_SHARED_MT); }

static double expiry(lua_State *L, int idx, double now) {
  lua_Number ttl = luaL_optnumber(L, idx, 0);
  if (ttl < 0) luaL_argerror(L, idx, "ttl must be >= 0");
  return ttl > 0 ? now + ttl : 0;
}

static int d_get(lua_State *L) {
  dict_t *d = check_dict(L);
  size_t kn;
  const char *k = luaL_checklstring(L, 2, &kn);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  pthread_mutex_lock(&d->lock);
  entry_t *e = lookup(d, k, kn, now_s());
  if (e) {
    touch(d, e);
    /* copy out under the lock; decode after it */
    char *dst = luaL_prepbuffsize(&b, e->vlen);
    memcpy(dst, e->data + e->klen, e->vlen);
    luaL_addsize(&b, e->vlen);
  }
  pthread_mutex_unlock(&d->lock);
  if (e == NULL) {
    lua_pushnil(L);
    return 1;
  }
  luaL_pushresult(&b);
  size_t n;
  const char *p = lua_tolstring(L, -1, &n);
  lr__shared_deser(L, &p, p + n);
  return 1;
}

static int set_or_add(lua_State *L, int only_if_absent) {
  dict_t *d = check_dict(L);
  size_t kn;
  const char *k = luaL_checklstring(L, 2, &kn);
  luaL_checkany(L, 3);
  double now = now_s();
  double exp = expiry(L, 4, now);
  if (lua_isnil(L, 3)) {
    if (only_if_absent) return luaL_argerror(L, 3, "value expected");
    pthread_mutex_lock(&d->lock);
    entry_t *e = lookup(d, k, kn, now);
    if (e) remove_entry(d, e);
    pthread_mutex_unlock(&d->lock);
    lua_pushboolean(L, 1);
    return 1;
  }
  luaL_Buffer b;
  lua_settop(L, 3);
  luaL_buffinit(L, &b);
  lr__shared_ser(L, 3, &b, 0);
  luaL_pushresult(&b);
  size_t vn;
  const char *v = lua_tolstring(L, -1, &vn);
  pthread_mutex_lock(&d->lock);
  const char *err = NULL;
  if (only_if_absent && lookup(d, k, kn, now))
    err = "exists";
  else
    err = store(d, k, kn, v, vn, exp, now);
  pthread_mutex_unlock(&d->lock);
  if (err) {
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int d_set(lua_State *L) { return set_or_add(L, 0); }
static int d_add(lua_State *L) { return set_or_add(L, 1); }

/* incr(key, delta=1, init=nil, ttl) → new value; atomic read-modify-write */
static int d_incr(lua_State *L) {
  dict_t *d = check_dict(L);
  size_t kn;
  const char *k = luaL_checklstring(L, 2, &kn);
  lua_Number delta = luaL_optnumber(L, 3, 1);
  int has_init = !lua_isnoneornil(L, 4);
  lua_Number init = luaL_optnumber(L, 4, 0);
  double now = now_s();
  double exp = expiry(L, 5, now);
  int is_int = lua_isinteger(L, 3) || lua_isnone(L, 3) || lua_isnil(L, 3);
  const char *err = NULL;
  char buf[1 + sizeof(lua_Number)];
  lua_Number result = 0;
  lua_Integer iresult = 0;
  int result_int = 0;
  pthread_mutex_lock(&d->lock);
  entry_t *e = lookup(d, k, kn, now);
  if (e == NULL && !has_init) {
    err = "not found";
  } else {
    const char *v = e ? e->data + e->klen : NULL;
    if (e && v[0] == T_INT && is_int && (!has_init || lua_isinteger(L, 4))) {
      memcpy(&iresult, v + 1, sizeof iresult);
      iresult += (lua_Integer)delta;
      result_int = 1;
    } else if (e && (v[0] == T_INT || v[0] == T_NUM)) {
      lua_Integer i;
      lua_Number n;
      if (v[0] == T_INT) {
        memcpy(&i, v + 1, sizeof i);
        n = (lua_Number)i;
      } else {
        memcpy(&n, v + 1, sizeof n);
      }
      result = n + delta;
    } else if (e) {
      err = "not a number";
    } else if (is_int && lua_isinteger(L, 4)) {
      iresult = (lua_Integer)init + (lua_Integer)delta;
      result_int = 1;
    } else {
      result = init + delta;
    }
    if (err == NULL) {
      if (result_int) {
        buf[0] = T_INT;
        memcpy(buf + 1, &iresult, sizeof iresult);
      } else {
        buf[0] = T_NUM;
        memcpy(buf + 1, &result, sizeof result);
      }
      double keep = e && !(lua_gettop(L) >= 5 && !lua_isnil(L, 5)) ? e->expires : exp;
      if (e && e->vlen == sizeof buf) {
        memcpy(e->data + e->klen, buf, sizeof buf); /* in place */
        e->expires = keep;
        touch(d, e);
      } else {
        err = store(d, k, kn, buf, sizeof buf, keep, now);
      }
    }
  }
  pthread_mutex_unlock(&d->lock);
  if (err) {
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  if (result_int)
    lua_pushinteger(L, iresult);
  else
    lua_pushnumber(L, result);
  return 1;
}

static int d_delete(lua_State *L) {
  dict_t *d = check_dict(L);
  size_t kn;
  const char *k = luaL_checklstring(L, 2, &kn);
  pthread_mutex_lock(&d->lock);
  entry_t *e = lookup(d, k, kn, now_s());
  if (e) remove_entry(d, e);
  pthread_mutex_unlock(&d->lock);
  lua_pushboolean(L, e != NULL);
  return 1;
}

/* ttl(key) → seconds left, 0 for no expiry, or nil, "not found" */
static int d_ttl(lua_State *L) {
  dict_t *d = check_dict(L);
  size_t kn;
  const char *k = luaL_checklstring(L, 2, &kn);
  double now = now_s();
  pthread_mutex_lock(&d->lock);
  entry_t *e = lookup(d, k, kn, now);
  double left = e ? (e->expires ? e->expires - now : 0) : -1;
  pthread_mutex_unlock(&d->lock);
  if (left < 0) {
    luaL_pushfail(L);
    lua_pushliteral(L, "not found");
    return 2;
  }
  lua_pushnumber(L, left);
  return 1;
}

/* keys([max]) → array of live keys, most recently used first */
static int d_keys(lua_State *L) {
  dict_t *d = check_dict(L);
  lua_Integer max = luaL_optinteger(L, 2, 1024);
  lua_newtable(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  double now = now_s();
  lua_Integer n = 0;
  pthread_mutex_lock(&d->lock);
  for (lr_link_t *l = d->lru.next; l != &d->lru && (max <= 0 || n < max); l = l->next) {
    entry_t *e = LR_CONTAINER_OF(l, entry_t, lru);
    if (e->expires && e->expires <= now) continue;
    uint64_t kl = e->klen;
    luaL_addlstring(&b, (const char *)&kl, sizeof kl);
    luaL_addlstring(&b, e->data, e->klen);
    n++;
  }
  pthread_mutex_unlock(&d->lock);
  luaL_pushresult(&b);
  size_t len;
  const char *p = lua_tolstring(L, -1, &len), *end = p + len;
  for (lua_Integer i = 1; p < end; i++) {
    uint64_t kl;
    memcpy(&kl, p, sizeof kl);
    p += sizeof kl;
    lua_pushlstring(L, p, (size_t)kl);
    p += kl;
    lua_rawseti(L, -3, i);
  }
  lua_pop(L, 1);
  return 1;
}

static int d_tostring(lua_State *L) {
  dict_t *d = check_dict(L);
  lua_pushfstring(L, "lariat.shared(%s)", d->name);
  return 1;
}

static const luaL_Reg dict_methods[] = {
    {"get", d_get}, {"set", d_set}, {"add", d_add}, {"incr", d_incr},
    {"delete", d_delete}, {"ttl", d_ttl}, {"keys", d_keys}, {NULL, NULL},
};

/* shared(name[, {size = bytes}]) → the dictionary; the first call creates it */
static int l_shared(lua_State *L) {
  size_t nl;
  const char *name = luaL_checklstring(L, 1, &nl);
  if (nl == 0 || nl >= sizeof ((dict_t *)0)->name) return luaL_argerror(L, 1, "name must be 1..63 bytes");
  size_t cap = DEFAULT_SIZE;
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "size");
    if (!lua_isnil(L, -1)) {
      lua_Integer c = luaL_checkinteger(L, -1);
      if (c < 1024) return luaL_argerror(L, 2, "size must be at least 1024 bytes");
      cap = (size_t)c;
    }
    lua_pop(L, 1);
  }
  if (lr_cluster_enabled()) return lr_cluster_dict_push(L, name, nl); /* --redis: the dictionary lives there */
  pthread_mutex_lock(&dicts_lock);
  dict_t *d = dicts;
  while (d && strcmp(d->name, name) != 0) d = d->next;
  if (d == NULL && (d = calloc(1, sizeof *d)) != NULL) {
    pthread_mutex_init(&d->lock, NULL);
    d->nbuckets = 64;
    d->buckets = calloc(d->nbuckets, sizeof *d->buckets);
    d->cap = cap;
    lr_list_init(&d->lru);
    memcpy(d->name, name, nl + 1);
    d->next = dicts;
    dicts = d;
  }
  pthread_mutex_unlock(&dicts_lock);
  if (d == NULL || d->buckets == NULL) return luaL_error(L, "lariat.shared: out of memory");
  *(dict_t **)lua_newuserdatauv(L, sizeof d, 0) = d;
  if (luaL_newmetatable(L, LR_SHARED_MT)) {
    luaL_newlib(L, dict_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, d_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_setmetatable(L, -2);
  return 1;
}

void lr_shared_open(lua_State *L) {
  lua_pushcfunction(L, l_shared);
  lua_setfield(L, -2, "shared");
}

/* at exit: dictionaries live as long as the process */
void lr_shared_free_all(void) {
  pthread_mutex_lock(&dicts_lock);
  while (dicts) {
    dict_t *d = dicts;
    dicts = d->next;
    while (!lr_list_empty(&d->lru)) remove_entry(d, LR_CONTAINER_OF(d->lru.next, entry_t, lru));
    free(d->buckets);
    pthread_mutex_destroy(&d->lock);
    free(d);
  }
  pthread_mutex_unlock(&dicts_lock);
}
