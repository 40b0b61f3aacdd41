/* The CPU budget: a handler that runs too long without yielding is stopped.
 *
 * A Lua count hook on every request would make the VM check every
 * instruction (measured: +4,500 instructions per hello-world request), so
 * the hook is armed only when needed, the way lua.c handles Ctrl-C: a
 * watchdog timer in the main thread sees a worker whose current resume is
 * older than the budget and sends that worker thread a signal; the handler,
 * running on the worker thread, sets a hook on the running coroutine
 * (lua_sethook is safe to call from a signal handler). The hook then
 * raises on every instruction, so a pcall in a loop can't keep it alive. */
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <time.h>

#include "bindings.h"

#define BUDGET_SIGNAL SIGUSR2

static __thread lr_lworker_t *tls_lw;

static uint64_t now_ms(void) {
  /* the same clock as uv_now (CLOCK_MONOTONIC, coarse is enough for ms) */
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void budget_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lr_lworker_t *lw = tls_lw;
  lr_co_t *co = lw ? lw->running : NULL;
  uint64_t ran = co ? now_ms() - lw->resume_ms : 0;
  if (co == NULL || (!co->over_budget && ran < lw->cfg->cpu_budget_ms)) {
    lua_sethook(L, NULL, 0, 0); /* armed late, after that resume ended: disarm */
    return;
  }
  co->over_budget = 1;
  lua_pushfstring(L, "CPU budget exceeded: the handler ran %d ms without yielding", (int)ran);
  lua_error(L);
}

static void on_budget_signal(int sig) {
  (void)sig;
  lr_lworker_t *lw = tls_lw;
  lua_State *L = lw ? __atomic_load_n(&lw->running_L, __ATOMIC_ACQUIRE) : NULL;
  if (L) lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
}

void lr_budget_install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_budget_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(BUDGET_SIGNAL, &sa, NULL);
}

void lr_budget_worker_init(lr_lworker_t *lw) { tls_lw = lw; }

/* called by the watchdog in the main thread */
void lr_budget_check(lr_lworker_t *lw, uv_thread_t thread) {
  if (__atomic_load_n(&lw->running_L, __ATOMIC_ACQUIRE) == NULL) return;
  uint64_t started = __atomic_load_n(&lw->resume_ms, __ATOMIC_RELAXED);
  if (now_ms() >= started + lw->cfg->cpu_budget_ms) pthread_kill(thread, BUDGET_SIGNAL);
}

void lr_budget_clear(lua_State *L) { lua_sethook(L, NULL, 0, 0); }
