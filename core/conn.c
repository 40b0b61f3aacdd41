/* A connection: the socket, its output queue and its timeout. The protocol
 * (HTTP/1.1, HTTP/2) sits on top through lr_proto_t.
 *
 * Output is queued, never written at once: every connection that produced
 * bytes is flushed once per loop phase (worker.c), so a batch of responses
 * leaves in one writev. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* POLLRDHUP */
#endif
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lariat.h"

size_t lr_out_high = 64 * 1024;

/* ---- output queue ---- */

static int outq_seg(lr_outq_t *q) {
  if (q->n == q->cap) {
    unsigned cap = q->cap ? q->cap * 2 : 8;
    lr_seg_t *s = realloc(q->segs, cap * sizeof *s);
    if (s == NULL) return UV_ENOMEM;
    q->segs = s;
    q->cap = cap;
  }
  return 0;
}

static char *outq_reserve(lr_outq_t *q, size_t n) {
  if (lr_buf_reserve(&q->bytes, n)) return NULL;
  return q->bytes.base + q->bytes.len;
}

static void outq_commit(lr_outq_t *q, size_t n) {
  if (n == 0) return;
  lr_seg_t *last = q->n ? &q->segs[q->n - 1] : NULL;
  if (last && last->ext == NULL && last->off + last->len == q->bytes.len) {
    last->len += n;
  } else {
    if (outq_seg(q)) return; /* out of memory: the bytes are dropped with the connection */
    q->segs[q->n++] = (lr_seg_t){NULL, q->bytes.len, n, NULL, NULL};
  }
  q->bytes.len += n;
  q->total += n;
}

static void outq_release(lr_outq_t *q) {
  for (unsigned i = 0; i < q->n; i++)
    if (q->segs[i].release) q->segs[i].release(q->segs[i].arg);
  q->n = 0;
  q->bytes.len = 0;
  q->total = 0;
}

/* nothing queued: the storage goes back to the worker, so an idle
 * connection holds no output buffer and the next response reuses it */
static void outq_park(lr_worker_t *w, lr_outq_t *q) {
  if (q->n || (q->bytes.base == NULL && q->segs == NULL)) return;
  if (w->n_spare_out < sizeof w->spare_out / sizeof *w->spare_out && q->bytes.cap <= 64 * 1024 && q->cap <= 64) {
    w->spare_out[w->n_spare_out++] = (struct lr_spare_out_s){q->bytes.base, q->bytes.cap, q->segs, q->cap};
  } else {
    free(q->bytes.base);
    free(q->segs);
  }
  *q = (lr_outq_t){0};
}

static void outq_unpark(lr_worker_t *w, lr_outq_t *q) {
  if (q->bytes.base || q->segs || w->n_spare_out == 0) return;
  struct lr_spare_out_s sp = w->spare_out[--w->n_spare_out];
  q->bytes = (lr_buf_t){sp.bytes, 0, sp.cap};
  q->segs = sp.segs;
  q->cap = sp.segcap;
}

static void outq_free(lr_outq_t *q) {
  outq_release(q);
  lr_buf_free(&q->bytes);
  free(q->segs);
  q->segs = NULL;
  q->cap = 0;
}

/* ---- writing ---- */

char *lr_conn_reserve(lr_conn_t *c, size_t n) {
  outq_unpark(c->worker, &c->out);
  return outq_reserve(&c->out, n);
}

void lr_conn_commit(lr_conn_t *c, size_t n) {
  outq_commit(&c->out, n);
  lr_conn_defer(c);
}

void lr_conn_write(lr_conn_t *c, const void *p, size_t n) {
  outq_unpark(c->worker, &c->out);
  char *d = outq_reserve(&c->out, n);
  if (d == NULL) return;
  memcpy(d, p, n);
  lr_conn_commit(c, n);
}

void lr_conn_write_ref(lr_conn_t *c, const char *p, size_t n, lr_release_cb release, void *arg) {
  outq_unpark(c->worker, &c->out);
  if (c->flags & LR_CF_CLOSING || outq_seg(&c->out)) {
    if (release) release(arg);
    return;
  }
  c->out.segs[c->out.n++] = (lr_seg_t){p, 0, n, release, arg};
  c->out.total += n;
  lr_conn_defer(c);
}

size_t lr_conn_queued(const lr_conn_t *c) { return c->out.total + c->inflight.total; }

void lr_conn_defer(lr_conn_t *c) {
  if (c->flags & LR_CF_DEFERRED) return;
  c->flags |= LR_CF_DEFERRED;
  lr_list_push(&c->worker->deferred, &c->deferred);
}

static void on_close(uv_handle_t *h) {
  lr_conn_t *c = h->data;
  if (c->tls) lr__tls_free(c);
  if (c->proxy) lr__proxy_free(c);
  outq_free(&c->out);
  outq_free(&c->inflight);
  free(c);
}

void lr_conn_close(lr_conn_t *c) {
  if (c->flags & LR_CF_CLOSING) return;
  c->flags |= LR_CF_CLOSING;
  lr_link_unlink(&c->timeout.link);
  lr_link_unlink(&c->send_to.link);
  lr_link_unlink(&c->hup_to.link);
  lr_link_unlink(&c->deferred);
  c->flags &= ~LR_CF_DEFERRED;
  lr_link_unlink(&c->all);
  if (c->listener) /* accepted, not outbound (client.c counts its own) */
    __atomic_fetch_sub(&c->worker->n_conns, 1, __ATOMIC_RELAXED); /* main reads it for the drain log */
  lr__worker_conn_closed(c->worker); /* accepting may have paused for a descriptor */
  if (c->proto && c->proto->on_close) c->proto->on_close(c);
  /* queued external segments belong to their owners: release them now; an
   * in-flight write still references its buffers until its callback runs */
  outq_release(&c->out);
  uv_close((uv_handle_t *)&c->tcp, on_close);
}

void lr_conn_close_after_write(lr_conn_t *c) {
  c->flags |= LR_CF_CLOSE_AFTER_WRITE;
  lr_conn_defer(c);
}

void lr_conn_close_linger(lr_conn_t *c) {
  c->flags |= LR_CF_LINGER;
  lr_conn_close_after_write(c);
}

/* the response is out: send FIN, let the protocol go, and swallow input */
__attribute__((cold, noinline)) static void start_lingering(lr_conn_t *c) {
  lr_worker_t *w = c->worker;
  if (c->flags & LR_CF_EOF) { /* the peer already closed its side: nothing to wait for */
    lr_conn_close(c);
    return;
  }
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)&c->tcp, &fd) || shutdown(fd, SHUT_WR)) {
    lr_conn_close(c);
    return;
  }
  if (c->proto && c->proto->on_close) c->proto->on_close(c);
  c->proto = NULL;
  c->flags |= LR_CF_LINGERING;
  c->flags &= ~(LR_CF_NEED_RESUME | LR_CF_STALLED);
  lr_link_unlink(&c->send_to.link);
  c->linger_end = uv_now(&w->loop) + w->cfg->lingering_time_ms;
  lr_conn_set_timeout(c, LR_TO_LINGER);
  lr_conn_read_start(c);
}

static void linger_read(lr_conn_t *c, ssize_t n) {
  if (n < 0 || uv_now(&c->worker->loop) >= c->linger_end) {
    lr_conn_close(c);
    return;
  }
  lr_conn_set_timeout(c, LR_TO_LINGER); /* input keeps coming: wait another lingering_timeout */
}

/* ---- send timeout ---- */

/* armed while output waits on the peer: a uv_write the kernel hasn't taken, or
 * a protocol-level stall; (re)armed from now when it wasn't */
__attribute__((noinline)) static void send_timer_update(lr_conn_t *c) {
  if (!(c->flags & (LR_CF_WRITING | LR_CF_STALLED)) || (c->flags & LR_CF_CLOSING)) {
    lr_link_unlink(&c->send_to.link);
    return;
  }
  if (lr_link_linked(&c->send_to.link)) return;
  lr_worker_t *w = c->worker;
  c->send_to.kind = LR_TO_SEND;
  c->send_to.deadline = uv_now(&w->loop) + w->timeout_ms[LR_TO_SEND];
  c->send_mark = c->tcp.write_queue_size;
  lr_list_push(&w->timeouts[LR_TO_SEND], &c->send_to.link);
}

void lr_conn_send_stalled(lr_conn_t *c, int stalled) {
  if (stalled) {
    c->flags |= LR_CF_STALLED;
  } else {
    c->flags &= ~LR_CF_STALLED;
    lr_link_unlink(&c->send_to.link); /* progress: a later stall starts a fresh period */
  }
  send_timer_update(c);
}

static void send_timeout(lr_conn_t *c) {
  /* libuv wrote part of the pending write since the timer was armed: the peer
   * reads, slowly; that is progress (nginx: the timeout is between two writes) */
  if ((c->flags & LR_CF_WRITING) && c->tcp.write_queue_size < c->send_mark) {
    send_timer_update(c);
    return;
  }
  LR_DEBUG("send timeout: the peer took no output for %llu ms",
           (unsigned long long)c->worker->timeout_ms[LR_TO_SEND]);
  lr_conn_close(c);
}

/* ---- hang-up while reading is paused ---- */

/* A paused connection (pipelined input queued, a body the handler reads
 * slowly) is out of epoll, so a client's FIN or RST is not seen until reading
 * resumes, and its handler runs on for nothing. nginx keeps the read event
 * and tests EPOLLRDHUP (ngx_http_test_reading); libuv owns our epoll entry,
 * so we ask the socket once a second instead: POLLRDHUP is set by a FIN even
 * with unread data before it, POLLHUP/POLLERR by a reset. Nothing is read. */
static void hup_arm(lr_conn_t *c) {
  lr_worker_t *w = c->worker;
  lr_link_unlink(&c->hup_to.link);
  c->hup_to.kind = LR_TO_HUP;
  c->hup_to.deadline = uv_now(&w->loop) + w->timeout_ms[LR_TO_HUP];
  lr_list_push(&w->timeouts[LR_TO_HUP], &c->hup_to.link);
}

__attribute__((cold, noinline)) static void hup_probe(lr_conn_t *c) {
  if (!(c->flags & LR_CF_READ_STOPPED) || (c->flags & (LR_CF_CLOSING | LR_CF_EOF | LR_CF_LINGERING)) ||
      c->proto == NULL || c->proto->on_hangup == NULL)
    return;
  uv_os_fd_t fd;
  struct pollfd p = {.events = POLLRDHUP};
  if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) {
    p.fd = fd;
    if (poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
      LR_DEBUG("the peer hung up while reading was paused");
      c->proto->on_hangup(c);
      if (c->flags & LR_CF_CLOSING) return;
    }
  }
  hup_arm(c);
}

void lr__conn_timeout(lr_conn_t *c, int kind) {
  if (kind == LR_TO_SEND)
    send_timeout(c);
  else if (kind == LR_TO_HUP)
    hup_probe(c);
  else if (c->flags & LR_CF_LINGERING)
    lr_conn_close(c);
  else if (c->proto->on_timeout)
    c->proto->on_timeout(c);
  else
    lr_conn_close(c);
}

/* iovecs for the first n segments, stopping before a file body; returns how many */
static unsigned build_iov(lr_outq_t *q, uv_buf_t *iov, unsigned n) {
  for (unsigned i = 0; i < n; i++) {
    lr_seg_t *s = &q->segs[i];
    if (s->ext == lr_seg_file) return i;
    iov[i].base = (char *)(s->ext ? s->ext : q->bytes.base + s->off);
    iov[i].len = s->len;
  }
  return n;
}

/* drop the first `done` bytes of q (the part the kernel took) */
static void outq_advance(lr_outq_t *q, size_t done) {
  unsigned i = 0;
  while (i < q->n && done >= q->segs[i].len) {
    done -= q->segs[i].len;
    q->total -= q->segs[i].len;
    if (q->segs[i].release) q->segs[i].release(q->segs[i].arg);
    i++;
  }
  if (i < q->n && done) {
    lr_seg_t *s = &q->segs[i];
    if (s->ext)
      s->ext += done;
    else
      s->off += done;
    s->len -= done;
    q->total -= done;
  }
  memmove(q->segs, q->segs + i, (q->n - i) * sizeof *q->segs);
  q->n -= i;
  if (q->n == 0) q->bytes.len = 0;
}

static void after_write(lr_conn_t *c);

static void on_write(uv_write_t *req, int status) {
  lr_conn_t *c = req->data;
  free(req);
  c->wreq = NULL;
  c->flags &= ~LR_CF_WRITING;
  outq_release(&c->inflight);
  outq_park(c->worker, &c->inflight);
  if (c->flags & LR_CF_CLOSING) return;
  if (status < 0) {
    LR_DEBUG("write failed: %s", uv_strerror(status));
    lr_conn_close(c);
    return;
  }
  /* progress, unless the protocol says the peer holds its output back */
  if (!(c->flags & LR_CF_STALLED)) lr_link_unlink(&c->send_to.link);
  after_write(c);
  if (!(c->flags & LR_CF_CLOSING)) send_timer_update(c);
}

#define LR_IOV_MAX 512

/* rare: more than LR_IOV_MAX pieces were pending when the kernel filled up;
 * the ones past the first uv_write batch (from index n) move to the (empty)
 * out queue and leave after it */
static void requeue_tail(lr_conn_t *c, unsigned n) {
  lr_outq_t rest = {0};
  for (unsigned i = n; i < c->inflight.n; i++) {
    lr_seg_t s = c->inflight.segs[i];
    if (s.ext == NULL) {
      char *d = outq_reserve(&rest, s.len);
      if (d) {
        memcpy(d, c->inflight.bytes.base + s.off, s.len);
        outq_commit(&rest, s.len);
      }
    } else if (outq_seg(&rest) == 0) {
      rest.segs[rest.n++] = s;
      rest.total += s.len;
    }
    c->inflight.total -= s.len;
  }
  c->inflight.n = n;
  outq_free(&c->out);
  c->out = rest;
}

/* TLS: the plaintext queued by the protocol becomes records, in place */
static void tls_seal(lr_conn_t *c) {
  lr_outq_t *q = &c->out;
  if (q->n && lr__tls_ready(c)) {
    for (unsigned i = 0; i < q->n; i++) {
      lr_seg_t *s = &q->segs[i];
      if (s->len) lr__tls_seal(c, s->ext ? s->ext : q->bytes.base + s->off, s->len);
    }
    lr__tls_seal(c, NULL, 0);
  }
  if (q->n) outq_release(q); /* sealed (or, before the handshake, never to be sent in clear) */
  size_t n;
  while ((n = lr__tls_pending(c)) > 0) {
    char *d = outq_reserve(q, n);
    if (d == NULL) return;
    outq_commit(q, lr__tls_take(c, d, n));
  }
}

/* A file body at the head of the queue (plain connections only): sendfile
 * until it is done (0) or the socket is full (1). Then one byte of it leaves
 * through uv_write: libuv has no sendfile and allows one watcher per
 * descriptor, so a one-byte write is how the loop waits for writability, and
 * the send timeout and back-pressure see an ordinary write in flight. */
static int flush_file(lr_conn_t *c) {
  lr_seg_t *s = &c->out.segs[0];
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)&c->tcp, &fd)) return UV_EBADF;
  size_t before = s->len;
  int r = lr__file_sendfile(fd, s);
  if (r == 1) {
    char *d = outq_reserve(&c->inflight, 1);
    if (d == NULL) r = UV_ENOMEM;
    else if (lr__file_take_byte(s, d)) r = UV_EIO;
    else outq_commit(&c->inflight, 1);
  }
  c->out.total -= before - s->len;
  if (s->len == 0) outq_advance(&c->out, 0); /* done: the file is released */
  return r;
}

/* hand the first n segments of c->inflight to uv_write */
static int write_inflight(lr_conn_t *c, unsigned n) {
  uv_buf_t wiov[LR_IOV_MAX];
  n = build_iov(&c->inflight, wiov, n);
  c->wreq = malloc(sizeof *c->wreq);
  if (c->wreq == NULL) return UV_ENOMEM;
  c->wreq->data = c;
  int r = uv_write(c->wreq, (uv_stream_t *)&c->tcp, wiov, n, on_write);
  if (r < 0) {
    free(c->wreq);
    c->wreq = NULL;
    return r;
  }
  c->flags |= LR_CF_WRITING;
  if (c->inflight.n > n) requeue_tail(c, n);
  send_timer_update(c);
  return 0;
}

void lr__conn_flush(lr_conn_t *c) {
  if (c->flags & (LR_CF_CLOSING | LR_CF_WRITING)) return;
  if (c->tls) tls_seal(c);
  while (c->out.n) {
    if (c->out.segs[0].ext == lr_seg_file) {
      int r = flush_file(c);
      if (r == 1) r = write_inflight(c, 1);
      if (r == 0 && !(c->flags & LR_CF_WRITING)) continue;
      if (r < 0) {
        LR_DEBUG("sendfile failed: %s", uv_strerror(r));
        lr_conn_close(c);
      }
      return;
    }
    uv_buf_t iov[LR_IOV_MAX];
    unsigned n = build_iov(&c->out, iov, c->out.n < LR_IOV_MAX ? c->out.n : LR_IOV_MAX);
    size_t want = 0;
    for (unsigned i = 0; i < n; i++) want += iov[i].len;
    int r = uv_try_write((uv_stream_t *)&c->tcp, iov, n);
    if (r == UV_EAGAIN) r = 0;
    if (r < 0) {
      LR_DEBUG("write failed: %s", uv_strerror(r));
      lr_conn_close(c);
      return;
    }
    outq_advance(&c->out, (size_t)r);
    if ((size_t)r < want) {
      /* the kernel is full: hand the rest to uv_write and fill a fresh queue meanwhile */
      lr_outq_t tmp = c->inflight;
      c->inflight = c->out;
      c->out = tmp;
      if (write_inflight(c, c->inflight.n < LR_IOV_MAX ? c->inflight.n : LR_IOV_MAX)) lr_conn_close(c);
      return;
    }
  }
  outq_park(c->worker, &c->out);
  after_write(c);
}

static void after_write(lr_conn_t *c) {
  if (c->out.n) {
    lr__conn_flush(c);
    return;
  }
  if (c->flags & LR_CF_CLOSE_AFTER_WRITE) {
    if ((c->flags & (LR_CF_LINGER | LR_CF_LINGERING)) == LR_CF_LINGER)
      start_lingering(c);
    else if (!(c->flags & LR_CF_LINGERING))
      lr_conn_close(c);
    return;
  }
  if (c->proto && c->proto->on_drain) c->proto->on_drain(c);
}

/* ---- reading ---- */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)hint;
  lr_conn_t *c = h->data;
  buf->base = c->worker->read_buf;
  buf->len = c->worker->read_buf_size;
}

static void on_read(uv_stream_t *stream, ssize_t n, const uv_buf_t *buf) {
  lr_conn_t *c = stream->data;
  if (c->flags & LR_CF_LINGERING) {
    linger_read(c, n);
    return;
  }
  const char *p = buf->base;
  if (n > 0 && c->worker->metrics) c->worker->metrics->bytes_in += (uint64_t)n;
  if (n > 0 && (c->flags & LR_CF_PROXY_HDR)) {
    ssize_t used = lr__proxy_read(c, p, (size_t)n);
    if (used < 0 || (c->flags & LR_CF_PROXY_HDR) || used == n) return;
    p += used;
    n -= used;
  }
  if (n > 0) {
    if (c->tls)
      lr__tls_on_read(c, p, (size_t)n);
    else
      c->proto->on_read(c, p, (size_t)n);
  } else if (n < 0) {
    c->flags |= LR_CF_EOF;
    uv_read_stop(stream);
    c->flags |= LR_CF_READ_STOPPED;
    if (n == UV_EOF && c->proto->on_eof)
      c->proto->on_eof(c);
    else
      lr_conn_close(c);
  }
}

void lr_conn_read_stop(lr_conn_t *c) {
  if (c->flags & (LR_CF_READ_STOPPED | LR_CF_CLOSING)) return;
  uv_read_stop((uv_stream_t *)&c->tcp);
  c->flags |= LR_CF_READ_STOPPED;
  if (c->proto && c->proto->on_hangup) hup_arm(c);
}

void lr_conn_read_start(lr_conn_t *c) {
  if (!(c->flags & LR_CF_READ_STOPPED) || (c->flags & (LR_CF_CLOSING | LR_CF_EOF))) return;
  c->flags &= ~LR_CF_READ_STOPPED;
  lr_link_unlink(&c->hup_to.link);
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

/* ---- timeouts ---- */

void lr_conn_set_timeout(lr_conn_t *c, int kind) {
  lr_link_unlink(&c->timeout.link);
  c->timeout.kind = kind;
  if (kind == LR_TO_NONE || (c->flags & LR_CF_CLOSING)) return;
  lr_worker_t *w = c->worker;
  c->timeout.deadline = uv_now(&w->loop) + w->timeout_ms[kind];
  lr_list_push(&w->timeouts[kind], &c->timeout.link);
}

/* ---- accepting ---- */

void lr__conn_accept(lr_listener_t *l, int fd) {
  lr_worker_t *w = l->worker;
  lr_conn_t *c = calloc(1, lr_http1_conn_size());
  if (c == NULL) {
    close(fd);
    return;
  }
  uv_tcp_init(&w->loop, &c->tcp);
  c->tcp.data = c;
  c->worker = w;
  c->listener = l;
  lr_list_init(&c->timeout.link);
  lr_list_init(&c->send_to.link);
  lr_list_init(&c->hup_to.link);
  lr_list_init(&c->deferred);
  if (uv_tcp_open(&c->tcp, fd) != 0) {
    close(fd);
    uv_close((uv_handle_t *)&c->tcp, on_close);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  lr_list_push(&w->conns, &c->all);
  __atomic_fetch_add(&w->n_conns, 1, __ATOMIC_RELAXED);
  c->proto = &lr_http1_proto;
  lr_http1_init(c);
  if ((w->cfg->proxy_protocol && lr__proxy_start(c)) || (l->addr->tls && lr__tls_accept(c))) {
    lr_conn_close(c);
    return;
  }
  lr_conn_set_timeout(c, LR_TO_HEADER);
  c->flags |= LR_CF_READ_STOPPED;
  lr_conn_read_start(c);
}
