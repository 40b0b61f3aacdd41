/* Request metrics, counted per worker when a stream ends (at the access-log
 * point, so core answers like 413 count too): by route, method and status
 * class, latency per route, response bytes, protocol. Only the worker writes
 * its counters (relaxed stores: plain increments); a scrape from another
 * thread reads and sums them, so the request path takes no lock. */
#include <string.h>

#include "lariat.h"

const double lr_met_bounds[LR_MET_BUCKETS - 1] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
const char *const lr_met_methods[LR_MET_METHODS] = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"};

static int method_index(const lr_str_t *m) {
  switch (m->len) {
  case 3:
    if (memcmp(m->base, "GET", 3) == 0) return 0;
    if (memcmp(m->base, "PUT", 3) == 0) return 3;
    break;
  case 4:
    if (memcmp(m->base, "HEAD", 4) == 0) return 1;
    if (memcmp(m->base, "POST", 4) == 0) return 2;
    break;
  case 5:
    if (memcmp(m->base, "PATCH", 5) == 0) return 5;
    break;
  case 6:
    if (memcmp(m->base, "DELETE", 6) == 0) return 4;
    break;
  case 7:
    if (memcmp(m->base, "OPTIONS", 7) == 0) return 6;
    break;
  }
  return 7;
}

#define BUMP(x, n) __atomic_store_n(&(x), (x) + (n), __ATOMIC_RELAXED)

void lr_metrics_stream_done(lr_worker_t *w, lr_stream_t *s) {
  lr_metrics_t *m = w->metrics;
  unsigned route = s->route < LR_MET_ROUTES ? s->route : 0;
  int cls = s->status / 100 - 1;
  if (cls < 0 || cls > 4) cls = 4;
  BUMP(m->req[route][method_index(&s->method)][cls], 1);
  BUMP(m->bytes_out, s->bytes_sent);
  BUMP(m->streams[s->version == 20], 1);
  if (s->t0) {
    uint64_t ns = uv_hrtime() - s->t0;
    double secs = (double)ns / 1e9;
    int b = 0;
    while (b < LR_MET_BUCKETS - 1 && secs > lr_met_bounds[b]) b++;
    BUMP(m->dur[route][b], 1);
    BUMP(m->dur_ns[route], ns);
  }
}
