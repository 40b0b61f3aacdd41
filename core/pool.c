/* The keep-alive pool of outbound connections, one per worker, keyed by
 * (host, port, tls, sni, verify, ca): lr_client_t.key.
 *
 * A pooled connection keeps reading: if the server closes it (or sends
 * anything) meanwhile, client.c sees it and closes it at once. The loop may
 * not have polled since, so a take also peeks at the socket: a FIN or stray
 * bytes waiting in the kernel mean the connection is not handed out. Not
 * when the request can be sent again (opts.replayable): the owner's one
 * retry on a fresh connection covers that race, and the peek would be a
 * syscall on every request. What the probe catches is a close that arrived
 * since the loop last polled, however long the connection was idle; one
 * noticed earlier has closed it already.
 * Pooled handles are unreferenced: they never keep a stopping worker alive. */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "lariat.h"
#include "outbound.h"

#define SWEEP_MS 1000

static int healthy(lr_client_t *cl, int replayable) {
  if (cl->state != LR_CL_OPEN || cl->eof || cl->in.len || (cl->conn.flags & LR_CF_CLOSING)) return 0;
  if (replayable) return 1;
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)&cl->conn.tcp, &fd) != 0) return 0;
  char b;
  ssize_t r = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
  return r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

lr_client_t *lr__pool_take(lr_outbound_t *ob, const char *key, uint32_t hash, int replayable) {
  /* newest first: the warmest connection, the least likely to have been timed out by the server */
  lr_link_t *l = ob->idle.prev;
  while (l != &ob->idle) {
    lr_client_t *cl = LR_CONTAINER_OF(l, lr_client_t, pool);
    l = l->prev;
    if (cl->key_hash != hash || strcmp(cl->key, key) != 0) continue;
    lr__pool_remove(ob, cl);
    if (!healthy(cl, replayable)) {
      lr_conn_close(&cl->conn);
      continue;
    }
    uv_ref((uv_handle_t *)&cl->conn.tcp);
    return cl;
  }
  return NULL;
}

void lr__pool_remove(lr_outbound_t *ob, lr_client_t *cl) {
  if (!lr_link_linked(&cl->pool)) return;
  lr_link_unlink(&cl->pool);
  ob->n_idle--;
}

int lr__pool_evict_one(lr_outbound_t *ob) {
  if (lr_list_empty(&ob->idle)) return 0;
  lr_client_t *cl = LR_CONTAINER_OF(ob->idle.next, lr_client_t, pool);
  lr__pool_remove(ob, cl);
  lr_conn_close(&cl->conn);
  return 1;
}

static void on_sweep(uv_timer_t *t) {
  lr_outbound_t *ob = t->data;
  uint64_t now = uv_now(&ob->w->loop);
  lr_link_t *l = ob->idle.next;
  while (l != &ob->idle) {
    lr_client_t *cl = LR_CONTAINER_OF(l, lr_client_t, pool);
    l = l->next;
    if (cl->idle_deadline <= now) {
      lr__pool_remove(ob, cl);
      lr_conn_close(&cl->conn);
    }
  }
  if (lr__h2c_sweep(ob, now) == 0 && ob->n_idle == 0) {
    uv_timer_stop(&ob->sweep);
    ob->sweep_on = 0;
  }
}

void lr__pool_sweep_start(lr_outbound_t *ob) {
  if (ob->sweep_on) return;
  uv_timer_start(&ob->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
  ob->sweep_on = 1;
}

void lr__pool_put(lr_outbound_t *ob, lr_client_t *cl, uint64_t idle_ms, unsigned size) {
  unsigned same = 0;
  lr_client_t *oldest = NULL;
  /* fewer idle connections than the cap in all: none of this key can be at
   * it, and the walk (with a strcmp per idle connection, ~1,500 instructions
   * a request with 25 idle) is skipped */
  for (lr_link_t *l = ob->n_idle >= size ? ob->idle.next : &ob->idle; l != &ob->idle; l = l->next) {
    lr_client_t *o = LR_CONTAINER_OF(l, lr_client_t, pool);
    if (o->key_hash == cl->key_hash && strcmp(o->key, cl->key) == 0 && same++ == 0) oldest = o;
  }
  if (size == 0) {
    lr_conn_close(&cl->conn);
    return;
  }
  if (same >= size && oldest) {
    lr__pool_remove(ob, oldest);
    lr_conn_close(&oldest->conn);
  }
  cl->idle_deadline = uv_now(&ob->w->loop) + idle_ms;
  lr_list_push(&ob->idle, &cl->pool);
  ob->n_idle++;
  uv_unref((uv_handle_t *)&cl->conn.tcp);
  lr_conn_read_start(&cl->conn); /* to see the server close it */
  lr__pool_sweep_start(ob);
}

void lr__pool_close_all(lr_outbound_t *ob) {
  while (lr__pool_evict_one(ob)) {
  }
}
