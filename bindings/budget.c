/* The CPU budget: a handler that runs too long without yielding is stopped.
 *
 * A Lua count hook on every request would make the VM check every
 * instruction (measured: +4,500 instructions per hello-world request), so
 * the hook is armed only when needed, the way lua.c handles Ctrl-C: a
 * watchdog timer in the main thread sees a worker whose current resume is
 * older than the budget and sends that worker thread a signal; the handler,
 * running on the worker thread, sets a hook on the running coroutine
 * (lua_sethook is safe to call from a signal handler). The hook then
 * raises on every instruction, so a pcall in a loop can't keep it alive.
 *
 * What is counted is CPU time of the worker thread (its pthread CPU clock),
 * not wall-clock time: a handler blocked in a C call (os.execute, a page-fault
 * storm) or starved on a loaded machine uses none. The watchdog samples the
 * clock; a resume it has not seen before gets its baseline at first sight,
 * so up to one watchdog period of CPU before that is not counted: a handler
 * is stopped after at least the budget, at most the budget plus two periods.
 * Resumes are told apart by lw->resume_seq (one relaxed store per resume; a
 * clock read per resume would be a system call on the hot path). */
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <time.h>

#include "bindings.h"

#define BUDGET_SIGNAL SIGUSR2

static __thread lr_lworker_t *tls_lw;

/* per worker, main thread only: the resume being watched */
typedef struct {
  lr_lworker_t *lw;
  unsigned seq;
  uint64_t cpu0;
  int seen;
} watch_t;

#define MAX_WATCH 1024
static watch_t watches[MAX_WATCH];

static uint64_t cpu_ns(clockid_t clk) {
  struct timespec ts;
  if (clock_gettime(clk, &ts)) return 0;
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void budget_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lr_lworker_t *lw = tls_lw;
  lr_co_t *co = lw ? lw->running : NULL;
  unsigned seq = lw ? __atomic_load_n(&lw->resume_seq, __ATOMIC_RELAXED) : 0;
  if (co == NULL || co->L != L ||
      (!co->over_budget && seq != __atomic_load_n(&lw->budget_seq, __ATOMIC_ACQUIRE))) {
    lua_sethook(L, NULL, 0, 0); /* armed late, after that resume ended: disarm */
    return;
  }
  co->over_budget = 1;
  lua_pushfstring(L, "CPU budget exceeded: the handler ran %d ms of CPU without yielding",
                  (int)lw->cfg->cpu_budget_ms);
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

/* on the worker thread, before its loop runs */
void lr_budget_worker_init(lr_lworker_t *lw) {
  tls_lw = lw;
  if (pthread_getcpuclockid(pthread_self(), &lw->cpu_clock)) lw->cpu_clock = CLOCK_THREAD_CPUTIME_ID;
}

/* called by the watchdog in the main thread */
void lr_budget_check(lr_lworker_t *lw, uv_thread_t thread) {
  watch_t *wt = NULL;
  for (int i = 0; i < MAX_WATCH; i++) {
    if (watches[i].lw == lw || watches[i].lw == NULL) {
      wt = &watches[i];
      wt->lw = lw;
      break;
    }
  }
  if (wt == NULL) return;
  if (__atomic_load_n(&lw->running_L, __ATOMIC_ACQUIRE) == NULL) {
    wt->seen = 0;
    return;
  }
  unsigned seq = __atomic_load_n(&lw->resume_seq, __ATOMIC_RELAXED);
  uint64_t now = cpu_ns(lw->cpu_clock);
  if (!wt->seen || wt->seq != seq) {
    wt->seen = 1;
    wt->seq = seq;
    wt->cpu0 = now;
    return;
  }
  if (now - wt->cpu0 >= lw->cfg->cpu_budget_ms * 1000000u) {
    __atomic_store_n(&lw->budget_seq, seq, __ATOMIC_RELEASE);
    pthread_kill(thread, BUDGET_SIGNAL);
  }
}
