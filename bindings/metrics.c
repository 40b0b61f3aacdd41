/* Prometheus metrics: the --metrics listener (its own plain port, on the main
 * thread, GET /metrics only, so metrics are never exposed on the public port
 * by accident), lariat.metrics.handler() for a route, the text exposition
 * format, the route names the router tags requests with, each worker's
 * periodic snapshot of its gauges, and app metrics
 * (lariat.metrics.counter/gauge/histogram).
 *
 * Request counters are per worker (core/metrics.c) and summed here at scrape;
 * the route registry and app metrics are shared and take a mutex: at load
 * time, and for app metric updates (not on lariat's own request path). */
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bindings.h"

#define MAX_WORKERS 1024
#define MAX_FAMILIES 256
#define MAX_LABELS 8
#define MAX_BUCKETS 32
#define SNAP_MS 500

int lr_metrics_wanted;
unsigned lr_metrics_load_rejects; /* reloads rejected at load, in the main thread (atomic) */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char *routes[LR_MET_ROUTES] = {""};
static unsigned n_routes = 1;
static lr_worker_t *workers[MAX_WORKERS];
static lr_lworker_t *lworkers[MAX_WORKERS];
static int n_workers;

/* ---- app metrics ---- */

enum { COUNTER, GAUGE, HISTOGRAM };
static const char *const kinds[] = {"counter", "gauge", "histogram", NULL};

typedef struct {
  char *key; /* label values joined by \x1f */
  double value, sum;
  uint64_t count;
  uint64_t *buckets; /* histogram: per bucket, not cumulative; the last is +Inf */
} series_t;

typedef struct {
  char *name, *help;
  int kind, n_labels, n_buckets;
  char *labels[MAX_LABELS];
  double bounds[MAX_BUCKETS];
  series_t *series;
  size_t n_series, cap_series;
} family_t;

static family_t families[MAX_FAMILIES];
static int n_families;

/* ---- rendering ---- */

static void put(lr_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(lr_buf_t *b, const char *fmt, ...) {
  va_list ap;
  if (b->cap - b->len < 64 && lr_buf_reserve(b, 4096)) return;
  for (;;) {
    size_t room = b->cap - b->len;
    va_start(ap, fmt);
    int n = vsnprintf(b->base + b->len, room, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < room) {
      b->len += (size_t)n;
      return;
    }
    if (lr_buf_reserve(b, (size_t)n + 1)) return;
  }
}

/* a label value: backslash, double quote and newline escaped */
static void put_label(lr_buf_t *b, const char *v) {
  for (; *v; v++) {
    if (*v == '\\') put(b, "\\\\");
    else if (*v == '"') put(b, "\\\"");
    else if (*v == '\n') put(b, "\\n");
    else put(b, "%c", *v);
  }
}

static void put_help(lr_buf_t *b, const char *name, const char *type, const char *help) {
  put(b, "# HELP %s ", name);
  for (; *help; help++) {
    if (*help == '\\') put(b, "\\\\");
    else if (*help == '\n') put(b, "\\n");
    else put(b, "%c", *help);
  }
  put(b, "\n# TYPE %s %s\n", name, type);
}

static uint64_t rd(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static unsigned rdu(const unsigned *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

static void render_requests(lr_buf_t *b) {
  put_help(b, "lariat_http_requests_total", "counter", "Requests answered, by route pattern, method and status class.");
  for (unsigned r = 0; r < n_routes; r++)
    for (int m = 0; m < LR_MET_METHODS; m++)
      for (int c = 0; c < 5; c++) {
        uint64_t n = 0;
        for (int w = 0; w < n_workers; w++)
          if (workers[w]->metrics) n += rd(&workers[w]->metrics->req[r][m][c]);
        if (n == 0) continue;
        put(b, "lariat_http_requests_total{route=\"");
        put_label(b, routes[r]);
        put(b, "\",method=\"%s\",code=\"%dxx\"} %llu\n", lr_met_methods[m], c + 1, (unsigned long long)n);
      }
  put_help(b, "lariat_http_request_duration_seconds", "histogram",
           "Time from the request head to the end of the response, by route pattern.");
  for (unsigned r = 0; r < n_routes; r++) {
    uint64_t bk[LR_MET_BUCKETS] = {0}, ns = 0, total = 0;
    for (int w = 0; w < n_workers; w++) {
      lr_metrics_t *m = workers[w]->metrics;
      if (m == NULL) continue;
      for (int k = 0; k < LR_MET_BUCKETS; k++) bk[k] += rd(&m->dur[r][k]);
      ns += rd(&m->dur_ns[r]);
    }
    for (int k = 0; k < LR_MET_BUCKETS; k++) total += bk[k];
    if (total == 0) continue;
    uint64_t cum = 0;
    for (int k = 0; k < LR_MET_BUCKETS; k++) {
      cum += bk[k];
      put(b, "lariat_http_request_duration_seconds_bucket{route=\"");
      put_label(b, routes[r]);
      if (k < LR_MET_BUCKETS - 1)
        put(b, "\",le=\"%g\"} %llu\n", lr_met_bounds[k], (unsigned long long)cum);
      else
        put(b, "\",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    }
    put(b, "lariat_http_request_duration_seconds_sum{route=\"");
    put_label(b, routes[r]);
    put(b, "\"} %.9f\n", (double)ns / 1e9);
    put(b, "lariat_http_request_duration_seconds_count{route=\"");
    put_label(b, routes[r]);
    put(b, "\"} %llu\n", (unsigned long long)total);
  }
}

#define SUM(expr)                                              \
  ({                                                           \
    uint64_t _n = 0;                                           \
    for (int w = 0; w < n_workers; w++) {                      \
      lr_metrics_t *m = workers[w]->metrics;                   \
      if (m) _n += (expr);                                     \
    }                                                          \
    (unsigned long long)_n;                                    \
  })

static void render_server(lr_buf_t *b) {
  put_help(b, "lariat_received_bytes_total", "counter", "Bytes read from client sockets.");
  put(b, "lariat_received_bytes_total %llu\n", SUM(rd(&m->bytes_in)));
  put_help(b, "lariat_http_response_bytes_total", "counter", "Response bytes sent (as counted by the protocol).");
  put(b, "lariat_http_response_bytes_total %llu\n", SUM(rd(&m->bytes_out)));
  put_help(b, "lariat_http_streams_total", "counter", "Requests finished, by protocol (HTTP/2: streams).");
  put(b, "lariat_http_streams_total{protocol=\"http1\"} %llu\n", SUM(rd(&m->streams[0])));
  put(b, "lariat_http_streams_total{protocol=\"http2\"} %llu\n", SUM(rd(&m->streams[1])));
  put_help(b, "lariat_connections", "gauge", "Open client connections, by protocol.");
  put(b, "lariat_connections{protocol=\"http1\"} %llu\n", SUM(rdu(&m->conns[0])));
  put(b, "lariat_connections{protocol=\"http2\"} %llu\n", SUM(rdu(&m->conns[1])));
  put(b, "lariat_connections{protocol=\"websocket\"} %llu\n", SUM(rdu(&m->conns[2])));
  put_help(b, "lariat_tls_connections", "gauge", "Open client connections over TLS.");
  put(b, "lariat_tls_connections %llu\n", SUM(rdu(&m->conns[3])));
  put_help(b, "lariat_websockets", "gauge", "Open WebSocket connections (HTTP/1.1 upgrades).");
  put(b, "lariat_websockets %llu\n", SUM(rdu(&m->conns[2])));
  put_help(b, "lariat_reloads_total", "counter",
           "App reloads by outcome, counted per worker (a reload rejected at load counts once).");
  put(b, "lariat_reloads_total{outcome=\"ok\"} %llu\n", SUM(rd(&m->reloads_ok)));
  put(b, "lariat_reloads_total{outcome=\"rejected\"} %llu\n",
      SUM(rd(&m->reloads_rejected)) + __atomic_load_n(&lr_metrics_load_rejects, __ATOMIC_RELAXED));
  put_help(b, "lariat_budget_kills_total", "counter", "Handlers stopped for running past --cpu-budget.");
  put(b, "lariat_budget_kills_total %llu\n", SUM(rd(&m->budget_kills)));
  put_help(b, "lariat_lua_memory_errors_total", "counter", "Handlers stopped by the --lua-memory cap.");
  put(b, "lariat_lua_memory_errors_total %llu\n", SUM(rd(&m->memory_errors)));
  put_help(b, "lariat_handler_timeouts_total", "counter", "Handlers cancelled by --handler-timeout (answered 504).");
  put(b, "lariat_handler_timeouts_total %llu\n", SUM(rd(&m->handler_timeouts)));
  static const struct {
    const char *name, *help;
    size_t off;
    int wide;
  } g[] = {
      {"lariat_lua_memory_bytes", "Lua memory of the worker's app versions.", offsetof(lr_metrics_t, lua_mem), 1},
      {"lariat_lua_handlers", "Request handler coroutines alive.", offsetof(lr_metrics_t, handlers), 0},
      {"lariat_lua_tasks", "Spawned, timer and on_start coroutines waiting.", offsetof(lr_metrics_t, tasks), 0},
      {"lariat_lua_app_versions", "App versions alive (old ones finish their requests).",
       offsetof(lr_metrics_t, versions), 0},
  };
  for (size_t k = 0; k < sizeof g / sizeof *g; k++) {
    put_help(b, g[k].name, "gauge", g[k].help);
    for (int w = 0; w < n_workers; w++) {
      lr_metrics_t *m = workers[w]->metrics;
      if (m == NULL) continue;
      const char *p = (const char *)m + g[k].off;
      unsigned long long v = g[k].wide ? rd((const uint64_t *)p) : rdu((const unsigned *)p);
      put(b, "%s{worker=\"%d\"} %llu\n", g[k].name, workers[w]->id, v);
    }
  }
}

static void put_series_labels(lr_buf_t *b, const family_t *f, const series_t *s, const char *extra) {
  if (f->n_labels == 0 && extra == NULL) return;
  put(b, "{");
  const char *v = s->key;
  for (int i = 0; i < f->n_labels; i++) {
    const char *end = strchr(v, '\x1f');
    size_t n = end ? (size_t)(end - v) : strlen(v);
    char tmp[512];
    if (n >= sizeof tmp) n = sizeof tmp - 1;
    memcpy(tmp, v, n);
    tmp[n] = '\0';
    put(b, "%s%s=\"", i ? "," : "", f->labels[i]);
    put_label(b, tmp);
    put(b, "\"");
    v = end ? end + 1 : v + n;
  }
  if (extra) put(b, "%s%s", f->n_labels ? "," : "", extra);
  put(b, "}");
}

static void render_app(lr_buf_t *b) {
  for (int i = 0; i < n_families; i++) {
    family_t *f = &families[i];
    put_help(b, f->name, kinds[f->kind], f->help);
    for (size_t k = 0; k < f->n_series; k++) {
      series_t *s = &f->series[k];
      if (f->kind != HISTOGRAM) {
        put(b, "%s", f->name);
        put_series_labels(b, f, s, NULL);
        put(b, " %.17g\n", s->value);
        continue;
      }
      uint64_t cum = 0;
      for (int j = 0; j <= f->n_buckets; j++) {
        char le[64];
        cum += s->buckets[j];
        if (j < f->n_buckets)
          snprintf(le, sizeof le, "le=\"%g\"", f->bounds[j]);
        else
          snprintf(le, sizeof le, "le=\"+Inf\"");
        put(b, "%s_bucket", f->name);
        put_series_labels(b, f, s, le);
        put(b, " %llu\n", (unsigned long long)cum);
      }
      put(b, "%s_sum", f->name);
      put_series_labels(b, f, s, NULL);
      put(b, " %.17g\n%s_count", s->sum, f->name);
      put_series_labels(b, f, s, NULL);
      put(b, " %llu\n", (unsigned long long)s->count);
    }
  }
}

void lr_metrics_render(lr_buf_t *b) {
  pthread_mutex_lock(&lock);
  render_requests(b);
  render_server(b);
  put_help(b, "lariat_workers", "gauge", "Worker threads.");
  put(b, "lariat_workers %d\n", n_workers);
  render_app(b);
  pthread_mutex_unlock(&lock);
}

/* ---- workers ---- */

void lr_metrics_add_worker(lr_lworker_t *lw) {
  if (n_workers < MAX_WORKERS) {
    lworkers[n_workers] = lw;
    workers[n_workers++] = lw->w;
  }
}

/* in the worker: its gauges, read by a scrape from any thread */
static void snapshot(lr_lworker_t *lw) {
  lr_worker_t *w = lw->w;
  lr_metrics_t *m = w->metrics;
  unsigned c[4] = {0};
  for (lr_link_t *l = w->conns.next; l != &w->conns; l = l->next) {
    lr_conn_t *conn = LR_CONTAINER_OF(l, lr_conn_t, all);
    c[conn->proto == &lr_http1_proto ? 0 : conn->proto == &lr_http2_proto ? 1 : 2]++;
    if (conn->tls) c[3]++;
  }
  for (int k = 0; k < 4; k++) __atomic_store_n(&m->conns[k], c[k], __ATOMIC_RELAXED);
  uint64_t mem = lw->app ? lw->app->mem : 0;
  if (lw->starting && lw->starting != lw->app) mem += lw->starting->mem;
  __atomic_store_n(&m->lua_mem, mem, __ATOMIC_RELAXED);
  __atomic_store_n(&m->handlers, lw->n_live, __ATOMIC_RELAXED);
  __atomic_store_n(&m->tasks, lr_tasks_count(lw), __ATOMIC_RELAXED);
  __atomic_store_n(&m->versions, __atomic_load_n(&lw->n_apps, __ATOMIC_RELAXED), __ATOMIC_RELAXED);
}

static void on_snap(uv_timer_t *t) { snapshot(t->data); }

/* in the worker, as a version starts: counters on if anything wants them */
void lr_metrics_worker_start(lr_lworker_t *lw) {
  lr_worker_t *w = lw->w;
  if (!__atomic_load_n(&lr_metrics_wanted, __ATOMIC_RELAXED) || w->metrics) return;
  lr_metrics_t *m = calloc(1, sizeof *m);
  if (m == NULL) return;
  uv_timer_init(&w->loop, &m->snap);
  m->snap.data = lw;
  uv_timer_start(&m->snap, on_snap, SNAP_MS, SNAP_MS);
  uv_unref((uv_handle_t *)&m->snap);
  __atomic_store_n(&w->metrics, m, __ATOMIC_RELEASE);
  snapshot(lw);
}

/* after lr_worker_destroy (the timer handle is closed by then) */
void lr_metrics_worker_free(lr_worker_t *w) {
  free(w->metrics);
  w->metrics = NULL;
}

void lr_metrics_count(lr_lworker_t *lw, int what) {
  lr_metrics_t *m = lw->w->metrics;
  if (m == NULL) return;
  uint64_t *p = what == LR_MET_BUDGET ? &m->budget_kills
                : what == LR_MET_MEMORY ? &m->memory_errors
                : what == LR_MET_HANDLER_TIMEOUT ? &m->handler_timeouts
                : what == LR_MET_RELOAD_OK ? &m->reloads_ok
                                           : &m->reloads_rejected;
  __atomic_store_n(p, *p + 1, __ATOMIC_RELAXED);
}

/* ---- Lua: core.metrics_* ---- */

static int l_on(lua_State *L) {
  lua_pushboolean(L, __atomic_load_n(&lr_metrics_wanted, __ATOMIC_RELAXED));
  return 1;
}

static int l_want(lua_State *L) {
  (void)L;
  __atomic_store_n(&lr_metrics_wanted, 1, __ATOMIC_RELAXED);
  return 0;
}

/* route id for a pattern: the same pattern keeps its id across reloads */
static int l_route(lua_State *L) {
  const char *p = luaL_checkstring(L, 1);
  unsigned id = 0;
  pthread_mutex_lock(&lock);
  for (unsigned i = 1; i < n_routes; i++)
    if (strcmp(routes[i], p) == 0) id = i;
  if (id == 0 && n_routes < LR_MET_ROUTES && (routes[n_routes] = strdup(p))) id = n_routes++;
  pthread_mutex_unlock(&lock);
  lua_pushinteger(L, id); /* 0: too many routes, counted as "" */
  return 1;
}

static int l_tag(lua_State *L) {
  lr_req_t *r = luaL_checkudata(L, 1, LR_REQ_MT);
  if (r->s) {
    r->s->route = (unsigned)lua_tointeger(L, 2);
    if (r->s->t0 == 0 && r->s->worker->metrics) r->s->t0 = uv_hrtime();
  }
  return 0;
}

static int l_text(lua_State *L) {
  lr_buf_t b = {0};
  lr_metrics_render(&b);
  lua_pushlstring(L, b.base ? b.base : "", b.len);
  lr_buf_free(&b);
  return 1;
}

/* metric_new(kind, name, help, {labels}, {buckets}) -> id; the same name
 * again (a reload, another worker) gets the same family if it matches */
static int l_new(lua_State *L) {
  int kind = luaL_checkoption(L, 1, NULL, kinds);
  const char *name = luaL_checkstring(L, 2);
  const char *help = luaL_checkstring(L, 3);
  luaL_checktype(L, 4, LUA_TTABLE);
  int nl = (int)luaL_len(L, 4);
  luaL_argcheck(L, nl <= MAX_LABELS, 4, "at most 8 labels");
  double bounds[MAX_BUCKETS];
  int nb = 0;
  if (kind == HISTOGRAM) {
    if (lua_istable(L, 5)) {
      nb = (int)luaL_len(L, 5);
      luaL_argcheck(L, nb >= 1 && nb <= MAX_BUCKETS, 5, "1 to 32 buckets");
      for (int i = 0; i < nb; i++) {
        lua_rawgeti(L, 5, i + 1);
        bounds[i] = luaL_checknumber(L, -1);
        lua_pop(L, 1);
        luaL_argcheck(L, i == 0 || bounds[i] > bounds[i - 1], 5, "buckets must increase");
      }
    } else {
      static const double def[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
      nb = 11;
      memcpy(bounds, def, sizeof def);
    }
  }
  const char *labels[MAX_LABELS];
  for (int i = 0; i < nl; i++) {
    lua_rawgeti(L, 4, i + 1);
    labels[i] = luaL_checkstring(L, -1);
    lua_pop(L, 1); /* still referenced by the table */
  }
  pthread_mutex_lock(&lock);
  int id = -1;
  const char *why = NULL;
  for (int i = 0; i < n_families; i++) {
    if (strcmp(families[i].name, name) != 0) continue;
    id = i;
    if (families[i].kind != kind || families[i].n_labels != nl) why = "already defined with another type or labels";
    for (int k = 0; !why && k < nl; k++)
      if (strcmp(families[i].labels[k], labels[k]) != 0) why = "already defined with other labels";
  }
  if (id < 0 && n_families >= MAX_FAMILIES) why = "too many metrics (at most 256)";
  if (id < 0 && !why) {
    family_t *f = &families[n_families];
    f->name = strdup(name);
    f->help = strdup(help);
    f->kind = kind;
    f->n_labels = nl;
    for (int k = 0; k < nl; k++) f->labels[k] = strdup(labels[k]);
    f->n_buckets = nb;
    memcpy(f->bounds, bounds, sizeof(double) * (size_t)nb);
    id = n_families++;
  }
  pthread_mutex_unlock(&lock);
  if (why) return luaL_error(L, "metric %s: %s", name, why);
  lua_pushinteger(L, id);
  return 1;
}

static series_t *series_of(family_t *f, const char *key) {
  for (size_t i = 0; i < f->n_series; i++)
    if (strcmp(f->series[i].key, key) == 0) return &f->series[i];
  if (f->n_series == f->cap_series) {
    size_t cap = f->cap_series ? f->cap_series * 2 : 8;
    series_t *n = realloc(f->series, cap * sizeof *n);
    if (n == NULL) return NULL;
    f->series = n;
    f->cap_series = cap;
  }
  series_t *s = &f->series[f->n_series];
  memset(s, 0, sizeof *s);
  s->key = strdup(key);
  if (f->kind == HISTOGRAM) s->buckets = calloc((size_t)f->n_buckets + 1, sizeof *s->buckets);
  if (s->key == NULL || (f->kind == HISTOGRAM && s->buckets == NULL)) {
    free(s->key);
    free(s->buckets);
    return NULL;
  }
  f->n_series++;
  return s;
}

/* metric_update(id, op, value, label values...): op "add" | "set" | "observe" */
static int l_update(lua_State *L) {
  int id = (int)luaL_checkinteger(L, 1);
  const char *op = luaL_checkstring(L, 2);
  double v = luaL_checknumber(L, 3);
  luaL_argcheck(L, id >= 0 && id < n_families, 1, "no such metric");
  int top = lua_gettop(L); /* before the buffer's own slot */
  luaL_Buffer key;
  luaL_buffinit(L, &key);
  for (int i = 4; i <= top; i++) {
    if (i > 4) luaL_addchar(&key, '\x1f');
    size_t n;
    const char *s = luaL_checklstring(L, i, &n);
    luaL_addlstring(&key, s, n);
  }
  luaL_pushresult(&key);
  const char *k = lua_tostring(L, -1);
  pthread_mutex_lock(&lock);
  family_t *f = &families[id];
  series_t *s = top - 3 == f->n_labels ? series_of(f, k) : NULL;
  if (s) {
    if (op[0] == 'a')
      s->value += v;
    else if (op[0] == 's')
      s->value = v;
    else {
      int b = 0;
      while (b < f->n_buckets && v > f->bounds[b]) b++;
      s->buckets[b]++;
      s->sum += v;
      s->count++;
    }
  }
  pthread_mutex_unlock(&lock);
  if (s == NULL) return luaL_error(L, "metric %s: want %d label values", f->name, f->n_labels);
  return 0;
}

void lr_metrics_open(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"metrics_on", l_on},     {"metrics_want", l_want}, {"metric_route", l_route}, {"metric_tag", l_tag},
      {"metrics_text", l_text}, {"metric_new", l_new},    {"metric_update", l_update}, {NULL, NULL},
  };
  luaL_setfuncs(L, fns, 0);
}

/* ---- the --metrics listener: GET /metrics, one request per connection ---- */

typedef struct {
  uv_tcp_t tcp;
  uv_write_t wr;
  char in[2048];
  size_t len;
  lr_buf_t out;
  lr_link_t link;
} client_t;

static uv_tcp_t server;
static int server_on;
static lr_link_t clients = {&clients, &clients};
static unsigned n_clients;

static void on_client_closed(uv_handle_t *h) {
  client_t *c = h->data;
  lr_buf_free(&c->out);
  free(c);
  n_clients--;
}

static void client_close(client_t *c) {
  if (uv_is_closing((uv_handle_t *)&c->tcp)) return;
  lr_link_unlink(&c->link);
  uv_close((uv_handle_t *)&c->tcp, on_client_closed);
}

static void on_written(uv_write_t *w, int status) {
  (void)status;
  client_close(w->data);
}

static void respond(client_t *c, int status, const char *reason, const char *body, size_t len) {
  uv_read_stop((uv_stream_t *)&c->tcp);
  lr_buf_t head = {0};
  put(&head,
      "HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %zu\r\nconnection: close\r\n\r\n", status, reason,
      status == 200 ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain", len);
  lr_buf_reserve(&head, len);
  if (head.base && head.cap - head.len >= len) {
    memcpy(head.base + head.len, body, len);
    head.len += len;
  }
  c->out = head;
  uv_buf_t b = uv_buf_init(c->out.base, (unsigned)c->out.len);
  c->wr.data = c;
  if (uv_write(&c->wr, (uv_stream_t *)&c->tcp, &b, 1, on_written)) client_close(c);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)hint;
  client_t *c = h->data;
  *buf = uv_buf_init(c->in + c->len, (unsigned)(sizeof c->in - c->len - 1));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  client_t *c = s->data;
  if (n < 0) {
    client_close(c);
    return;
  }
  c->len += (size_t)n;
  c->in[c->len] = '\0';
  if (strstr(c->in, "\r\n\r\n") == NULL && strstr(c->in, "\n\n") == NULL) {
    if (c->len >= sizeof c->in - 1) respond(c, 431, "Request Header Fields Too Large", "too large\n", 10);
    return;
  }
  if (strncmp(c->in, "GET /metrics ", 13) == 0 || strncmp(c->in, "GET /metrics?", 13) == 0) {
    lr_buf_t body = {0};
    lr_metrics_render(&body);
    respond(c, 200, "OK", body.base ? body.base : "", body.len);
    lr_buf_free(&body);
  } else {
    respond(c, 404, "Not Found", "GET /metrics\n", 13);
  }
}

static void on_connection(uv_stream_t *srv, int status) {
  if (status < 0) return;
  client_t *c = calloc(1, sizeof *c);
  if (c == NULL) return;
  uv_tcp_init(srv->loop, &c->tcp);
  c->tcp.data = c;
  n_clients++;
  lr_list_push(&clients, &c->link);
  if (uv_accept(srv, (uv_stream_t *)&c->tcp) || n_clients > 64) {
    client_close(c); /* a scrape endpoint needs few connections */
    return;
  }
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

int lr_metrics_listen(uv_loop_t *loop, lr_listen_addr_t *a, char *err, size_t errlen) {
  struct sockaddr_storage ss;
  int r = strchr(a->host, ':') ? uv_ip6_addr(a->host, a->port, (struct sockaddr_in6 *)&ss)
                               : uv_ip4_addr(a->host, a->port, (struct sockaddr_in *)&ss);
  if (r == 0) r = uv_tcp_init(loop, &server);
  if (r == 0) {
    server_on = 1;
    r = uv_tcp_bind(&server, (struct sockaddr *)&ss, 0);
  }
  if (r == 0) r = uv_listen((uv_stream_t *)&server, 128, on_connection);
  if (r) {
    snprintf(err, errlen, "--metrics %s:%d: %s", a->host, a->port, uv_strerror(r));
    return -1;
  }
  int sl = sizeof ss;
  uv_tcp_getsockname(&server, (struct sockaddr *)&ss, &sl);
  a->port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                          : ((struct sockaddr_in6 *)&ss)->sin6_port);
  __atomic_store_n(&lr_metrics_wanted, 1, __ATOMIC_RELAXED);
  return 0;
}

void lr_metrics_close(void) {
  if (server_on && !uv_is_closing((uv_handle_t *)&server)) uv_close((uv_handle_t *)&server, NULL);
  while (!lr_list_empty(&clients)) client_close(LR_CONTAINER_OF(clients.next, client_t, link));
}
