/* The Lua driver shared by the fuzzers of lua/lariat modules. See lua_driver.c. */
#ifndef LR_FUZZ_LUA_DRIVER_H
#define LR_FUZZ_LUA_DRIVER_H

#include <stddef.h>
#include <stdint.h>

/* harness: a Lua chunk returning function(data). It runs once per input; an
 * error out of it is a finding (the harness lets through only the errors the
 * module documents). */
void lr_fuzz_lua_run(const char *harness, const uint8_t *data, size_t size);

#endif
