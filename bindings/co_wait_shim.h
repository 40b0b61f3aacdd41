/* TEMPORARY SHIM (branch data) — the integrator drops this file and
 * co_wait_shim.c once the "life" branch's lr_co_wait is on main, and replaces
 * `#include "co_wait_shim.h"` with nothing (bindings.h then declares it).
 * The signature is the one pinned in helpers/COMMON.md. */
#ifndef LARIAT_CO_WAIT_SHIM_H
#define LARIAT_CO_WAIT_SHIM_H

#include "bindings.h"

typedef void (*lr_cancel_cb)(lr_co_t *co, void *arg);
int lr_co_wait(lua_State *L, lr_co_t *co, uint64_t timeout_ms, lr_cancel_cb cancel, void *arg, lua_KFunction k);

#endif
