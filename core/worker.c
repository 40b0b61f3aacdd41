/* A worker: one thread, one uv loop, its own listening sockets (SO_REUSEPORT),
 * its own connections. Nothing here is shared with other workers. */
#define _GNU_SOURCE /* accept4 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lariat.h"

#define LR_READ_BUF_SIZE (64 * 1024)

/* ---- deferred work: flush output and resume protocols once per loop phase ---- */

static void run_deferred(lr_worker_t *w) {
  if (w->app->tick) w->app->tick(w);
  /* a flush can close a connection or defer another one: pop one at a time */
  while (!lr_list_empty(&w->deferred)) {
    lr_link_t *l = w->deferred.next;
    lr_link_unlink(l);
    lr_conn_t *c = LR_CONTAINER_OF(l, lr_conn_t, deferred);
    c->flags &= ~LR_CF_DEFERRED;
    if (c->flags & LR_CF_NEED_RESUME) {
      c->flags &= ~LR_CF_NEED_RESUME;
      if (c->proto->resume) c->proto->resume(c);
      if (c->flags & LR_CF_CLOSING) continue;
    }
    lr__conn_flush(c);
  }
  if (w->access_buf.len && w->access_fd >= 0) {
    ssize_t r = write(w->access_fd, w->access_buf.base, w->access_buf.len);
    (void)r;
    w->access_buf.len = 0;
  }
}

static void on_prepare(uv_prepare_t *h) {
  lr_worker_t *w = h->data;
  run_deferred(w);
  /* stopping and nothing left that keeps the loop alive: leave now instead of
   * sleeping in poll until the (unreferenced) timeout tick */
  if (w->stopping && !uv_loop_alive(&w->loop)) uv_stop(&w->loop);
}
static void on_check(uv_check_t *h) { run_deferred(h->data); }

/* ---- timeouts ---- */

static void on_timeout_tick(uv_timer_t *t) {
  lr_worker_t *w = t->data;
  uint64_t now = uv_now(&w->loop);
  for (int k = 1; k < LR_TO_N; k++) {
    while (!lr_list_empty(&w->timeouts[k])) {
      lr_timeout_t *to = LR_CONTAINER_OF(w->timeouts[k].next, lr_timeout_t, link);
      if (to->deadline > now) break;
      lr_link_unlink(&to->link);
      lr__conn_timeout(k == LR_TO_SEND  ? LR_CONTAINER_OF(to, lr_conn_t, send_to)
                       : k == LR_TO_HUP ? LR_CONTAINER_OF(to, lr_conn_t, hup_to)
                                        : LR_CONTAINER_OF(to, lr_conn_t, timeout),
                       k);
    }
  }
}

/* ---- date ---- */

const char *lr_worker_date(lr_worker_t *w) {
  time_t now = time(NULL);
  if ((uint64_t)now != w->date_sec) {
    static const char *days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct tm tm;
    gmtime_r(&now, &tm);
    snprintf(w->date, sizeof w->date, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday], tm.tm_mday,
             months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    w->date_sec = (uint64_t)now;
  }
  return w->date;
}

/* ---- access log: combined log format, buffered per loop iteration ---- */

void lr_worker_access_log(lr_worker_t *w, lr_stream_t *s) {
  if (w->metrics) lr_metrics_stream_done(w, s);
  if (w->access_fd < 0) return;
  char peer[64];
  int port;
  if (lr_stream_peer(s, peer, sizeof peer, &port) != 0) strcpy(peer, "-");
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  char when[40];
  strftime(when, sizeof when, "%d/%b/%Y:%H:%M:%S +0000", &tm);
  const lr_str_t *ref = lr_stream_header(s, "referer", 7);
  const lr_str_t *ua = lr_stream_header(s, "user-agent", 10);
  const char *ver = s->version == 20 ? "HTTP/2" : s->version == 10 ? "HTTP/1.0" : "HTTP/1.1";
  if (lr_buf_reserve(&w->access_buf, 512 + s->target.len + (ref ? ref->len : 0) + (ua ? ua->len : 0))) return;
  int n = snprintf(w->access_buf.base + w->access_buf.len, w->access_buf.cap - w->access_buf.len,
                   "%s - - [%s] \"%.*s %.*s %s\" %d %llu \"%.*s\" \"%.*s\"\n", peer, when, (int)s->method.len,
                   s->method.base, (int)s->target.len, s->target.base, ver, s->status,
                   (unsigned long long)s->bytes_sent, ref ? (int)ref->len : 1, ref ? ref->base : "-",
                   ua ? (int)ua->len : 1, ua ? ua->base : "-");
  if (n > 0 && (size_t)n < w->access_buf.cap - w->access_buf.len) w->access_buf.len += (size_t)n;
}

/* ---- listeners ---- */

static void on_connection(uv_poll_t *p, int status, int events);

/* a paused listener is not polled: new connections wait in the kernel's backlog */
static void listener_pause(lr_listener_t *l) {
  if (l->paused) return;
  l->paused = 1;
  uv_poll_stop(&l->poll);
}

static void listeners_resume(lr_worker_t *w) {
  if (w->stopping) return;
  for (int i = 0; i < w->n_listeners; i++) {
    lr_listener_t *l = &w->listeners[i];
    if (!l->paused) continue;
    l->paused = 0;
    uv_poll_start(&l->poll, UV_READABLE, on_connection);
  }
}

static int at_cap(const lr_worker_t *w) { return w->cfg->max_connections && w->n_conns >= w->cfg->max_connections; }

static void on_accept_timer(uv_timer_t *t) {
  lr_worker_t *w = t->data;
  if (!at_cap(w)) listeners_resume(w);
}

/* Out of descriptors: every accept would fail at once, and a listener that
 * stays readable would spin the loop. Stop polling every listener of this
 * worker until one of its connections closes, or for a while (descriptors are
 * per process: another worker may free some). The connections wait in the
 * backlog; none is dropped. */
static void out_of_fds(lr_worker_t *w, int err) {
  for (int i = 0; i < w->n_listeners; i++) listener_pause(&w->listeners[i]);
  uv_timer_start(&w->accept_timer, on_accept_timer, 250, 0);
  w->fd_dropped++;
  uint64_t now = uv_now(&w->loop);
  if (w->fd_log_ms == 0 || now - w->fd_log_ms >= 10000) {
    lr_log(LR_LOG_WARN, "worker %d: accept: %s with %u connections open; accepting paused until descriptors free "
           "(%u times since the last report; raise ulimit -n?)", w->id, strerror(err), w->n_conns, w->fd_dropped);
    w->fd_log_ms = now;
    w->fd_dropped = 0;
  }
}

static void on_connection(uv_poll_t *p, int status, int events) {
  (void)events;
  lr_listener_t *l = p->data;
  lr_worker_t *w = l->worker;
  if (status < 0 || l->paused) return;
  /* a bounded batch, so one busy listener can't starve the loop */
  for (int k = 0; k < 128; k++) {
    /* at the cap, leave the connections in the backlog until one closes */
    if (at_cap(w)) {
      listener_pause(l);
      return;
    }
    int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) out_of_fds(w, errno);
      /* EAGAIN: drained; ECONNABORTED and the like: that client is gone */
      if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
      return;
    }
    lr__conn_accept(l, fd);
  }
}

static void on_trim(uv_timer_t *t) {
  lr_worker_t *w = t->data;
  w->trim_peak = w->n_conns;
  /* under ASan, malloc is ASan's: glibc's malloc_trim would walk arenas that
   * hold nothing (an ASan run once died in it with a SEGV) */
#ifndef __SANITIZE_ADDRESS__
  malloc_trim(0);
#endif
}

/* a connection closed: a descriptor and a place under the cap are free */
void lr__worker_conn_closed(lr_worker_t *w) {
  if (!at_cap(w)) listeners_resume(w);
  /* a burst of connections (an attack, a spike) ended: freed memory stays in
   * malloc's arenas, so RSS would stay at the peak. Give it back a second
   * after the count fell to a quarter of its peak (64 or more), or to 0 */
  if (w->n_conns + 1 > w->trim_peak) w->trim_peak = w->n_conns + 1;
  if (!uv_is_active((uv_handle_t *)&w->trim_timer) && !w->stopping &&
      ((w->trim_peak >= 64 && w->n_conns <= w->trim_peak / 4) || (w->n_conns == 0 && w->trim_peak > 1)))
    uv_timer_start(&w->trim_timer, on_trim, 1000, 0);
}

unsigned lr_worker_conns(const lr_worker_t *w) { return __atomic_load_n(&w->n_conns, __ATOMIC_RELAXED); }

/* SO_REUSEPORT lets any process of the same user join a listening port and
 * take a share of its connections: a second lariat (or anything else) on a
 * busy port would start silently and split the traffic. A socket bound
 * WITHOUT SO_REUSEPORT conflicts with every socket on the address, whatever
 * options they used, so one such bind tells whether the port is free. The
 * probe is closed before the workers' sockets bind: two servers starting in
 * the same microseconds could still both pass, which a lock file would not
 * fix either (it can't see non-lariat servers). Returns 0 or an errno. */
static int probe_bind(int family, struct sockaddr_storage *ss, socklen_t sl, uint16_t *port_field, int port) {
  int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  int one = 1, r = 0;
  *port_field = htons((uint16_t)port);
  /* SO_REUSEADDR: a port whose old connections linger in TIME_WAIT is free */
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) || bind(fd, (struct sockaddr *)ss, sl)) r = errno;
  close(fd);
  return r;
}

int lr_listeners_bind(lr_config_t *cfg, int workers, int *fds, char *err, size_t errlen) {
  for (int i = 0; i < cfg->n_listen; i++) {
    lr_listen_addr_t *a = &cfg->listen[i];
    if (a->path[0]) {
      if (lr__unix_bind(a, cfg->unix_mode, workers, fds, i, err, errlen)) return -1;
      continue;
    }
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    int family;
    if (inet_pton(AF_INET, a->host, &sin->sin_addr) == 1) {
      family = sin->sin_family = AF_INET;
      sl = sizeof *sin;
    } else if (inet_pton(AF_INET6, a->host, &sin6->sin6_addr) == 1) {
      family = sin6->sin6_family = AF_INET6;
      sl = sizeof *sin6;
    } else {
      snprintf(err, errlen, "listen %s:%d: not a numeric IP address", a->host, a->port);
      return -1;
    }
    if (a->port != 0 && probe_bind(family, &ss, sl, family == AF_INET ? &sin->sin_port : &sin6->sin6_port,
                                   a->port) == EADDRINUSE) {
      snprintf(err, errlen, "listen %s:%d: address in use", a->host, a->port);
      return -1;
    }
    for (int k = 0; k < workers; k++) {
      if (family == AF_INET)
        sin->sin_port = htons((uint16_t)a->port);
      else
        sin6->sin6_port = htons((uint16_t)a->port);
      int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
      int one = 1;
      if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
          setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) || bind(fd, (struct sockaddr *)&ss, sl) ||
          listen(fd, 4096)) {
        snprintf(err, errlen, "listen %s:%d: %s", a->host, a->port, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
      }
      if (a->port == 0) {
        /* the first socket picked a port: the other workers share it */
        struct sockaddr_storage got;
        socklen_t gl = sizeof got;
        getsockname(fd, (struct sockaddr *)&got, &gl);
        a->port = ntohs(family == AF_INET ? ((struct sockaddr_in *)&got)->sin_port
                                          : ((struct sockaddr_in6 *)&got)->sin6_port);
      }
      fds[k * LR_MAX_LISTENERS + i] = fd;
    }
  }
  return 0;
}

int lr_worker_listen(lr_worker_t *w, int fds[], int n) {
  for (int i = 0; i < n; i++) {
    lr_listener_t *l = &w->listeners[i];
    l->worker = w;
    l->addr = &w->cfg->listen[i];
    l->fd = fds[i];
    int fl = fcntl(l->fd, F_GETFL);
    if (fl < 0 || fcntl(l->fd, F_SETFL, fl | O_NONBLOCK) < 0) return uv_translate_sys_error(errno);
    int r = uv_poll_init_socket(&w->loop, &l->poll, l->fd);
    if (r) return r;
    l->poll.data = l;
    w->n_listeners++;
    r = uv_poll_start(&l->poll, UV_READABLE, on_connection);
    if (r) return r;
  }
  return 0;
}

/* ---- stop: stop accepting, let in-flight requests finish, then leave the loop ---- */

static void close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void start_stopping(lr_worker_t *w) {
  if (w->stopping) return;
  w->stopping = 1;
  /* the loop ends once the last connection and handler are gone */
  uv_unref((uv_handle_t *)&w->wakeup);
  for (int i = 0; i < w->n_listeners; i++) {
    uv_close((uv_handle_t *)&w->listeners[i].poll, NULL);
    close(w->listeners[i].fd);
  }
  uv_timer_stop(&w->accept_timer);
  /* ask every connection to finish: idle ones close now */
  lr_link_t *l = w->conns.next;
  while (l != &w->conns) {
    lr_conn_t *c = LR_CONTAINER_OF(l, lr_conn_t, all);
    l = l->next;
    if (c->flags & LR_CF_LINGERING) continue; /* bounded by lingering_time already */
    if (c->proto->on_shutdown)
      c->proto->on_shutdown(c);
    else
      lr_conn_close(c);
  }
}

static void on_wakeup(uv_async_t *a) {
  lr_worker_t *w = a->data;
  if (w->app->wakeup) w->app->wakeup(w);
  if (__atomic_load_n(&w->stop_requested, __ATOMIC_SEQ_CST)) start_stopping(w);
}

void lr_worker_stop(lr_worker_t *w) {
  __atomic_store_n(&w->stop_requested, 1, __ATOMIC_SEQ_CST);
  uv_async_send(&w->wakeup);
}

void lr_worker_wakeup(lr_worker_t *w) { uv_async_send(&w->wakeup); }

static void free_handle(uv_handle_t *h) { free(h); }

int lr_worker_init(lr_worker_t *w, int id, const lr_config_t *cfg, const lr_app_hooks_t *app, void *app_data) {
  memset(w, 0, sizeof *w);
  w->id = id;
  w->cfg = cfg;
  w->app = app;
  w->app_data = app_data;
  int r = uv_loop_init(&w->loop);
  if (r) return r;
  w->loop.data = w;
  /* libuv opens a reserve descriptor (/dev/null) at the loop's first stream:
   * make it now, not at the first connection, so the count stays put */
  uv_tcp_t *first = malloc(sizeof *first);
  if (first == NULL || uv_tcp_init(&w->loop, first)) {
    free(first);
    return UV_ENOMEM;
  }
  uv_close((uv_handle_t *)first, free_handle);
  w->read_buf_size = LR_READ_BUF_SIZE;
  w->read_buf = malloc(w->read_buf_size);
  if (w->read_buf == NULL) return UV_ENOMEM;
  lr_list_init(&w->deferred);
  lr_list_init(&w->conns);
  for (int k = 0; k < LR_TO_N; k++) lr_list_init(&w->timeouts[k]);
  w->timeout_ms[LR_TO_HEADER] = cfg->header_timeout_ms;
  w->timeout_ms[LR_TO_IDLE] = cfg->idle_timeout_ms;
  w->timeout_ms[LR_TO_LINGER] = cfg->lingering_timeout_ms;
  w->timeout_ms[LR_TO_SEND] = cfg->send_timeout_ms;
  w->timeout_ms[LR_TO_HUP] = 1000;
  /* the body deadline is checked this often (http1.c) */
  uint64_t body = cfg->body_deadline_ms < cfg->body_timeout_ms ? cfg->body_deadline_ms : cfg->body_timeout_ms;
  w->timeout_ms[LR_TO_BODY] = body / 4 < 10 ? 10 : body / 4 > 1000 ? 1000 : body / 4;
  uv_prepare_init(&w->loop, &w->prepare);
  w->prepare.data = w;
  uv_prepare_start(&w->prepare, on_prepare);
  uv_check_init(&w->loop, &w->check);
  w->check.data = w;
  uv_check_start(&w->check, on_check);
  /* tick often enough to honour the shortest timeout within a quarter of it */
  uint64_t tick = UINT64_MAX;
  for (int k = 1; k < LR_TO_N; k++)
    if (w->timeout_ms[k] && w->timeout_ms[k] < tick) tick = w->timeout_ms[k];
  tick /= 4;
  if (tick < 10) tick = 10;
  if (tick > 1000) tick = 1000;
  uv_timer_init(&w->loop, &w->timeout_timer);
  w->timeout_timer.data = w;
  uv_timer_start(&w->timeout_timer, on_timeout_tick, tick, tick);
  uv_unref((uv_handle_t *)&w->timeout_timer);
  uv_timer_init(&w->loop, &w->trim_timer);
  w->trim_timer.data = w;
  uv_unref((uv_handle_t *)&w->trim_timer);
  uv_timer_init(&w->loop, &w->accept_timer);
  w->accept_timer.data = w;
  uv_unref((uv_handle_t *)&w->accept_timer);
  uv_unref((uv_handle_t *)&w->prepare);
  uv_unref((uv_handle_t *)&w->check);
  uv_async_init(&w->loop, &w->wakeup, on_wakeup);
  w->wakeup.data = w;
  w->access_fd = -1;
  if (cfg->access_log) {
    if (strcmp(cfg->access_log, "-") == 0)
      w->access_fd = STDOUT_FILENO;
    else
      w->access_fd = open(cfg->access_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  }
  return 0;
}

void lr_worker_run(lr_worker_t *w) {
  uv_run(&w->loop, UV_RUN_DEFAULT);
  __atomic_store_n(&w->exited, 1, __ATOMIC_SEQ_CST);
}

/* after lr_worker_run returned: every connection is gone */
void lr_worker_destroy(lr_worker_t *w) {
  lr__outbound_free(w); /* pooled connections are unreferenced: they outlive the loop */
  uv_walk(&w->loop, close_walk, NULL);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  uv_loop_close(&w->loop);
  while (w->free_blocks) {
    lr_block_t *b = w->free_blocks;
    w->free_blocks = b->next;
    free(b);
  }
  lr__streams_free_all(w);
  free(w->read_buf);
  free(w->scratch);
  while (w->n_spare_out) {
    w->n_spare_out--;
    free(w->spare_out[w->n_spare_out].bytes);
    free(w->spare_out[w->n_spare_out].segs);
  }
  lr__files_free(w);
  lr_buf_free(&w->access_buf);
  if (w->access_fd > STDERR_FILENO) close(w->access_fd);
}
