/* Private to the outbound side of the core (client.c, dns.c, pool.c,
 * http1_client.c): the per-worker state they share. */
#ifndef LARIAT_OUTBOUND_H
#define LARIAT_OUTBOUND_H

#include "lariat.h"

typedef struct lr_outbound_s {
  lr_worker_t *w;
  struct lr_dns_s *dns;  /* dns.c */
  lr_link_t idle;        /* pool.c: pooled connections, oldest first */
  unsigned n_idle;
  unsigned n_conns;      /* outbound connections open, pooled ones included */
  lr_link_t h2;          /* http2_client.c: sessions, one per origin */
  uv_timer_t sweep;      /* pool.c: closes pooled connections past their idle deadline */
  int sweep_on;
} lr_outbound_t;

lr_outbound_t *lr__outbound(lr_worker_t *w); /* created on first use; NULL when out of memory */
void lr__dns_free(lr_worker_t *w, struct lr_dns_s *d);
void lr__h2c_free_all(lr_outbound_t *ob);
unsigned lr__h2c_sweep(lr_outbound_t *ob, uint64_t now); /* close idle sessions past their time */
void lr__pool_sweep_start(lr_outbound_t *ob);            /* the sweep runs while anything is idle */

lr_client_t *lr__pool_take(lr_outbound_t *ob, const char *key, uint32_t hash, int replayable);
void lr__pool_put(lr_outbound_t *ob, lr_client_t *cl, uint64_t idle_ms, unsigned size);
void lr__pool_remove(lr_outbound_t *ob, lr_client_t *cl);
int lr__pool_evict_one(lr_outbound_t *ob); /* close the oldest idle connection: 1, or 0 if none */
void lr__pool_close_all(lr_outbound_t *ob);

#endif
