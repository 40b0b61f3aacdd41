/* A tunnel: a downstream connection switched by 101 (a proxied WebSocket)
 * spliced to an outbound one. Bytes go both ways untouched; each side stops
 * reading while the other has more than LR_OUT_HIGH queued (back-pressure),
 * and either side closing closes the other once its output has left. */
#include <stdlib.h>

#include "lariat.h"

typedef struct tunnel_s {
  lr_conn_t *down;
  lr_client_t *up;
  lr_stream_t *s; /* the upgraded request, released when the downstream goes */
} tunnel_t;

static void up_notify(lr_client_t *cl, int ev) {
  tunnel_t *t = cl->owner;
  if (ev & LR_CEV_READ) {
    if (t->down && cl->in.len) lr_conn_write(t->down, cl->in.base, cl->in.len);
    lr_client_consume(cl, cl->in.len);
    if (t->down && lr_conn_queued(t->down) > LR_OUT_HIGH) lr_conn_read_stop(&cl->conn);
    if (cl->eof && t->down) lr_conn_close_after_write(t->down);
  }
  if ((ev & LR_CEV_DRAIN) && t->down) lr_conn_read_start(t->down);
  if (ev & LR_CEV_CLOSED) {
    t->up = NULL;
    if (t->down) lr_conn_close_after_write(t->down);
  }
}

static void down_read(lr_conn_t *c, const char *data, size_t len) {
  tunnel_t *t = c->proto_state;
  if (t->up == NULL || lr_client_write(t->up, data, len) < 0) {
    lr_conn_close(c);
    return;
  }
  if (lr_client_write_blocked(t->up)) lr_conn_read_stop(c);
}

static void down_eof(lr_conn_t *c) {
  tunnel_t *t = c->proto_state;
  if (t->up) lr_client_close(t->up);
  t->up = NULL;
  lr_conn_close(c);
}

static void down_drain(lr_conn_t *c) {
  tunnel_t *t = c->proto_state;
  if (t->up) lr_conn_read_start(&t->up->conn);
}

static void down_close(lr_conn_t *c) {
  tunnel_t *t = c->proto_state;
  c->proto_state = NULL;
  if (t->up) lr_client_close(t->up);
  if (t->s) lr__stream_conn_release(t->s);
  free(t);
}

static void down_shutdown(lr_conn_t *c) { lr_conn_close_after_write(c); }

static const lr_proto_t tunnel_proto = {
    .name = "tunnel",
    .on_read = down_read,
    .on_eof = down_eof,
    .on_drain = down_drain,
    .on_close = down_close,
    .on_shutdown = down_shutdown,
};

int lr_tunnel_start(lr_stream_t *s, lr_client_t *up, const lr_header_t *h, size_t n) {
  lr_conn_t *c = s->conn;
  tunnel_t *t = calloc(1, sizeof *t);
  if (t == NULL) return UV_ENOMEM;
  lr_buf_t rest = {0};
  if (lr_http1_switch(s, h, n, &tunnel_proto, t, &rest) != 0) {
    free(t);
    return LR_ESTATE;
  }
  t->down = c;
  t->up = up;
  t->s = s;
  up->notify = up_notify;
  up->owner = t;
  if (rest.len) down_read(c, rest.base, rest.len); /* sent by the client right after its request */
  lr_buf_free(&rest);
  if (c->flags & LR_CF_CLOSING) return 0;
  if (up->in.len || up->eof) up_notify(up, LR_CEV_READ); /* sent by the server right after its 101 */
  return 0;
}
