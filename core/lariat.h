/*
 * lariat core: listeners, connections, protocols and streams. No Lua here.
 *
 * Ownership follows libuv: the core owns every object below and frees it in a
 * close callback. The application layer (bindings/) plugs in through
 * lr_app_hooks_t and only ever sees lr_stream_t.
 *
 * Each struct member says who writes it and when.
 */
#ifndef LARIAT_H
#define LARIAT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <uv.h>

#include "llhttp.h"

#define LR_VERSION "0.1.0"

/* ---- errors: 0 or a negative code (libuv codes where they fit) ---- */
#define LR_ECLOSED (-10001) /* the peer or the core closed the stream */
#define LR_ESTATE (-10002)  /* call not valid in the stream's state */

/* ---- small helpers ---- */
#define LR_CONTAINER_OF(ptr, type, field) ((type *)((char *)(ptr)-offsetof(type, field)))

typedef struct lr_str_s {
  const char *base;
  size_t len;
} lr_str_t;

/* intrusive doubly linked list (h2o style) */
typedef struct lr_link_s {
  struct lr_link_s *prev, *next;
} lr_link_t;

static inline void lr_list_init(lr_link_t *l) { l->prev = l->next = l; }
static inline int lr_list_empty(const lr_link_t *l) { return l->next == l; }
static inline int lr_link_linked(const lr_link_t *l) { return l->next != NULL && l->next != l; }
static inline void lr_list_push(lr_link_t *head, lr_link_t *n) {
  n->prev = head->prev;
  n->next = head;
  head->prev->next = n;
  head->prev = n;
}
static inline void lr_link_unlink(lr_link_t *n) {
  if (n->next == NULL || n->next == n) return;
  n->prev->next = n->next;
  n->next->prev = n->prev;
  n->prev = n->next = n;
}

/* ---- log ---- */
enum { LR_LOG_DEBUG, LR_LOG_INFO, LR_LOG_WARN, LR_LOG_ERROR };
extern int lr_log_level; /* set once by main */
extern int lr_log_json;  /* set once by main: one JSON object per line */
void lr_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void lr_log_raw(int level, const char *msg, size_t len);
#define LR_DEBUG(...) \
  do { \
    if (lr_log_level <= LR_LOG_DEBUG) lr_log(LR_LOG_DEBUG, __VA_ARGS__); \
  } while (0)

/* ---- configuration, filled by the command line, read-only afterwards ---- */
#define LR_MAX_LISTENERS 16

typedef struct lr_listen_addr_s {
  char host[64];
  int port; /* 0 = any; rewritten with the bound port at startup */
  int tls;  /* TLS listener (--tls): ALPN h2 or http/1.1 */
  char path[108]; /* unix:PATH listener (host "unix", port 0); see listen_unix.c */
  int created;    /* the socket file is ours: unlinked at exit */
} lr_listen_addr_t;

typedef struct lr_config_s {
  lr_listen_addr_t listen[LR_MAX_LISTENERS];
  int n_listen;
  int proxy_protocol;  /* every listener expects a PROXY v1/v2 header first */
  lr_listen_addr_t metrics; /* --metrics HOST:PORT (bindings/metrics.c) */
  int has_metrics;
  unsigned unix_mode;  /* mode of unix socket files (default 0666) */
  int workers;
  const char *app_path;
  const char *access_log; /* NULL, "-" or a file */
  const char *lua_dir;    /* where lua/lariat lives, resolved at startup */
  uint64_t max_body;
  unsigned max_keepalive;
  unsigned max_request_line;
  unsigned max_header_bytes;
  unsigned max_headers;
  uint64_t header_timeout_ms;
  uint64_t idle_timeout_ms;
  uint64_t body_timeout_ms;
  uint64_t drain_timeout_ms;
  /* bounds on a peer that stalls (core/conn.c, core/http1.c) */
  uint64_t send_timeout_ms;      /* output queued and no write progress this long: close */
  uint64_t handler_timeout_ms;   /* request head to response start, else 504 (bindings/scheduler.c); 0: none */
  uint64_t body_deadline_ms;     /* a request body must arrive within this ... */
  uint64_t body_min_rate;        /* ... plus 1 s per this many bytes received (0: no extension) */
  uint64_t lingering_time_ms;    /* lingering close: discard input at most this long ... */
  uint64_t lingering_timeout_ms; /* ... and at most this long between two reads */
  size_t output_buffer;          /* user-space output per connection before writers wait */
  size_t lua_memory; /* cap per Lua state in bytes, 0 = none */
  unsigned max_connections; /* per worker; more wait in the listen backlog (0 = no cap) */
  unsigned max_outbound;    /* outbound connections per worker, idle pooled ones included (0 = no cap) */
  const char *pid_file;
  const char *redis_url;    /* --redis: shared dictionaries and channels in Redis (bindings/cluster.c) */
  const char *user;         /* drop to this user after binding */
  int log_json;             /* log lines as JSON objects */
  /* TLS (--cert/--key pairs, the first is the default; SNI picks among them) */
#define LR_MAX_CERTS 8
  const char *tls_cert[LR_MAX_CERTS], *tls_key[LR_MAX_CERTS];
  int n_certs;
  /* HTTP/2 settings and limits */
  unsigned h2_max_streams; /* SETTINGS_MAX_CONCURRENT_STREAMS */
  unsigned h2_window;      /* SETTINGS_INITIAL_WINDOW_SIZE: request body bytes buffered per stream */
  unsigned h2_max_frame;   /* SETTINGS_MAX_FRAME_SIZE */
  uint64_t cpu_budget_ms; /* longest a handler may run without yielding */
  int watch;              /* reload when the app's files change */
  int log_level;
} lr_config_t;

void lr_config_defaults(lr_config_t *cfg);
/* returns 0, 1 (printed help/version, exit 0) or writes a one-line message to err and returns -1 */
int lr_config_parse(lr_config_t *cfg, int argc, char **argv, char *err, size_t errlen);

/* ---- memory: fixed-size blocks recycled per worker, and a per-stream arena ---- */
#define LR_BLOCK_SIZE 1024

typedef struct lr_block_s {
  struct lr_block_s *next;
  size_t size; /* usable bytes after the header */
} lr_block_t;

typedef struct lr_pool_s {
  lr_block_t *head; /* newest block first */
  size_t used;      /* bytes used in head */
} lr_pool_t;

struct lr_worker_s;
void *lr_pool_alloc(struct lr_worker_s *w, lr_pool_t *p, size_t n);
char *lr_pool_strdup(struct lr_worker_s *w, lr_pool_t *p, const char *s, size_t n);
void lr_pool_clear(struct lr_worker_s *w, lr_pool_t *p);

/* growable byte buffer; backing memory comes from malloc and is kept for reuse */
typedef struct lr_buf_s {
  char *base;
  size_t len, cap;
} lr_buf_t;

int lr_buf_reserve(lr_buf_t *b, size_t extra);
int lr_buf_append(lr_buf_t *b, const void *p, size_t n);
void lr_buf_consume(lr_buf_t *b, size_t n);
void lr_buf_free(lr_buf_t *b);

/* ---- output queue of a connection: bytes plus referenced external chunks ---- */
typedef void (*lr_release_cb)(void *arg);

typedef struct lr_seg_s {
  const char *ext;   /* NULL: bytes live in the queue's buffer at off */
  size_t off, len;
  lr_release_cb release; /* for ext segments, called once written or dropped */
  void *arg;
} lr_seg_t;

/* a file body (core/file.c): ext == lr_seg_file, arg its file and start, off
 * the bytes of it already sent; conn.c sends it with sendfile(2) */
extern const char lr_seg_file[1];

typedef struct lr_outq_s {
  lr_buf_t bytes;
  lr_seg_t *segs;
  unsigned n, cap;
  size_t total; /* bytes queued (buffer + external) */
} lr_outq_t;

/* ---- headers: slices into the stream's pool, names lowercase ---- */
typedef struct lr_header_s {
  lr_str_t name, value;
} lr_header_t;

/* ---- streams: one request/response, protocol-neutral ---- */
typedef struct lr_conn_s lr_conn_t;
typedef struct lr_stream_s lr_stream_t;

enum lr_wait {
  LR_WAIT_NONE = 0,
  LR_WAIT_BODY,  /* handler waits for request body data */
  LR_WAIT_DRAIN, /* handler waits for the output to drain */
  LR_WAIT_BOTH,  /* h2: either (a stream tunnel, core/tunnel.c); the protocols test bits */
};

enum lr_stream_flags {
  LR_SF_HEAD = 1 << 0,          /* request method is HEAD */
  LR_SF_REPLIED = 1 << 1,       /* response head sent */
  LR_SF_STREAMING = 1 << 2,     /* body sent in pieces (chunked on h1) */
  LR_SF_FINISHED = 1 << 3,      /* response complete */
  LR_SF_BODY_DONE = 1 << 4,     /* request body fully received */
  LR_SF_EXPECT = 1 << 5,        /* client sent expect: 100-continue */
  LR_SF_CONTINUED = 1 << 6,     /* 100 Continue sent */
  LR_SF_TE_TRAILERS = 1 << 7,   /* client accepts trailers */
  LR_SF_CONN_GONE = 1 << 8,     /* connection side released the stream */
  LR_SF_APP_GONE = 1 << 9,      /* application side released the stream */
  LR_SF_RESET = 1 << 10,        /* aborted: client went away or protocol error */
  LR_SF_BODY_TOO_BIG = 1 << 13, /* body passed max_body while streaming in */
  LR_SF_WS_UPGRADE = 1 << 14,   /* h1: upgrade: websocket with connection: upgrade */
  LR_SF_CHECKED = 1 << 15,      /* send_head got LR_CHECKED: the protocol may skip lr_header_valid */
};

struct lr_stream_s {
  /* written by the protocol when the request head is complete */
  lr_conn_t *conn; /* NULL once the connection is gone */
  struct lr_worker_s *worker;
  lr_pool_t pool;
  lr_str_t method, target, path, query, authority;
  int version; /* 10, 11 or 20 */
  lr_header_t *headers;
  unsigned n_headers, cap_headers;
  int64_t content_length; /* -1 when unknown (chunked or none on h2) */
  uint32_t id;            /* h2 stream id; request number on h1 */
  /* request body, written by the protocol, consumed by lr_stream_read_body */
  lr_buf_t body;
  uint64_t body_received;
  /* response state, written by lr_stream_* calls */
  unsigned flags;
  int status;
  uint64_t bytes_sent;
  /* metrics (only with w->metrics): the route it matched (0: none), start time */
  unsigned route;
  uint64_t t0;
  /* application */
  void *app_data;   /* owned by bindings/ */
  struct lr_ws_s *ws; /* h2: the WebSocket this CONNECT stream carries (RFC 8441), set by websocket.c */
  int wait;         /* enum lr_wait, set by the app before it yields */
  void *proto_data; /* protocol-private per-stream state (h2), NULL once the conn lets go */
  /* the protocol's list of streams it let go of while their handler still runs
   * (h2 counts them against --h2-max-streams); unlinked when the stream is freed */
  lr_link_t conn_link;
};

/* the application layer, set once per worker */
typedef struct lr_app_hooks_s {
  /* request head is complete: start the handler. May reply synchronously. */
  void (*start)(lr_stream_t *s);
  /* something the stream waits for happened (body data, drain, reset). */
  void (*wake)(lr_stream_t *s);
  /* the connection side will never touch the stream again (after a reset) */
  void (*conn_gone)(lr_stream_t *s);
  /* once per loop phase, before output is flushed: run deferred wake-ups */
  void (*tick)(struct lr_worker_s *w);
  /* the worker was woken by another thread (lr_worker_wakeup): e.g. a reload */
  void (*wakeup)(struct lr_worker_s *w);
} lr_app_hooks_t;

/* ---- response API used by the application layer ---- */
/* Flags for send_head / send_data */
#define LR_FIN 1
/* send_head: the caller already checked every field (name a token, value
 * without CR, LF or NUL), so the protocol need not again (LR_SF_CHECKED) */
#define LR_CHECKED 2

/* headers from the handler: names may be mixed case (lowercased on output);
 * protocol headers are dropped. body may be NULL. */
int lr_stream_send_head(lr_stream_t *s, int status, const lr_header_t *h, size_t n, const char *body, size_t len,
                        lr_release_cb release, void *arg, int fin);
/* body data after send_head(fin=0); large data may be referenced: release is then
 * called when the bytes are written or dropped (release==NULL: data is copied) */
int lr_stream_send_data(lr_stream_t *s, const char *data, size_t len, lr_release_cb release, void *arg);
int lr_stream_send_trailers(lr_stream_t *s, const lr_header_t *h, size_t n);
int lr_stream_finish(lr_stream_t *s);
/* abort the response: the peer sees a truncated message (h1 closes the connection) */
void lr_stream_abort(lr_stream_t *s);
/* body: copies up to max bytes into out; returns bytes, 0 and sets *fin, or LR_ECLOSED.
 * Returning 0 without fin means: wait (then set s->wait = LR_WAIT_BODY). */
int lr_stream_read_body(lr_stream_t *s, lr_buf_t *out, size_t max, int *fin);
/* true when the handler should wait for the connection to drain before writing more */
int lr_stream_write_blocked(lr_stream_t *s);
/* true when the handler should wait before it queues more (checked before a write) */
int lr_stream_queue_blocked(lr_stream_t *s);
/* the application is done with the stream (coroutine ended) */
void lr_stream_app_release(lr_stream_t *s);
const lr_str_t *lr_stream_header(const lr_stream_t *s, const char *name, size_t len);
int lr_stream_peer(const lr_stream_t *s, char *out, size_t outlen, int *port);
int lr_stream_local_port(const lr_stream_t *s);
const char *lr_stream_scheme(const lr_stream_t *s);

/* ---- protocols ---- */
typedef struct lr_proto_s {
  const char *name;
  void (*on_read)(lr_conn_t *c, const char *data, size_t len);
  void (*on_eof)(lr_conn_t *c);
  void (*on_drain)(lr_conn_t *c);   /* output queue fell below the low-water mark */
  void (*on_timeout)(lr_conn_t *c); /* the connection's timeout expired */
  void (*on_close)(lr_conn_t *c);   /* free protocol state; streams lose their conn */
  void (*on_shutdown)(lr_conn_t *c);/* graceful stop requested */
  /* stream operations */
  int (*send_head)(lr_stream_t *s, int status, const lr_header_t *h, size_t n, const char *body, size_t len,
                   lr_release_cb release, void *arg, int fin);
  int (*send_data)(lr_stream_t *s, const char *data, size_t len, lr_release_cb release, void *arg, int fin);
  int (*send_trailers)(lr_stream_t *s, const lr_header_t *h, size_t n);
  void (*abort)(lr_stream_t *s);
  void (*body_wanted)(lr_stream_t *s); /* the handler reads: send 100, reopen windows */
  void (*resume)(lr_conn_t *c);        /* deferred work: parse pipelined input, produce h2 frames */
  /* optional: should the stream's handler wait before writing more? (default:
   * the connection's output queue is above LR_OUT_HIGH) */
  int (*write_blocked)(lr_stream_t *s);
  /* optional: should the handler wait BEFORE queueing its next write? (h2: the
   * stream can't send now and the connection already holds --output-buffer,
   * so a hundred stuck streams don't each hold a write) */
  int (*queue_blocked)(lr_stream_t *s);
  /* optional: response bytes the protocol holds besides the out queue (h2:
   * DATA waiting for a window); for lariat.stats(), never on a request path */
  size_t (*held)(lr_conn_t *c);
  /* optional: the peer hung up (FIN or RST) while reading was paused, so no
   * EOF could be read. conn.c looks once a second while paused (POLLRDHUP,
   * nginx's EPOLLRDHUP test), only for protocols that set this: for them a
   * half-close means the client is gone (h1, DESIGN §4b) */
  void (*on_hangup)(lr_conn_t *c);
} lr_proto_t;

/* ---- timeouts: FIFO lists of fixed duration, checked by one timer per worker ---- */
typedef struct lr_timeout_s {
  lr_link_t link;
  uint64_t deadline;
  int kind;
} lr_timeout_t;

enum {
  LR_TO_NONE = 0,
  LR_TO_HEADER, /* a request head must complete (header_timeout) */
  LR_TO_IDLE,   /* keep-alive idle (idle_timeout) */
  LR_TO_BODY,   /* h1: periodic check of the request body's deadline (http1.c) */
  LR_TO_LINGER, /* lingering close: time between two reads (lingering_timeout), conn.c */
  LR_TO_SEND,   /* send timeout: c->send_to, not c->timeout (conn.c) */
  LR_TO_HUP,    /* hang-up probe while reading is paused, every second: c->hup_to (conn.c) */
  LR_TO_N
};

/* ---- connections ---- */
enum lr_conn_flags {
  LR_CF_CLOSING = 1 << 0,
  LR_CF_WRITING = 1 << 1,    /* a uv_write is in flight */
  LR_CF_READ_STOPPED = 1 << 2,
  LR_CF_DEFERRED = 1 << 3,   /* in the worker's deferred list */
  LR_CF_NEED_RESUME = 1 << 4,/* proto->resume wanted in the deferred pass */
  LR_CF_CLOSE_AFTER_WRITE = 1 << 5,
  LR_CF_EOF = 1 << 6,
  LR_CF_LINGER = 1 << 7,    /* with CLOSE_AFTER_WRITE: lingering close once flushed */
  LR_CF_LINGERING = 1 << 8, /* write side shut, input discarded; the protocol is gone */
  LR_CF_STALLED = 1 << 9,   /* the protocol has output the peer won't take (lr_conn_send_stalled) */
  LR_CF_PROXY_HDR = 1 << 12, /* --proxy-protocol: the PROXY header is still being read */
};

struct lr_conn_s {
  uv_tcp_t tcp; /* first: the handle's data points to the conn */
  struct lr_worker_s *worker;
  const lr_proto_t *proto;
  struct lr_listener_s *listener;
  unsigned flags;
  lr_outq_t out;      /* being filled */
  lr_outq_t inflight; /* being written by uv_write */
  uv_write_t *wreq;   /* only while a write waits on the kernel (rare) */
  lr_timeout_t timeout;
  lr_timeout_t send_to; /* send timeout, armed while output can't leave (conn.c) */
  lr_timeout_t hup_to;  /* hang-up probe, armed while reading is paused (proto->on_hangup) */
  size_t send_mark;     /* libuv's write queue size when send_to was armed: less = progress */
  uint64_t linger_end;  /* lingering close: loop time when discarding input ends */
  void *proto_state;  /* owned by the protocol (h2 session, websocket) */
  void *tls;          /* TLS filter under the protocol (core/tls.c), NULL on plain connections */
  struct lr_proxy_s *proxy; /* --proxy-protocol: header state, then the real client (proxy_protocol.c) */
  lr_link_t deferred; /* worker's deferred list: flush and resume */
  lr_link_t all;      /* worker's list of connections */
  /* the socket's peer, asked once per connection (lr_stream_peer: req.peer,
   * x-forwarded-for, the access log), not with a getpeername per request */
  uint8_t peer_family; /* 0 until asked; AF_INET, AF_INET6 or AF_UNIX */
  uint16_t peer_port;
  uint8_t peer_addr[16];
};

/* above this much queued output (user space: the out queue plus the write
 * in flight), writers wait until the queue drains: --output-buffer, 64 KiB by
 * default, so a peer that doesn't read costs little beyond the kernel's buffers */
extern size_t lr_out_high; /* set once by main */
#define LR_OUT_HIGH lr_out_high

void lr_conn_write(lr_conn_t *c, const void *p, size_t n);
void lr_conn_write_ref(lr_conn_t *c, const char *p, size_t n, lr_release_cb release, void *arg);
char *lr_conn_reserve(lr_conn_t *c, size_t n); /* space to write into, then commit */
void lr_conn_commit(lr_conn_t *c, size_t n);
void lr_conn_defer(lr_conn_t *c);  /* flush (and resume if NEED_RESUME) after this loop phase */
void lr_conn_close(lr_conn_t *c);  /* close now, dropping queued output */
void lr_conn_close_after_write(lr_conn_t *c);
/* Close with possibly unread input (an error answered early, a body left
 * unread): once the output is flushed, shut down the write side and read and
 * discard input until the peer closes, for at most --lingering-time and at most
 * --lingering-timeout between reads (nginx's lingering_close). Closing at once
 * would make the kernel answer the unread input with RST, which destroys the
 * response before the client reads it. The protocol's on_close runs when the
 * lingering starts: from then on the connection belongs to conn.c alone. */
void lr_conn_close_linger(lr_conn_t *c);
/* Send timeout (--send-timeout), protocol-neutral: conn.c arms it by itself
 * while the kernel refuses output (a uv_write is pending) and re-arms it on
 * every write progress; when it expires the connection is closed (proto
 * on_close runs). A protocol with output the peer won't let it send (h2: flow
 * control window 0 with data waiting) calls lr_conn_send_stalled(c, 1); on
 * progress (the window reopened and data left) it calls (c, 0), and (c, 1)
 * again if it stalls again: each (0 then 1) starts a fresh period. */
void lr_conn_send_stalled(lr_conn_t *c, int stalled);
void lr_conn_read_stop(lr_conn_t *c);
void lr_conn_read_start(lr_conn_t *c);
void lr_conn_set_timeout(lr_conn_t *c, int kind);
size_t lr_conn_queued(const lr_conn_t *c);
void lr__conn_accept(struct lr_listener_s *l, int fd); /* fd: accepted, non-blocking */
void lr__conn_flush(lr_conn_t *c);
void lr__conn_timeout(lr_conn_t *c, int kind); /* worker.c: c's timeout of this kind expired */

/* ---- listeners and workers ---- */
/* the worker accepts by itself (accept4 on a polled socket) rather than with
 * uv_listen: at the descriptor limit libuv would drop pending connections (its
 * spare-fd trick, racy between worker threads) or spin; we stop polling */
typedef struct lr_listener_s {
  uv_poll_t poll;
  int fd;
  struct lr_worker_s *worker;
  const lr_listen_addr_t *addr;
  int paused; /* not polled: --max-connections reached or out of descriptors */
} lr_listener_t;

typedef struct lr_worker_s {
  int id;
  const lr_config_t *cfg;
  uv_loop_t loop;
  uv_thread_t thread;
  lr_listener_t listeners[LR_MAX_LISTENERS];
  int n_listeners;
  const lr_app_hooks_t *app;
  void *app_data; /* owned by bindings/ */
  struct lr_metrics_s *metrics; /* NULL unless metrics are on (core/metrics.c) */
  /* shared per loop: the read buffer (all reads of this loop land here first) */
  char *read_buf;
  size_t read_buf_size;
  /* recycled streams (lr__stream_new) */
  struct lr_stream_s *free_streams;
  unsigned n_free_streams;
  /* recycled blocks for stream pools */
  lr_block_t *free_blocks;
  unsigned n_free_blocks;
  /* deferred work: connections to flush or resume, run in prepare and check */
  lr_link_t deferred;
  uv_prepare_t prepare;
  uv_check_t check;
  /* connection timeouts */
  lr_link_t timeouts[LR_TO_N];
  uint64_t timeout_ms[LR_TO_N];
  uv_timer_t timeout_timer;
  /* out of descriptors (EMFILE/ENFILE): accepting paused until a connection
   * closes or this timer fires */
  uv_timer_t accept_timer;
  uint64_t fd_log_ms; /* last "out of descriptors" log line (rate limit) */
  /* memory back after a burst: once the connections are mostly gone, free
   * memory goes back to the system (malloc_trim) */
  uv_timer_t trim_timer;
  unsigned trim_peak; /* most connections since the last trim */
  unsigned fd_dropped; /* pauses since that line */
  /* date header value, refreshed at most once per second */
  uint64_t date_sec;
  char date[40];
  /* access log */
  int access_fd;
  lr_buf_t access_buf;
  /* connections */
  lr_link_t conns;
  unsigned n_conns;
  int stopping;
  int stop_requested; /* written by any thread (atomic), read by the worker */
  volatile int exited; /* set by the worker thread as its loop ends */
  uv_async_t wakeup; /* stop requests from the main thread */
  /* output buffers of connections with nothing queued, for reuse: an idle
   * connection holds none (memory per idle connection) */
  struct lr_spare_out_s {
    char *bytes;
    size_t cap;
    lr_seg_t *segs;
    unsigned segcap;
  } spare_out[64];
  unsigned n_spare_out;
  /* scratch header array for building responses */
  lr_header_t *scratch;
  size_t scratch_cap;
  /* outbound side (core/client.c): DNS cache, keep-alive pool, TLS client contexts;
   * created on first use, freed by lr_worker_destroy */
  struct lr_outbound_s *outbound;
  /* open files (core/file.c): created on first use, freed by lr_worker_destroy */
  struct lr_files_s *files;
} lr_worker_t;

/* ---- files as response bodies (core/file.c) ---- */
typedef struct lr_files_s lr_files_t;
typedef struct lr_file_s {
  int fd;            /* -1: a cached failure to open (err), so a missing file costs no open either */
  int err;
  unsigned refs;     /* the cache's (while cached) + queued bodies + reads in flight */
  uint64_t size;     /* from fstat at open; the cache checks it against stat(2) */
  int64_t mtime_ns;
  uint64_t dev, ino;
  uint64_t checked;  /* loop ms of the last open or stat */
  uint64_t used;     /* loop ms of the last lookup */
  uint32_t hash;
  struct lr_file_s *next; /* hash chain */
  lr_link_t lru;
  char *real;        /* its realpath, filled on first need by a user (bindings/file.c); freed with it */
  size_t path_len;
  char path[];
} lr_file_t;
/* a reference to the regular file at path (0) or a negative errno; from this
 * worker's cache when checked less than valid_ms ago. lr_file_unref when done */
int lr_file_open(lr_worker_t *w, const char *path, size_t len, uint64_t valid_ms, lr_file_t **out);
void lr_file_unref(lr_file_t *f);
/* plain HTTP/1.x: the kernel can copy the file to the socket */
int lr_stream_can_sendfile(const lr_stream_t *s);
/* a complete response whose body is bytes [off, off+len) of f, sent with
 * sendfile(2) (takes its own reference); LR_ESTATE where it can't be used.
 * flags: LR_CHECKED or 0 (as for send_head; LR_FIN is implied) */
int lr_stream_send_file(lr_stream_t *s, int status, const lr_header_t *h, size_t n, lr_file_t *f, uint64_t off,
                        uint64_t len, int flags);
int lr__file_sendfile(int sock, lr_seg_t *s); /* 0: all sent, 1: the socket is full, <0: error */
int lr__file_take_byte(lr_seg_t *s, char *out); /* the next byte, to wait for writability with */
void lr__files_free(lr_worker_t *w);

/* proxy_protocol.c: --proxy-protocol (HAProxy's PROXY v1 and v2) */
int lr__proxy_start(lr_conn_t *c);
ssize_t lr__proxy_read(lr_conn_t *c, const char *p, size_t n); /* bytes used, or -1: closed */
int lr__proxy_peer(const lr_conn_t *c, char *out, size_t outlen, int *port); /* 0: filled */
void lr__proxy_free(lr_conn_t *c);
/* listen_unix.c: unix:PATH listeners */
int lr__unix_bind(lr_listen_addr_t *a, unsigned mode, int workers, int *fds, int i, char *err, size_t errlen);
void lr_listeners_unlink(lr_config_t *cfg);

int lr_worker_init(lr_worker_t *w, int id, const lr_config_t *cfg, const lr_app_hooks_t *app, void *app_data);
int lr_worker_listen(lr_worker_t *w, int fds[], int n);
void lr_worker_run(lr_worker_t *w);
void lr_worker_stop(lr_worker_t *w);   /* thread-safe: asks the worker to drain and exit */
void lr_worker_wakeup(lr_worker_t *w); /* thread-safe: calls app->wakeup in the worker */
void lr_worker_destroy(lr_worker_t *w);
const char *lr_worker_date(lr_worker_t *w);
void lr_worker_access_log(lr_worker_t *w, lr_stream_t *s);
void lr__worker_conn_closed(lr_worker_t *w);
unsigned lr_worker_conns(const lr_worker_t *w); /* thread-safe read of n_conns (drain log) */

/* ---- metrics (core/metrics.c): per-worker counters, written by the worker
 * alone, summed by whoever renders them (no lock on the request path) ---- */
#define LR_MET_ROUTES 128 /* route ids; 0 = no route matched */
#define LR_MET_METHODS 8  /* GET HEAD POST PUT DELETE PATCH OPTIONS other */
#define LR_MET_BUCKETS 12 /* latency buckets, the last one +Inf */
extern const double lr_met_bounds[LR_MET_BUCKETS - 1];
extern const char *const lr_met_methods[LR_MET_METHODS];
typedef struct lr_metrics_s {
  uint64_t req[LR_MET_ROUTES][LR_MET_METHODS][5]; /* by status class 1xx..5xx */
  uint64_t dur[LR_MET_ROUTES][LR_MET_BUCKETS];
  uint64_t dur_ns[LR_MET_ROUTES];
  uint64_t bytes_in, bytes_out; /* read from sockets; response bytes */
  uint64_t streams[2];          /* finished requests over HTTP/1.x, HTTP/2 */
  /* a snapshot the worker refreshes (bindings/metrics.c) */
  unsigned conns[4];            /* http1, http2, other (WebSocket), tls among them */
  uint64_t lua_mem;
  unsigned handlers, tasks, versions;
  uint64_t budget_kills, memory_errors, reloads_ok, reloads_rejected, handler_timeouts;
  uv_timer_t snap;
} lr_metrics_t;
void lr_metrics_stream_done(lr_worker_t *w, lr_stream_t *s);

/* bind every listener once per worker with SO_REUSEPORT; fds[worker][listener] */
int lr_listeners_bind(lr_config_t *cfg, int workers, int *fds, char *err, size_t errlen);

/* ---- HTTP/1.1: every plain connection starts as one ---- */
extern const lr_proto_t lr_http1_proto;
size_t lr_http1_conn_size(void);
void lr_http1_init(lr_conn_t *c);

/* ---- HTTP/2 (core/http2.c) ---- */
extern const lr_proto_t lr_http2_proto;
/* switch a fresh connection to h2 (preface seen, or ALPN h2); data: bytes already read */
int lr_http2_start(lr_conn_t *c, const char *data, size_t len);
/* HTTP/1.1 `Upgrade: h2c` (RFC 7540 §3.2): answers 101 and carries on as h2 with s as
 * stream 1; returns 0 when taken over (data: the bytes after the request head), else
 * nonzero and the request stays HTTP/1.1. settings: the HTTP2-Settings value. */
int lr_http2_upgrade(lr_conn_t *c, lr_stream_t *s, const lr_str_t *settings, const char *data, size_t len);

/* ---- TLS (core/tls.c): a filter between the socket and the protocol ---- */
int lr_tls_global_init(const lr_config_t *cfg, char *err, size_t errlen); /* once, before workers */
void lr_tls_global_free(void);
int lr__tls_accept(lr_conn_t *c);                                 /* sets c->tls */
void lr__tls_on_read(lr_conn_t *c, const char *data, size_t len); /* decrypt, hand to proto */
/* at flush time (conn.c): plaintext in, records out */
int lr__tls_ready(const lr_conn_t *c); /* handshake done: application data may be sealed */
void lr__tls_seal(lr_conn_t *c, const char *p, size_t n); /* p == NULL: end of this batch */
size_t lr__tls_pending(const lr_conn_t *c);                /* record bytes waiting to be sent */
size_t lr__tls_take(lr_conn_t *c, char *out, size_t max);
void lr__tls_free(lr_conn_t *c);
void lr__tls_idle(lr_conn_t *c); /* nothing in flight: the memory BIOs' buffers go */

/* shared between protocols */
const char *lr_status_reason(int status);
int lr_header_is_hop_by_hop(const char *name, size_t len);
int lr_header_valid(const lr_header_t *hd);
int lr_token_in_list(const char *list, size_t len, const char *tok, size_t tl, int nocase);
int lr_status_has_body(int status);
lr_stream_t *lr__stream_new(lr_conn_t *c);
void lr__streams_free_all(struct lr_worker_s *w);
void lr__stream_conn_release(lr_stream_t *s);
int lr__stream_add_header(lr_stream_t *s, const char *name, size_t nlen, const char *value, size_t vlen);

/* ---- WebSocket (RFC 6455, permessage-deflate RFC 7692): core/websocket.c ---- */
typedef struct lr_ws_s lr_ws_t;

typedef struct lr_ws_opts_s {
  uint64_t max_message;      /* bytes of one message (and of its compressed form); 0 = 16 MiB */
  uint64_t ping_interval_ms; /* idle this long: ping; another interval without a byte: close. 0 = off */
  unsigned max_pings;        /* pings accepted per second before closing with 1008; 0 = 100 */
  size_t max_queued;         /* received bytes the app hasn't read before reading pauses; 0 = 1 MiB */
  size_t compress_threshold; /* outgoing messages this big or more are compressed */
  /* permessage-deflate: configuration in, negotiated result out */
  int deflate;
  int server_no_context_takeover, client_no_context_takeover;
  int server_max_window_bits, client_max_window_bits; /* 0 = 15 */
} lr_ws_opts_t;

enum { LR_WS_TEXT = 1, LR_WS_BINARY = 2 };
enum { LR_WS_EV_MESSAGE = 1, LR_WS_EV_DRAIN = 2, LR_WS_EV_CLOSED = 4 };

void lr_ws_accept_key(const char *key, size_t len, char out[29]);
/* a client's Sec-WebSocket-Key (16 random bytes, base64) and the accept value it expects */
int lr_ws_client_key(char key[25], char accept[29]);
int lr_utf8_valid(const char *p, size_t n);
/* pick the first acceptable permessage-deflate offer: 1 (o and resp filled) or 0 */
int lr_ws_negotiate_deflate(const char *offers, size_t len, lr_ws_opts_t *o, char *resp, size_t resplen);
/* answer the upgrade (headers: upgrade, connection, sec-websocket-*) and take the connection */
lr_ws_t *lr_ws_accept(lr_stream_t *s, const lr_header_t *h, size_t n, const lr_ws_opts_t *opts);
/* notify(ws, LR_WS_EV_*) runs from loop callbacks until lr_ws_app_release */
void lr_ws_set_app(lr_ws_t *ws, void (*notify)(lr_ws_t *ws, int events), void *app_data);
void *lr_ws_app_data(lr_ws_t *ws);
/* the oldest message: 1, 0 (none yet: wait) or LR_ECLOSED; lr_ws_consume drops it */
int lr_ws_recv(lr_ws_t *ws, int *kind, const char **data, size_t *len);
void lr_ws_consume(lr_ws_t *ws);
int lr_ws_close_info(lr_ws_t *ws, const char **reason, size_t *len); /* the close code */
int lr_ws_send(lr_ws_t *ws, int kind, const char *data, size_t len);
int lr_ws_ping(lr_ws_t *ws, const char *data, size_t len);
int lr_ws_close(lr_ws_t *ws, int code, const char *reason, size_t len);
int lr_ws_write_blocked(lr_ws_t *ws);
int lr_ws_can_send(lr_ws_t *ws); /* open, and no close frame sent yet */
void lr_ws_app_release(lr_ws_t *ws);
/* h2 (RFC 8441): the stream carrying ws has news; the app's wake/conn_gone hooks call this */
void lr_ws_stream_event(lr_ws_t *ws);
void lr_ws_going_away(lr_ws_t *ws); /* the server stops: close with 1001 */

/* ---- outbound connections (core/client.c, dns.c, pool.c, tls.c client mode) ----
 *
 * A client connection is an lr_conn_t (same out-queue, back-pressure and TLS
 * filter as an accepted one) whose protocol buffers what it reads in `in`
 * and tells its owner through notify. lr_client_open resolves, connects and
 * handshakes (or takes a live connection from this worker's keep-alive pool),
 * then notifies LR_CEV_OPEN or LR_CEV_CLOSED. */
typedef struct lr_client_s lr_client_t;

enum { LR_CEV_OPEN = 1, LR_CEV_READ = 2, LR_CEV_DRAIN = 4, LR_CEV_CLOSED = 8 };
enum { LR_CL_CONNECTING, LR_CL_OPEN, LR_CL_CLOSED };

typedef struct lr_client_opts_s {
  const char *host; /* name or IP literal */
  int port;
  int tls;
  const char *sni;  /* NULL: host (not sent for an IP literal) */
  int verify;       /* check the chain and the name (default on) */
  const char *ca;   /* PEM file of trusted CAs; NULL: the system store */
  const char *alpn; /* ALPN list in wire format; NULL: none */
  int fresh;        /* never from the pool (a retry after a pooled connection failed) */
  int replayable;   /* the owner retries on a fresh connection if a pooled one turns out
                     * closed: a pooled one is then handed out without a MSG_PEEK probe */
  const char *key;  /* lr_client_key_into of the fields above when the caller keeps it (a
                     * proxy route works it out once), with key_hash = lr_client_key_hash(key);
                     * NULL: worked out here */
  uint32_t key_hash;
} lr_client_opts_t;

struct lr_client_s {
  lr_conn_t conn;         /* first: a client connection is a conn */
  uv_connect_t connect_req; /* lives as long as the handle: its callback may run during close */
  /* owner: set by lr_client_open, cleared by lr_client_close/keepalive. notify(cl, 0)
   * says the connection moved to another object (a retry on the next address):
   * the owner keeps cl from there on */
  void (*notify)(lr_client_t *cl, int events);
  void *owner;
  /* written by client.c */
  int state;              /* LR_CL_* */
  int eof;                /* the peer finished sending (FIN or close_notify) */
  int h2;                 /* ALPN picked h2 */
  int reused;             /* taken from the keep-alive pool */
  lr_buf_t in;            /* plaintext received, not yet consumed */
  size_t in_max;          /* reading pauses at this much unconsumed (0: 256 KiB); lr_client_want */
  char err[160];          /* why it failed: "connection refused", "timeout", "certificate verify failed: ..." */
  char *key;              /* pool key: host, port, tls, sni, verify, ca */
  uint32_t key_hash;      /* of key: the pool compares it before the string */
  struct lr_client_priv_s *priv; /* connect-time state (client.c) */
  lr_link_t pool;         /* in the pool's idle list (pool.c) */
  uint64_t idle_deadline;
};

/* 0: cl will be notified (or *out is already open when reused); <0 and err filled: failed now */
int lr_client_open(lr_worker_t *w, const lr_client_opts_t *o, void (*notify)(lr_client_t *, int), void *owner,
                   lr_client_t **out, char *err, size_t errlen);
int lr_client_write(lr_client_t *cl, const void *p, size_t n); /* queues; LR_ECLOSED once closed */
int lr_client_write_blocked(const lr_client_t *cl);
void lr_client_consume(lr_client_t *cl, size_t n);           /* the owner used n bytes of in */
void lr_client_want(lr_client_t *cl, size_t n); /* the owner needs n bytes in `in` at once (0: default) */
void lr_client_close(lr_client_t *cl);                         /* no more notifications */
/* back to the pool (0) if the connection is clean (nothing unread, not at EOF), else closed (-1) */
int lr_client_keepalive(lr_client_t *cl, uint64_t idle_ms, unsigned size);
unsigned lr_client_count(lr_worker_t *w); /* outbound connections of this worker */
void lr__outbound_free(lr_worker_t *w);   /* worker exit: close pooled connections, free caches */
void lr__outbound_stop(lr_worker_t *w);   /* worker drains: pooled connections close now */

/* DNS (core/dns.c): getaddrinfo on libuv's thread pool, answers cached per worker */
#define LR_DNS_MAX 8
typedef struct lr_dns_query_s lr_dns_query_t;
typedef void (*lr_dns_cb)(void *arg, int status, const struct sockaddr_storage *addrs, int n);
/* n > 0: answered (a literal or cached); 0: ask lr_dns_query */
int lr_dns_cached(lr_worker_t *w, const char *name, struct sockaddr_storage *out, int max);
lr_dns_query_t *lr_dns_query(lr_worker_t *w, const char *name, lr_dns_cb cb, void *arg);
void lr_dns_cancel(lr_dns_query_t *q); /* cb will not run */

/* core/tunnel.c: answer the HTTP/1.1 request s with 101 and headers h, then
 * splice its connection to up (which it takes over) both ways */
int lr_tunnel_start(lr_stream_t *s, lr_client_t *up, const lr_header_t *h, size_t n);
/* ... and an HTTP/2 stream (RFC 8441 extended CONNECT, answered 2xx by the caller)
 * spliced to up, which it takes over. The stream's coroutine calls pump when the
 * stream wakes it (pump sets s->wait) or up calls wake(arg): 1 when the tunnel is
 * over (the stream finished or reset, or the client gone), 0 to wait again.
 * free closes up if it is still open. */
typedef struct lr_stunnel_s lr_stunnel_t;
lr_stunnel_t *lr_stunnel_start(lr_stream_t *s, lr_client_t *up, void (*wake)(void *arg), void *arg);
int lr_stunnel_pump(lr_stunnel_t *t);
void lr_stunnel_free(lr_stunnel_t *t);

/* HTTP/1.1 client exchange (core/http1_client.c): a response parser of its own */
#define LR_H1C_MAX_HEADERS 100
#define LR_H1C_HEAD_MAX (64 * 1024)
typedef struct lr_h1c_header_s {
  size_t name_off, name_len, value_off, value_len; /* into head */
} lr_h1c_header_t;

typedef struct lr_h1c_s {
  lr_buf_t head; /* header names (lowercase) and values */
  unsigned n_headers;
  int status, version; /* version: 10, 11 (or 20: http2_client.c) */
  int head_req;        /* the request was HEAD: no body */
  int stream;          /* parse at most 256 KiB of body ahead of the owner (else all of it) */
  int headers_done, done, keep_alive, failed, too_big;
  unsigned n_trailers; /* the last n_trailers of the headers came after the body (chunked trailer section, h2 HEADERS) */
  lr_buf_t body;       /* body bytes the owner has not taken yet (at most 256 KiB parsed ahead) */
  uint64_t body_total, max_body; /* max_body 0 = none */
  /* the parser's own (http1_client.c) */
  int state;
  unsigned framing;    /* what the head said: content-length, transfer-encoding, connection */
  uint64_t left;       /* bytes still to come of the content-length body or of this chunk */
  size_t scanned;      /* bytes of the unfinished line already searched for its end */
  size_t head_bytes;   /* of the head (then trailers) so far: bounded by LR_H1C_HEAD_MAX */
  lr_h1c_header_t hdr[LR_H1C_MAX_HEADERS]; /* last: only the first n_headers are ever read (init skips it) */
} lr_h1c_t;

void lr_h1c_init(lr_h1c_t *h, int head_req, int stream, uint64_t max_body); /* keeps the buffers of a previous use */
void lr_h1c_free(lr_h1c_t *h);
/* parse from data; *used bytes were taken: the rest (an unfinished line, body beyond the room) must
 * start the next call's data. <0: invalid response or too big (failed, too_big) */
int lr_h1c_feed(lr_h1c_t *h, const char *data, size_t len, size_t *used);
int lr_h1c_eof(lr_h1c_t *h); /* the server closed: 0 if that ends the response */
int lr_h1c_add_header(lr_h1c_t *h, const char *name, size_t nlen, const char *value, size_t vlen);
lr_str_t lr_h1c_header_name(const lr_h1c_t *h, unsigned i);
lr_str_t lr_h1c_header_value(const lr_h1c_t *h, unsigned i);
int lr_h1c_write_head(lr_client_t *cl, const char *method, const char *target, const char *host,
                      const lr_header_t *hd, size_t n, int64_t body_len); /* body_len < 0: chunked */
int lr_h1c_write_chunk(lr_client_t *cl, const char *p, size_t n); /* n == 0: the last chunk */

/* HTTP/2 client (core/http2_client.c): one session per origin per worker on a
 * connection whose ALPN picked h2; responses fill the owner's lr_h1c_t (version 20) */
typedef struct lr_h2c_s lr_h2c_t;
typedef struct lr_h2c_stream_s lr_h2c_stream_t;
lr_h2c_t *lr_h2c_start(lr_client_t *cl, uint64_t idle_ms); /* takes cl over; closes idle_ms after its last stream */
lr_h2c_t *lr_h2c_find(lr_worker_t *w, const char *key);  /* a live session for this origin with room */
lr_h2c_stream_t *lr_h2c_request(lr_h2c_t *h, const char *method, const char *scheme, const char *authority,
                                const char *path, const lr_header_t *hd, size_t n, const char *body, size_t blen,
                                int more, lr_h1c_t *res, void (*notify)(void *owner), void *owner);
/* more: the body goes on with lr_h2c_write (the last call with fin) */
int lr_h2c_write(lr_h2c_stream_t *st, const char *p, size_t n, int fin);
int lr_h2c_write_blocked(const lr_h2c_stream_t *st); /* wait for notify before writing more */
int lr_h2c_refused(const lr_h2c_stream_t *st);       /* the server refused it unprocessed: retry is safe */
void lr_h2c_consume(lr_h2c_stream_t *st, size_t n); /* the owner took n body bytes: reopen the window */
void lr_h2c_release(lr_h2c_stream_t *st);           /* done with it (reset if still open) */
char *lr_client_key(const lr_client_opts_t *o);     /* the pool key of o, malloc'd */
/* the pool key of o into buf (no allocation): its length, or -1 if it does not fit */
int lr_client_key_into(const lr_client_opts_t *o, char *buf, size_t size);
uint32_t lr_client_key_hash(const char *key);

/* TLS client mode (core/tls.c) */
/* start a client handshake on a connected c; origin keys session resumption.
 * client.c is told the outcome by lr__client_tls_done (err NULL: verified and ready) */
int lr__tls_connect(lr_conn_t *c, const lr_client_opts_t *o, const char *origin, char *err, size_t errlen);
void lr__client_tls_done(lr_conn_t *c, const char *err, int h2);

/* HTTP/1.1 Upgrade (RFC 9110 §7.8): write 101 with h, hand the connection to
 * proto/state; bytes that came after the request are moved into *rest */
int lr_http1_switch(lr_stream_t *s, const lr_header_t *h, size_t n, const lr_proto_t *proto, void *state,
                    lr_buf_t *rest);

#endif
