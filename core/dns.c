/* DNS without blocking the loop: getaddrinfo(3) runs on libuv's thread pool
 * (uv_getaddrinfo), so /etc/hosts, nsswitch and IPv6 behave as for every
 * other program on the machine; answers are cached per worker for
 * LR_DNS_TTL_MS (getaddrinfo does not report record TTLs).
 *
 * Why not c-ares: a hit in the cache below costs a string compare and a
 * copy, which is what every request after the first pays; a miss costs one
 * thread-pool round trip, small next to the connect that follows. c-ares would add a dependency and its
 * own /etc/hosts and search-domain handling, for the cold path only.
 *
 * Concurrent misses for one name share one lookup. */
#include <netdb.h>
#include <stdlib.h>
#include <string.h>

#include "lariat.h"
#include "outbound.h"

#define LR_DNS_TTL_MS 30000
#define LR_DNS_NEG_TTL_MS 1000
#define LR_DNS_CACHE 128

typedef struct dns_entry_s {
  char *name;
  struct sockaddr_storage addrs[LR_DNS_MAX];
  int n;        /* > 0 addresses; < 0 the error of the lookup */
  uint64_t expires;
} dns_entry_t;

/* one getaddrinfo in flight for a name, and who waits for it */
typedef struct dns_lookup_s {
  uv_getaddrinfo_t req;
  lr_worker_t *w; /* NULL once the worker let go (exit): the callback only frees */
  char *name;
  lr_link_t waiters;
  lr_link_t link; /* in the worker's list of lookups */
} dns_lookup_t;

struct lr_dns_query_s {
  lr_link_t link; /* in its lookup's waiters */
  lr_dns_cb cb;
  void *arg;
};

struct lr_dns_s {
  dns_entry_t cache[LR_DNS_CACHE];
  unsigned n, next_evict;
  lr_link_t lookups;
};

static struct lr_dns_s *dns_state(lr_worker_t *w) {
  lr_outbound_t *ob = lr__outbound(w);
  if (ob == NULL) return NULL;
  if (ob->dns == NULL) {
    ob->dns = calloc(1, sizeof *ob->dns);
    if (ob->dns) lr_list_init(&ob->dns->lookups);
  }
  return ob->dns;
}

static int literal(const char *name, struct sockaddr_storage *out) {
  memset(out, 0, sizeof *out);
  if (uv_ip4_addr(name, 0, (struct sockaddr_in *)out) == 0) return 1;
  if (uv_ip6_addr(name, 0, (struct sockaddr_in6 *)out) == 0) return 1;
  return 0;
}

int lr_dns_cached(lr_worker_t *w, const char *name, struct sockaddr_storage *out, int max) {
  if (max > 0 && literal(name, out)) return 1;
  struct lr_dns_s *d = dns_state(w);
  if (d == NULL) return 0;
  uint64_t now = uv_now(&w->loop);
  for (unsigned i = 0; i < d->n; i++) {
    dns_entry_t *e = &d->cache[i];
    if (strcmp(e->name, name) != 0) continue;
    if (e->expires <= now) return 0;
    if (e->n < 0) return e->n;
    int n = e->n < max ? e->n : max;
    memcpy(out, e->addrs, (size_t)n * sizeof *out);
    return n;
  }
  return 0;
}

static dns_entry_t *cache_put(struct lr_dns_s *d, const char *name) {
  for (unsigned i = 0; i < d->n; i++)
    if (strcmp(d->cache[i].name, name) == 0) return &d->cache[i];
  dns_entry_t *e;
  if (d->n < LR_DNS_CACHE) {
    e = &d->cache[d->n++];
  } else {
    e = &d->cache[d->next_evict++ % LR_DNS_CACHE];
    free(e->name);
  }
  e->name = strdup(name);
  if (e->name == NULL) {
    d->n--;
    return NULL;
  }
  return e;
}

static void lookup_free(dns_lookup_t *lk) {
  lr_link_unlink(&lk->link);
  free(lk->name);
  free(lk);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  dns_lookup_t *lk = req->data;
  struct sockaddr_storage addrs[LR_DNS_MAX];
  int n = 0;
  for (struct addrinfo *ai = res; ai && n < LR_DNS_MAX; ai = ai->ai_next) {
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
    int dup = 0;
    for (int i = 0; i < n; i++)
      if (memcmp(&addrs[i], ai->ai_addr, ai->ai_addrlen) == 0) dup = 1;
    if (dup) continue;
    memset(&addrs[n], 0, sizeof addrs[n]);
    memcpy(&addrs[n++], ai->ai_addr, ai->ai_addrlen);
  }
  if (res) uv_freeaddrinfo(res);
  if (lk->w == NULL) {
    lookup_free(lk);
    return;
  }
  if (status == 0 && n == 0) status = UV_EAI_NONAME;
  struct lr_dns_s *d = dns_state(lk->w);
  if (status != UV_ECANCELED && d) {
    dns_entry_t *e = cache_put(d, lk->name);
    if (e) {
      e->n = status < 0 ? status : n;
      if (n) memcpy(e->addrs, addrs, (size_t)n * sizeof *addrs);
      e->expires = uv_now(&lk->w->loop) + (status < 0 ? LR_DNS_NEG_TTL_MS : LR_DNS_TTL_MS);
    }
  }
  /* a waiter's callback may cancel others or start new queries: take them one at a time */
  while (!lr_list_empty(&lk->waiters)) {
    lr_dns_query_t *q = LR_CONTAINER_OF(lk->waiters.next, lr_dns_query_t, link);
    lr_link_unlink(&q->link);
    lr_dns_cb cb = q->cb;
    void *arg = q->arg;
    free(q);
    cb(arg, status < 0 ? status : 0, addrs, status < 0 ? 0 : n);
  }
  lookup_free(lk);
}

lr_dns_query_t *lr_dns_query(lr_worker_t *w, const char *name, lr_dns_cb cb, void *arg) {
  struct lr_dns_s *d = dns_state(w);
  if (d == NULL) return NULL;
  lr_dns_query_t *q = calloc(1, sizeof *q);
  if (q == NULL) return NULL;
  q->cb = cb;
  q->arg = arg;
  for (lr_link_t *l = d->lookups.next; l != &d->lookups; l = l->next) {
    dns_lookup_t *lk = LR_CONTAINER_OF(l, dns_lookup_t, link);
    if (strcmp(lk->name, name) == 0) {
      lr_list_push(&lk->waiters, &q->link);
      return q;
    }
  }
  dns_lookup_t *lk = calloc(1, sizeof *lk);
  if (lk == NULL || (lk->name = strdup(name)) == NULL) {
    free(lk);
    free(q);
    return NULL;
  }
  lk->w = w;
  lk->req.data = lk;
  lr_list_init(&lk->waiters);
  struct addrinfo hints = {0};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_ADDRCONFIG;
  if (uv_getaddrinfo(&w->loop, &lk->req, on_resolved, name, NULL, &hints) != 0) {
    free(lk->name);
    free(lk);
    free(q);
    return NULL;
  }
  lr_list_push(&d->lookups, &lk->link);
  lr_list_push(&lk->waiters, &q->link);
  return q;
}

void lr_dns_cancel(lr_dns_query_t *q) {
  if (q == NULL) return;
  lr_link_unlink(&q->link); /* the lookup runs on and fills the cache */
  free(q);
}

void lr__dns_free(lr_worker_t *w, struct lr_dns_s *d) {
  if (d == NULL) return;
  while (!lr_list_empty(&d->lookups)) {
    dns_lookup_t *lk = LR_CONTAINER_OF(d->lookups.next, dns_lookup_t, link);
    lr_link_unlink(&lk->link);
    lk->w = NULL;
    while (!lr_list_empty(&lk->waiters)) {
      lr_dns_query_t *q = LR_CONTAINER_OF(lk->waiters.next, lr_dns_query_t, link);
      lr_link_unlink(&q->link);
      free(q);
    }
    uv_cancel((uv_req_t *)&lk->req);
  }
  for (unsigned i = 0; i < d->n; i++) free(d->cache[i].name);
  free(d);
  (void)w;
}
