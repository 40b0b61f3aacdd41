/* The connection driver shared by the protocol fuzzers.
 *
 * One real worker (its uv loop, deferred flushing, timeouts, access log to
 * /dev/null) lives for the whole run. Each input gets a fresh connection that
 * goes through the real accept path: the server end of a socketpair is handed
 * to lr__conn_accept as if the listener had just accepted it. The input is
 * written in pieces (the first byte picks their size, so a parser sees its
 * input split everywhere), the loop runs between pieces, then the client hangs
 * up. Everything must be gone afterwards: connection, streams, WebSockets.
 *
 * The app replies at once, as the hooks contract allows: GET and friends get a
 * small body, POST and PUT read the whole body first (waits, wake-ups), paths
 * under /stream get a streamed reply with trailers, WebSocket upgrades (h1
 * Upgrade and h2 extended CONNECT) are accepted with permessage-deflate when
 * offered and echo every message. Deferred work runs from the tick hook, as
 * the Lua scheduler does it. */
#include "conn_driver.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lariat.h"

typedef struct fz_req_s {
  lr_stream_t *s;
  lr_ws_t *ws;
  lr_buf_t body;
  int queued;
  struct fz_req_s *next;
} fz_req_t;

static lr_worker_t worker;
static lr_config_t cfg;
static fz_req_t *ready; /* requests with news, run by the tick hook */
static unsigned live;   /* requests the app still holds */
static int show;        /* LR_FUZZ_SHOW=1: copy what the server sends to stderr (replaying an input) */

/* ---- the app ---- */

static void queue(fz_req_t *r) {
  if (r->queued) return;
  r->queued = 1;
  r->next = ready;
  ready = r;
}

static void req_end(fz_req_t *r) {
  lr_stream_t *s = r->s;
  if (r->queued) { /* unlink: it may still sit in the ready list */
    for (fz_req_t **p = &ready; *p; p = &(*p)->next)
      if (*p == r) {
        *p = r->next;
        break;
      }
  }
  s->app_data = NULL;
  s->wait = LR_WAIT_NONE;
  lr_stream_app_release(s);
  lr_buf_free(&r->body);
  free(r);
  live--;
}

static const lr_header_t text_headers[] = {
    {{"content-type", 12}, {"text/plain", 10}},
    {{"x-fuzz", 6}, {"1", 1}},
};

static void reply_now(lr_stream_t *s, int status, const char *body) {
  lr_stream_send_head(s, status, text_headers, 2, body, strlen(body), NULL, NULL, LR_FIN);
}

/* POST/PUT: read the whole body (bounded), then echo its size */
static void run_body(fz_req_t *r) {
  lr_stream_t *s = r->s;
  for (;;) {
    int fin = 0;
    int n = lr_stream_read_body(s, &r->body, 4096, &fin);
    if (n < 0) { /* the stream ended under us */
      req_end(r);
      return;
    }
    if (fin) break;
    if (n == 0) {
      s->wait = LR_WAIT_BODY;
      return;
    }
    if (r->body.len > 16384) r->body.len = 0;
  }
  s->wait = LR_WAIT_NONE;
  char out[64];
  snprintf(out, sizeof out, "%zu\n", r->body.len);
  reply_now(s, 200, out);
  req_end(r);
}

/* a streamed reply: head, two pieces, trailers when the client takes them */
static void run_stream(fz_req_t *r) {
  lr_stream_t *s = r->s;
  if (lr_stream_send_head(s, 200, text_headers, 2, NULL, 0, NULL, NULL, 0) == 0) {
    lr_stream_send_data(s, "first\n", 6, NULL, NULL);
    static const char big[3000] = {'x'};
    lr_stream_send_data(s, big, sizeof big, NULL, NULL);
    if (s->flags & LR_SF_TE_TRAILERS) {
      static const lr_header_t tr[] = {{{"x-checksum", 10}, {"0", 1}}};
      lr_stream_send_trailers(s, tr, 1);
    } else {
      lr_stream_finish(s);
    }
  }
  req_end(r);
}

static void ws_end(fz_req_t *r) {
  if (r->ws) {
    lr_ws_close(r->ws, 1000, "", 0);
    lr_ws_app_release(r->ws);
    r->ws = NULL;
  }
  req_end(r);
}

/* echo every message; "close" closes, "ping" pings */
static void run_ws(fz_req_t *r) {
  for (;;) {
    int kind;
    const char *d;
    size_t len;
    int k = lr_ws_recv(r->ws, &kind, &d, &len);
    if (k == 0) return;
    if (k < 0) {
      ws_end(r);
      return;
    }
    char *copy = malloc(len ? len : 1); /* the app's copy, as a Lua string would be */
    if (copy == NULL) abort();
    memcpy(copy, d, len);
    lr_ws_consume(r->ws);
    if (lr_ws_can_send(r->ws) && !lr_ws_write_blocked(r->ws)) lr_ws_send(r->ws, kind, copy, len);
    if (len == 5 && memcmp(copy, "close", 5) == 0) lr_ws_close(r->ws, 1000, "bye", 3);
    if (len == 4 && memcmp(copy, "ping", 4) == 0) lr_ws_ping(r->ws, "p", 1);
    free(copy);
  }
}

static void on_ws_event(lr_ws_t *ws, int events) { queue(lr_ws_app_data(ws)); }

static void start_ws(fz_req_t *r) {
  lr_stream_t *s = r->s;
  if (s->version != 20 && !(s->method.len == 3 && memcmp(s->method.base, "GET", 3) == 0)) {
    reply_now(s, 400, "a WebSocket handshake is a GET request");
    req_end(r);
    return;
  }
  lr_header_t h[4];
  size_t nh = 0;
  char accept[32], ext[256];
  if (s->version != 20) {
    const lr_str_t *key = lr_stream_header(s, "sec-websocket-key", 17);
    if (key == NULL) {
      reply_now(s, 400, "bad sec-websocket-key");
      req_end(r);
      return;
    }
    lr_ws_accept_key(key->base, key->len, accept);
    h[nh++] = (lr_header_t){{"upgrade", 7}, {"websocket", 9}};
    h[nh++] = (lr_header_t){{"connection", 10}, {"upgrade", 7}};
    h[nh++] = (lr_header_t){{"sec-websocket-accept", 20}, {accept, 28}};
  }
  lr_ws_opts_t wo;
  memset(&wo, 0, sizeof wo);
  wo.max_message = 1 << 16;
  wo.max_queued = 1 << 16;
  wo.max_pings = 20;
  wo.compress_threshold = 1;
  const lr_str_t *offers = lr_stream_header(s, "sec-websocket-extensions", 24);
  if (offers && lr_ws_negotiate_deflate(offers->base, offers->len, &wo, ext, sizeof ext)) {
    wo.deflate = 1;
    h[nh++] = (lr_header_t){{"sec-websocket-extensions", 24}, {ext, strlen(ext)}};
  }
  r->ws = lr_ws_accept(s, h, nh, &wo);
  if (r->ws == NULL) {
    if (s->conn && !(s->flags & LR_SF_REPLIED)) reply_now(s, 503, "no");
    req_end(r);
    return;
  }
  lr_ws_set_app(r->ws, on_ws_event, r);
  queue(r); /* bytes after the handshake may already be in */
}

static void hook_start(lr_stream_t *s) {
  fz_req_t *r = calloc(1, sizeof *r);
  if (r == NULL) abort();
  r->s = s;
  s->app_data = r;
  live++;
  if (s->flags & LR_SF_WS_UPGRADE) {
    start_ws(r);
  } else if ((s->method.len == 4 && memcmp(s->method.base, "POST", 4) == 0) ||
             (s->method.len == 3 && memcmp(s->method.base, "PUT", 3) == 0)) {
    run_body(r);
  } else if (s->path.len >= 7 && memcmp(s->path.base, "/stream", 7) == 0) {
    run_stream(r);
  } else {
    /* read a few fields as a handler would */
    lr_stream_header(s, "host", 4);
    lr_stream_header(s, "cookie", 6);
    char peer[64];
    int port;
    lr_stream_peer(s, peer, sizeof peer, &port);
    reply_now(s, s->path.len > 1 ? 404 : 200, "hello");
    req_end(r);
  }
}

static void hook_wake(lr_stream_t *s) {
  fz_req_t *r = s->app_data;
  if (r == NULL) return;
  if (r->ws && s->version == 20)
    lr_ws_stream_event(r->ws); /* an h2 stream carrying a WebSocket (RFC 8441) */
  else
    queue(r);
}

static void hook_conn_gone(lr_stream_t *s) {
  fz_req_t *r = s->app_data;
  if (r == NULL) return;
  if (r->ws && s->version == 20)
    lr_ws_stream_event(r->ws);
  else if (r->ws || s->wait != LR_WAIT_NONE)
    queue(r);
}

static void hook_tick(lr_worker_t *w) {
  while (ready) {
    fz_req_t *r = ready;
    ready = r->next;
    r->queued = 0;
    if (r->ws)
      run_ws(r);
    else
      run_body(r);
  }
}

static const lr_app_hooks_t hooks = {
    .start = hook_start,
    .wake = hook_wake,
    .conn_gone = hook_conn_gone,
    .tick = hook_tick,
};

/* ---- the driver ---- */

static void setup(void) {
  signal(SIGPIPE, SIG_IGN);
  show = getenv("LR_FUZZ_SHOW") != NULL;
  lr_log_level = LR_LOG_ERROR + 1; /* quiet: a fuzzer's inputs are all bad */
  lr_config_defaults(&cfg);
  cfg.workers = 1;
  cfg.n_listen = 1;
  strcpy(cfg.listen[0].host, "127.0.0.1");
  cfg.access_log = "/dev/null"; /* the log line is built for every request */
  /* small limits, so that short inputs reach them */
  cfg.max_body = 8192;
  cfg.max_request_line = 512;
  cfg.max_header_bytes = 2048;
  cfg.max_headers = 24;
  cfg.max_keepalive = 20;
  cfg.h2_max_streams = 8;
  cfg.h2_window = 16384;
  if (lr_worker_init(&worker, 0, &cfg, &hooks, NULL)) abort();
  int fds[LR_MAX_LISTENERS];
  char err[256];
  /* a real listener that nothing connects to: connections take their listener from it */
  if (lr_listeners_bind(&cfg, 1, fds, err, sizeof err) || lr_worker_listen(&worker, fds, 1)) {
    fprintf(stderr, "fuzz: %s\n", err);
    abort();
  }
}

static char sink[65536];

/* one loop turn without blocking, then read what the server sent */
static void pump(int fd) {
  uv_run(&worker.loop, UV_RUN_NOWAIT);
  ssize_t n;
  while (fd >= 0 && (n = read(fd, sink, sizeof sink)) > 0)
    if (show) fwrite(sink, 1, (size_t)n, stderr);
}

/* the loop runs only when the socket is full: the caller pumps once per piece
 * (a 1-byte-piece input costs a few syscalls per byte, not twice that) */
static void feed(int fd, const char *p, size_t n) {
  int stuck = 0;
  while (n) {
    ssize_t k = write(fd, p, n);
    if (k > 0) {
      p += k;
      n -= (size_t)k;
      stuck = 0;
      continue;
    }
    if (k < 0 && errno != EAGAIN && errno != EINTR) return; /* the server closed */
    if (++stuck > 1000) return; /* the server stopped reading (back-pressure): the rest can't go in */
    pump(fd);
  }
}

/* time passes: every armed timeout fires, as the worker's tick fires them
 * (once each, whatever its deadline: a timeout re-armed meanwhile waits) */
static void expire_timeouts(void) {
  for (int k = 1; k < LR_TO_N; k++) {
    unsigned n = 0;
    for (lr_link_t *l = worker.timeouts[k].next; l != &worker.timeouts[k]; l = l->next) n++;
    while (n-- && !lr_list_empty(&worker.timeouts[k])) {
      lr_timeout_t *to = LR_CONTAINER_OF(worker.timeouts[k].next, lr_timeout_t, link);
      lr_link_unlink(&to->link);
      lr__conn_timeout(k == LR_TO_SEND ? LR_CONTAINER_OF(to, lr_conn_t, send_to) : LR_CONTAINER_OF(to, lr_conn_t, timeout), k);
    }
  }
}

void lr_fuzz_conn_run(const char *prefix, size_t plen, const uint8_t *data, size_t size) {
  static int ready_once;
  if (!ready_once) {
    setup();
    ready_once = 1;
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv)) abort();
  /* the real accept path, with the socketpair's end as the accepted socket */
  lr__conn_accept(&worker.listeners[0], sv[0]);
  pump(sv[1]);
  /* first byte: piece size (bits 0-6, 0 = all at once); bit 7: the
   * timeouts fire while the client is still there (slowloris, idle) */
  size_t step = size ? (size_t)(data[0] & 127) : 0;
  int timeouts_first = size && (data[0] & 128);
  if (size) data++, size--;
  if (step == 0 || step > size) step = size;
  if (plen) {
    feed(sv[1], prefix, plen);
    pump(sv[1]);
  }
  for (size_t off = 0; off < size; off += step) {
    feed(sv[1], (const char *)data + off, off + step <= size ? step : size - off);
    pump(sv[1]);
  }
  for (int i = 0; i < 4; i++) pump(sv[1]);
  if (timeouts_first) {
    expire_timeouts();
    for (int i = 0; i < 4; i++) pump(sv[1]);
  }
  /* the client is done sending, then gone */
  shutdown(sv[1], SHUT_WR);
  for (int i = 0; i < 8 && worker.n_conns; i++) pump(sv[1]);
  close(sv[1]);
  for (int i = 0; i < 8 && (worker.n_conns || live); i++) pump(-1);
  /* a lingering close waits for the peer's EOF: with the peer gone it must
   * not wait for lingering_timeout too (no timeout has fired yet) */
  for (lr_link_t *l = worker.conns.next; l != &worker.conns; l = l->next)
    if (LR_CONTAINER_OF(l, lr_conn_t, all)->flags & LR_CF_LINGERING) {
      fprintf(stderr, "fuzz: a lingering connection outlived its closed peer\n");
      abort();
    }
  /* what still waits for a timeout: let it fire, then close what is left */
  expire_timeouts();
  for (int i = 0; i < 4 && worker.n_conns; i++) pump(-1);
  while (!lr_list_empty(&worker.conns)) lr_conn_close(LR_CONTAINER_OF(worker.conns.next, lr_conn_t, all));
  for (int i = 0; i < 8; i++) pump(-1);
  if (live || worker.n_conns) {
    fprintf(stderr, "fuzz: %u requests and %u connections still held after the connection closed\n", live,
            worker.n_conns);
    abort();
  }
}
