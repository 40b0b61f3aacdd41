/* lariat: parse the command line, bind the listeners, load the app once per
 * worker, run the workers, and turn signals into stop and reload requests. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <sys/resource.h>
#include <unistd.h>

#include "../core/data/data.h"
#include "bindings.h"

typedef struct {
  lr_worker_t w;
  lr_lworker_t lw;
  int *fds;      /* its listening sockets, listened on once the app started */
  int started;   /* written by the worker (atomic): 1 serving, -1 failed */
} worker_slot_t;

static worker_slot_t *slots;
static int n_slots;
static int stop_requests;
static uv_async_t worker_exited, worker_started;
static int exit_code;
static lr_config_t *slots_cfg; /* for the socket files to remove on a failed start */
static uv_signal_t sig_term, sig_int, sig_hup;
static uv_timer_t watchdog;
static uv_timer_t drain_timer;

/* requests still running when the drain timeout ends are cut: exit now */
static void on_drain_timeout(uv_timer_t *t) {
  (void)t;
  unsigned left = 0, live = 0;
  for (int i = 0; i < n_slots; i++) {
    left += lr_worker_conns(&slots[i].w);
    live += __atomic_load_n(&slots[i].lw.n_live, __ATOMIC_RELAXED);
  }
  lr_log(LR_LOG_WARN, "drain timeout: exiting with %u connections and %u handlers still open", left, live);
  _exit(0);
}

/* the CPU budget's watchdog: see budget.c */
static void on_watchdog(uv_timer_t *t) {
  (void)t;
  for (int i = 0; i < n_slots; i++) lr_budget_check(&slots[i].lw, slots[i].w.thread);
}

/* in the worker: its app's on_start hooks ended; serve, or tell main why not */
static void on_app_started(lr_lworker_t *lw, int ok, const char *err) {
  worker_slot_t *ws = LR_CONTAINER_OF(lw, worker_slot_t, lw);
  if (ok && !ws->w.stopping) {
    int r = lr_worker_listen(&ws->w, ws->fds, ws->w.cfg->n_listen);
    if (r) {
      snprintf(lw->start_err, sizeof lw->start_err, "listen: %s", uv_strerror(r));
      ok = 0;
    }
  } else if (!ok && err != lw->start_err) {
    snprintf(lw->start_err, sizeof lw->start_err, "%s", err);
  }
  __atomic_store_n(&ws->started, ok ? 1 : -1, __ATOMIC_SEQ_CST);
  uv_async_send(&worker_started);
}

static void worker_main(void *arg) {
  worker_slot_t *ws = arg;
  lr_budget_worker_init(&ws->lw);
  ws->lw.started = on_app_started;
  lr_app_start(&ws->lw, ws->lw.app);
  lr_worker_run(&ws->w);
  lr_http_cache_free(); /* this thread's; the app's state is closed later, on the main thread */
  uv_async_send(&worker_exited);
}

/* the main loop ends when the last worker has stopped */
static void on_worker_exited(uv_async_t *a) {
  (void)a;
  int done = 0;
  for (int i = 0; i < n_slots; i++) done += slots[i].w.exited;
  if (done < n_slots) return;
  uv_close((uv_handle_t *)&sig_term, NULL);
  uv_close((uv_handle_t *)&sig_int, NULL);
  uv_close((uv_handle_t *)&sig_hup, NULL);
  uv_close((uv_handle_t *)&worker_exited, NULL);
  uv_close((uv_handle_t *)&worker_started, NULL);
  lr_metrics_close();
  uv_close((uv_handle_t *)&watchdog, NULL);
  if (drain_timer.loop) uv_close((uv_handle_t *)&drain_timer, NULL);
  lr_watch_stop();
}

/* Build a new app state for every worker here, in the main thread, so the
 * workers keep serving while it loads; hand each over only if all loaded. A
 * broken app is rejected and the running version keeps serving. */
static void reload_all(const char *why) {
  char err[1024];
  lr_app_t **fresh = calloc((size_t)n_slots, sizeof *fresh);
  if (fresh == NULL) return;
  for (int i = 0; i < n_slots; i++) {
    fresh[i] = lr_app_load(&slots[i].lw, err, sizeof err);
    if (fresh[i] == NULL) {
      lr_log(LR_LOG_ERROR, "reload (%s) rejected, still serving the previous version: %s", why, err);
      __atomic_add_fetch(&lr_metrics_load_rejects, 1, __ATOMIC_RELAXED);
      for (int k = 0; k < i; k++) lr_app_unref(fresh[k]);
      free(fresh);
      return;
    }
  }
  for (int i = 0; i < n_slots; i++) {
    lr_app_t *stale = __atomic_exchange_n(&slots[i].lw.pending, fresh[i], __ATOMIC_SEQ_CST);
    if (stale) lr_app_unref(stale); /* a previous reload the worker had not taken yet */
    lr_worker_wakeup(&slots[i].w);
  }
  lr_log(LR_LOG_INFO, "reloading the app (%s)", why);
  free(fresh);
}

static void on_signal(uv_signal_t *h, int signum) {
  (void)h;
  if (signum == SIGHUP) {
    if (stop_requests == 0) reload_all("SIGHUP");
    return;
  }
  if (++stop_requests > 1 && signum == SIGINT) {
    lr_log(LR_LOG_WARN, "second SIGINT: exiting now");
    _exit(0);
  }
  if (stop_requests > 1) return;
  lr_log(LR_LOG_INFO, "stopping: finishing in-flight requests");
  for (int i = 0; i < n_slots; i++) lr_worker_stop(&slots[i].w);
  uv_timer_init(h->loop, &drain_timer);
  uv_timer_start(&drain_timer, on_drain_timeout, slots[0].w.cfg->drain_timeout_ms, 0);
  uv_unref((uv_handle_t *)&drain_timer);
}

/* every worker has run its app's on_start hooks: ready (one line per
 * listener), or exit 2 with the first failure */
static void on_worker_started(uv_async_t *a) {
  (void)a;
  for (int i = 0; i < n_slots; i++)
    if (__atomic_load_n(&slots[i].started, __ATOMIC_SEQ_CST) == 0) return;
  if (exit_code || stop_requests) return;
  for (int i = 0; i < n_slots; i++) {
    if (slots[i].started < 0) {
      fprintf(stderr, "lariat: %s\n", slots[i].lw.start_err);
      exit_code = 2;
      stop_requests = 1;
      for (int k = 0; k < n_slots; k++) lr_worker_stop(&slots[k].w);
      return;
    }
  }
  const lr_config_t *cfg = slots[0].w.cfg;
  /* first: a client waiting for the listening lines finds this one there */
  if (cfg->has_metrics)
    printf("metrics on http://%s%s%s:%d/metrics\n", strchr(cfg->metrics.host, ':') ? "[" : "", cfg->metrics.host,
           strchr(cfg->metrics.host, ':') ? "]" : "", cfg->metrics.port);
  for (int i = 0; i < cfg->n_listen; i++) {
    const lr_listen_addr_t *l = &cfg->listen[i];
    int v6 = strchr(l->host, ':') != NULL;
    if (l->path[0])
      printf("listening on %s+unix:%s\n", l->tls ? "https" : "http", l->path);
    else
      printf("listening on %s://%s%s%s:%d\n", l->tls ? "https" : "http", v6 ? "[" : "", l->host, v6 ? "]" : "",
             l->port);
  }
  fflush(stdout);
}

/* --user: the listeners are bound (maybe to a privileged port); run as NAME */
static int drop_privileges(const char *name, char *err, size_t errlen) {
  struct passwd *pw = getpwnam(name);
  if (pw == NULL) {
    snprintf(err, errlen, "--user %s: no such user", name);
    return -1;
  }
  if (getuid() != 0 && getuid() != pw->pw_uid) {
    snprintf(err, errlen, "--user %s: only root can change user", name);
    return -1;
  }
  if (initgroups(pw->pw_name, pw->pw_gid) || setgid(pw->pw_gid) || setuid(pw->pw_uid)) {
    snprintf(err, errlen, "--user %s: %s", name, strerror(errno));
    return -1;
  }
  return 0;
}

static int write_pid_file(const char *path, char *err, size_t errlen) {
  FILE *f = fopen(path, "w");
  if (f == NULL || fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f) != 0) {
    snprintf(err, errlen, "--pid-file %s: %s", path, strerror(errno));
    return -1;
  }
  return 0;
}

/* tear down what startup built so far; every startup failure exits 2 */
static int startup_failed(int n_ready, int *fds, const char *msg) {
  fprintf(stderr, "lariat: %s\n", msg);
  lr_sqlite_stop_all();
  for (int i = 0; i < n_ready; i++) {
    if (slots[i].lw.app) lr_app_unref(slots[i].lw.app);
    lr_worker_destroy(&slots[i].w);
  }
  free(slots);
  free(fds);
  lr_channel_detach_all();
  lr_sqlite_free_all();
  lr_listeners_unlink(slots_cfg);
  return 2;
}

/* every connection is a descriptor: the distribution's default soft limit
 * (often 1024) would cap a worker far below what the hard limit allows */
static void raise_fd_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) || rl.rlim_cur >= rl.rlim_max) return;
  rlim_t was = rl.rlim_cur;
  rl.rlim_cur = rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) == 0) return;
  /* an "unlimited" hard limit is still capped by fs.nr_open */
  for (rlim_t want = 1 << 20; want > was; want /= 2) {
    struct rlimit r2 = {want, rl.rlim_max};
    if (setrlimit(RLIMIT_NOFILE, &r2) == 0) return;
  }
}

int main(int argc, char **argv) {
  static lr_config_t cfg;
  char err[1024];
  lr_config_defaults(&cfg);
  int r = lr_config_parse(&cfg, argc, argv, err, sizeof err);
  if (r == 1) return 0;
  if (r < 0) {
    fprintf(stderr, "lariat: %s\n", err);
    return 2;
  }
  slots_cfg = &cfg;
  lr_log_level = cfg.log_level;
  lr_log_json = cfg.log_json;
  lr_out_high = cfg.output_buffer;
  signal(SIGPIPE, SIG_IGN);
  raise_fd_limit();

  if (lr_cluster_init(cfg.redis_url, err, sizeof err)) {
    fprintf(stderr, "lariat: --redis: %s\n", err);
    return 2;
  }
  n_slots = cfg.workers;
  slots = calloc((size_t)n_slots, sizeof *slots);
  int *fds = calloc((size_t)n_slots * LR_MAX_LISTENERS, sizeof *fds);
  if (slots == NULL || fds == NULL) return 1;

  /* --metrics: on before the apps load, which label their routes only if it is */
  if (cfg.has_metrics) __atomic_store_n(&lr_metrics_wanted, 1, __ATOMIC_RELAXED);

  /* load the app in every worker before binding: a broken app never listens */
  for (int i = 0; i < n_slots; i++) {
    worker_slot_t *ws = &slots[i];
    if (lr_worker_init(&ws->w, i, &cfg, &lr_lua_hooks, &ws->lw)) return startup_failed(i, fds, "cannot start a worker");
    ws->lw.w = &ws->w;
    ws->lw.cfg = &cfg;
    lr_channel_attach(&ws->w, n_slots);
    lr_list_init(&ws->lw.ready);
    lr_list_init(&ws->lw.waiting);
    lr_metrics_add_worker(&ws->lw);
    ws->lw.app = lr_app_load(&ws->lw, err, sizeof err);
    if (ws->lw.app == NULL) return startup_failed(i + 1, fds, err);
  }
  if (lr_tls_global_init(&cfg, err, sizeof err)) return startup_failed(n_slots, fds, err);
  if (lr_listeners_bind(&cfg, n_slots, fds, err, sizeof err)) return startup_failed(n_slots, fds, err);
  if (cfg.has_metrics && lr_metrics_listen(uv_default_loop(), &cfg.metrics, err, sizeof err))
    return startup_failed(n_slots, fds, err);
  if (cfg.pid_file && write_pid_file(cfg.pid_file, err, sizeof err)) return startup_failed(n_slots, fds, err);
  if (cfg.user && drop_privileges(cfg.user, err, sizeof err)) return startup_failed(n_slots, fds, err);
  for (int i = 0; i < n_slots; i++) slots[i].fds = &fds[i * LR_MAX_LISTENERS];

  /* signals are taken by the main thread's own loop; workers never see them */
  uv_loop_t *main_loop = uv_default_loop();
  uv_async_init(main_loop, &worker_exited, on_worker_exited);
  uv_async_init(main_loop, &worker_started, on_worker_started);
  uv_signal_init(main_loop, &sig_term);
  uv_signal_init(main_loop, &sig_int);
  uv_signal_init(main_loop, &sig_hup);
  uv_signal_start(&sig_term, on_signal, SIGTERM);
  uv_signal_start(&sig_int, on_signal, SIGINT);
  uv_signal_start(&sig_hup, on_signal, SIGHUP);

  if (cfg.watch) lr_watch_start(main_loop, reload_all); /* watch.c: the app's Lua files only */

  lr_budget_install();
  uint64_t every = cfg.cpu_budget_ms / 4 < 10 ? 10 : cfg.cpu_budget_ms / 4;
  uv_timer_init(main_loop, &watchdog);
  uv_timer_start(&watchdog, on_watchdog, every, every);
  /* each worker runs its app's on_start hooks, then listens; main prints the
   * ready lines once all have (on_worker_started). Signals are handled from
   * here on, so a HUP right after those lines reloads */
  for (int i = 0; i < n_slots; i++) uv_thread_create(&slots[i].w.thread, worker_main, &slots[i]);
  uv_run(main_loop, UV_RUN_DEFAULT);
  for (int i = 0; i < n_slots; i++) uv_thread_join(&slots[i].w.thread);
  lr_sqlite_stop_all(); /* before the workers' loops close: a database thread may still post to them */
  for (int i = 0; i < n_slots; i++) {
    lr_lifecycle_release(&slots[i].lw);
  }
  lr_redis_lua_free_all(); /* their handles close with the loops below; --redis's connections too */
  lr_cluster_free_all();
  lr_pg_lua_free_all();
  for (int i = 0; i < n_slots; i++) {
    lr_worker_destroy(&slots[i].w);
    lr_metrics_worker_free(&slots[i].w);
  }
  /* fds of workers that never listened (a failed start) */
  for (int i = 0; i < n_slots; i++)
    if (slots[i].w.n_listeners == 0)
      for (int k = 0; k < cfg.n_listen; k++) close(fds[i * LR_MAX_LISTENERS + k]);
  free(slots);
  free(fds);
  lr_shared_free_all();
  lr_channel_detach_all();
  lr_sqlite_free_all();
  if (cfg.pid_file) unlink(cfg.pid_file);
  lr_listeners_unlink(&cfg);
  if (exit_code == 0) lr_log(LR_LOG_INFO, "stopped");
  return exit_code;
}
