/* TEMPORARY SHIM (branch data): lr_co_wait as pinned in helpers/COMMON.md, on
 * top of lr_co_yield, until the "life" branch lands. It never cancels: an
 * abandoned wait runs until its result (or timeout) arrives and the handler
 * then finds its stream gone. The integrator deletes this file. */
#include "co_wait_shim.h"

int lr_co_wait(lua_State *L, lr_co_t *co, uint64_t timeout_ms, lr_cancel_cb cancel, void *arg, lua_KFunction k) {
  (void)cancel;
  (void)arg;
  return lr_co_yield(L, co, CO_WAIT_SLEEP, timeout_ms, k);
}
