/* The libFuzzer target for a lua/lariat module: built once per harness
 * (fuzz_<target>.lua, named by LR_FUZZ_HARNESS at build time), a Lua chunk
 * returning function(data) that runs once per input. An error out of it is a
 * finding: the harness lets through only the failures the module documents.
 *
 * One lua_State for the whole run, with package.path on the source tree's
 * lua/ directory. Debian's Lua is not instrumented, so libFuzzer would be
 * blind to the Lua code: a line hook feeds (previous line, line) pairs into
 * libFuzzer's extra counters, which gives it edge coverage of the modules. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#define LR_FUZZ_LUA_COUNTERS 65536

/* libFuzzer reads this section as extra coverage counters */
__attribute__((used, section("__libfuzzer_extra_counters"))) static uint8_t lua_counters[LR_FUZZ_LUA_COUNTERS];

static uintptr_t prev_loc;

static void line_hook(lua_State *L, lua_Debug *ar) {
  if (!lua_getinfo(L, "S", ar)) return;
  uintptr_t loc = (uintptr_t)ar->source * 2654435761u + (uintptr_t)ar->currentline;
  lua_counters[(loc ^ prev_loc) % LR_FUZZ_LUA_COUNTERS]++;
  prev_loc = loc >> 1;
}

static lua_State *state;
static int harness_ref;

static void setup(void) {
  state = luaL_newstate();
  if (state == NULL) abort();
  luaL_openlibs(state);
  lua_getglobal(state, "package");
  lua_pushstring(state, LR_SOURCE_LUA_DIR "/?.lua;" LR_SOURCE_LUA_DIR "/?/init.lua");
  lua_setfield(state, -2, "path");
  lua_pop(state, 1);
  if (luaL_loadfile(state, LR_FUZZ_HARNESS) || lua_pcall(state, 0, 1, 0)) {
    fprintf(stderr, "fuzz: harness: %s\n", lua_tostring(state, -1));
    abort();
  }
  harness_ref = luaL_ref(state, LUA_REGISTRYINDEX);
  lua_sethook(state, line_hook, LUA_MASKLINE, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (state == NULL) setup();
  lua_State *L = state;
  lua_rawgeti(L, LUA_REGISTRYINDEX, harness_ref);
  lua_pushlstring(L, (const char *)data, size);
  prev_loc = 0;
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "fuzz: error out of the module: %s\n", msg ? msg : "(not a string)");
    abort();
  }
  /* keep garbage from piling up between inputs (the leak checker sees the heap) */
  lua_gc(L, LUA_GCSTEP, 0);
  return 0;
}
