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

/* ---- a stream tunnel: one HTTP/2 stream (an RFC 8441 extended CONNECT the
 * proxy answered 200) spliced to an outbound connection ----
 *
 * The stream's handler coroutine stays with it and calls lr_stunnel_pump
 * whenever either side has news: the stream's through the app's wake hook
 * (s->wait, set here), the connection's through `wake`. Back-pressure both
 * ways: the client's DATA is read off the stream (which is what opens its
 * window) only while the upstream socket takes more, and the upstream is read
 * only while the stream can send. */
struct lr_stunnel_s {
  lr_stream_t *s;
  lr_client_t *up;    /* NULL once it closed */
  void (*wake)(void *arg);
  void *arg;
  lr_buf_t buf;       /* the client's bytes on their way up */
  lr_buf_t rest;      /* what the upstream sent before it closed, not yet relayed */
  int down_fin;       /* the client ended its side (END_STREAM): the upstream closes after its output */
  int up_clean;       /* the upstream finished (EOF), rather than failed */
};

static void st_up_notify(lr_client_t *cl, int ev) {
  lr_stunnel_t *t = cl->owner;
  if (ev & LR_CEV_CLOSED) { /* what it sent is the tunnel's now: cl->in goes with cl */
    if (cl->in.len) lr_buf_append(&t->rest, cl->in.base, cl->in.len);
    t->up_clean = cl->eof || t->down_fin;
    t->up = NULL;
  }
  if (ev) t->wake(t->arg);
}

lr_stunnel_t *lr_stunnel_start(lr_stream_t *s, lr_client_t *up, void (*wake)(void *arg), void *arg) {
  lr_stunnel_t *t = calloc(1, sizeof *t);
  if (t == NULL) return NULL;
  t->s = s;
  t->up = up;
  t->wake = wake;
  t->arg = arg;
  up->notify = st_up_notify;
  up->owner = t;
  return t;
}

int lr_stunnel_pump(lr_stunnel_t *t) {
  lr_stream_t *s = t->s;
  if (s->conn == NULL || (s->flags & (LR_SF_RESET | LR_SF_FINISHED))) return 1; /* the client is gone */
  /* client → upstream, as far as the upstream socket takes it */
  while (t->up && !t->down_fin && !lr_client_write_blocked(t->up)) {
    int fin;
    t->buf.len = 0;
    int n = lr_stream_read_body(s, &t->buf, 64 * 1024, &fin);
    if (n < 0) return 1;
    if (n > 0 && lr_client_write(t->up, t->buf.base, t->buf.len) < 0) break;
    if (fin) { /* a TCP FIN's h2 twin: the upstream goes once it has what was sent */
      t->down_fin = 1;
      lr_conn_close_after_write(&t->up->conn);
    }
    if (n == 0 || fin) break;
  }
  /* upstream → client, while the stream can send */
  lr_buf_t *in = t->up ? &t->up->in : &t->rest;
  if (in->len && !lr_stream_write_blocked(s)) {
    lr_stream_send_data(s, in->base, in->len, NULL, NULL);
    if (t->up)
      lr_client_consume(t->up, in->len); /* reading resumes */
    else
      in->len = 0;
  }
  if (in->len == 0 && (t->up == NULL || t->up->eof)) { /* the upstream ended: so does the stream */
    if (t->up == NULL && !t->up_clean)
      lr_stream_abort(s); /* reset, not closed: the client sees a reset too */
    else
      lr_stream_finish(s);
    return 1;
  }
  if (in->len && t->up) lr_conn_read_stop(&t->up->conn); /* until the stream drains */
  int w = 0;
  if (t->up && !t->down_fin && !lr_client_write_blocked(t->up)) w |= LR_WAIT_BODY;
  if (in->len) w |= LR_WAIT_DRAIN;
  s->wait = w; /* and the upstream's events come through wake */
  return 0;
}

void lr_stunnel_free(lr_stunnel_t *t) {
  if (t == NULL) return;
  if (t->up) lr_client_close(t->up);
  lr_buf_free(&t->buf);
  lr_buf_free(&t->rest);
  free(t);
}
