/* HTTP/2 (RFC 9113) over nghttp2.
 *
 * nghttp2 does the framing, HPACK, stream states and most of the protocol
 * checks; this file maps its streams onto lr_stream_t. The rules it keeps:
 *
 * - The application is never called from inside an nghttp2 callback.
 *   Callbacks record what happened on the stream (h2_stream_t.pend) and put
 *   it on the connection's pending list; run_pending() acts on it once
 *   nghttp2_session_mem_recv/mem_send has returned.
 * - Frames are produced in one place: h2_resume(), run by the worker's
 *   deferred pass (LR_CF_NEED_RESUME) once per loop phase, so the frames of
 *   every stream that had something to say leave in one writev.
 * - Response bodies go through a data provider that defers when the handler
 *   has not written yet and is resumed by the next write; DATA payloads are
 *   written with NGHTTP2_DATA_FLAG_NO_COPY, big Lua strings by reference.
 * - Request bodies: the connection window is given back as data arrives,
 *   the stream window only as the handler reads (nghttp2_session_consume_stream),
 *   so a slow handler pushes back on its own upload only and a stream never
 *   buffers more than its window.
 */
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <nghttp2/nghttp2.h>

#include "lariat.h"

/* Output a connection buffers in user space: response bodies waiting for the
 * peer's window (h2_conn_t.queued) plus frames waiting for the kernel. Above
 * this, handlers writing on the connection wait and no more frames are made:
 * the data provider defers, so a peer that never reads or keeps its window at
 * 0 costs ~64 KiB, and the send timeout (stalled) closes it. */
#define OUT_HIGH LR_OUT_HIGH /* --output-buffer, 64 KiB by default */
#define CONN_WINDOW (16 * 1024 * 1024)
/* flood guards: token buckets per connection (burst, refill per second) */
#define RST_BURST 200.0 /* CVE-2023-44487: streams reset by the client */
#define RST_RATE 100.0
#define NOISE_BURST 1000.0 /* PING, SETTINGS, PRIORITY, empty DATA/HEADERS/CONTINUATION */
#define NOISE_RATE 500.0
#define MAX_CONTINUATIONS 16
/* HPACK cost: a header block decoding to more than this many times
 * --max-header-bytes is a bomb (GOAWAY at once); the MAX_REJECTS-th 431/414
 * on a connection ends it too */
#define BOMB_FACTOR 4
#define MAX_REJECTS 4
/* WINDOW_UPDATE is free while it answers DATA we sent (a stream's and the
 * connection's per frame); beyond that it is noise */
#define WU_CREDIT_MAX 4096

typedef struct h2_chunk_s {
  struct h2_chunk_s *next;
  const char *data;
  size_t len;
  lr_release_cb release; /* NULL: the bytes follow this struct and go with it */
  void *arg;
} h2_chunk_t;

enum {
  PEND_START = 1 << 0,  /* request head complete: start the handler */
  PEND_WAKE = 1 << 1,   /* body data or its end arrived */
  PEND_CLOSED = 1 << 2, /* nghttp2 closed the stream */
  PEND_REJECT = 1 << 3, /* the core answers (431, 413) instead of the handler */
  PEND_RST = 1 << 4,    /* response complete, request still coming: RST_STREAM(NO_ERROR) */
};

typedef struct h2_conn_s h2_conn_t;

typedef struct h2_stream_s {
  lr_stream_t *s; /* NULL once the connection side let go of it */
  h2_conn_t *h;
  int32_t id;
  h2_chunk_t *head, *tail; /* response body waiting for the window */
  size_t queued;
  size_t unacked; /* request body bytes handed to s->body, not yet given back to the window */
  uint64_t head_bytes; /* decoded size of its header blocks (RFC 9113 §6.5.2) */
  uint16_t reject; /* status the core answers with */
  uint8_t fin;       /* the whole response body is queued */
  uint8_t deferred;  /* the data provider returned NGHTTP2_ERR_DEFERRED */
  uint8_t started;
  uint8_t closed;
  uint8_t drop;      /* a HEAD or bodiless response: data written to it is dropped */
  uint8_t aborted;   /* the handler aborted it (RST_STREAM INTERNAL_ERROR, not the peer's doing) */
  uint8_t got_data;  /* request DATA arrived */
  uint8_t rst_on_data; /* response complete, request not: RST_STREAM(NO_ERROR) if DATA comes (lingering) */
  uint8_t rst_sent;  /* our RST_STREAM went out: its id is in h2_conn_t.closed already */
  uint8_t peer_done; /* the request's END_STREAM arrived (nghttp2: remote closed) */
  nghttp2_nv *trailers; /* sent when the data provider reaches the end */
  size_t n_trailers;
  unsigned pend;
  lr_link_t pend_link;
  lr_link_t all;
} h2_stream_t;

struct h2_conn_s {
  lr_conn_t *c;
  nghttp2_session *ng;
  lr_link_t pending; /* h2_stream_t.pend_link */
  h2_stream_t *hdr_st; /* the stream whose request head is being decoded (on_header: no lookup per field) */
  h2_stream_t *data_st; /* the stream of the DATA frame on_send_data wrote last (on_frame_send: no lookup) */
  lr_link_t streams; /* h2_stream_t.all */
  unsigned n_streams;
  uint8_t goaway;       /* GOAWAY sent: finish in-flight streams, then close */
  uint8_t send_blocked; /* h2_resume stopped at the output high-water mark */
  uint8_t maybe_drained;/* some stream's output shrank: check writers waiting */
  uint8_t calm;         /* ENHANCE_YOUR_CALM was sent */
  uint8_t calm_due;     /* too many streams reset by us: ENHANCE_YOUR_CALM once the frames are out */
  uint8_t in_recv;
  uint8_t stalled;      /* response data waits and none could be sent: the send timeout runs */
  uint8_t sent_data;    /* a DATA frame went out since the last stall_check */
  uint8_t rejects;      /* 431s and 414s answered on this connection */
  unsigned n_lingering; /* streams with rst_on_data: only the peer's end of the request is missing */
  uint32_t wu_credit;   /* WINDOW_UPDATEs our DATA frames pay for */
  size_t queued;        /* response body bytes queued on all streams (h2_stream_t.queued) */
  /* lr_stream_t.conn_link: streams nghttp2 closed whose handler still runs;
   * they count against --h2-max-streams until the handler is gone */
  lr_link_t zombies;
  double rst_tokens, noise_tokens;
  uint64_t bucket_ms;
  int32_t max_sid;      /* highest stream the client opened */
  /* recently closed client streams (nghttp2 keeps none: no_closed_streams), to
   * tell "closed" from "never opened"; CLOSED_IGNORE marks those whose frames
   * may still be in flight (see closed_find) */
  uint32_t closed[32];
  unsigned n_closed;
  /* where the input is in the frame sequence (recv_frames) */
  uint32_t rx_left;     /* payload bytes of the current frame still to come */
  uint8_t rx_preface;   /* bytes of the client preface still to come */
  uint8_t rx_hlen;      /* bytes of the next frame header in rx_hd */
  uint8_t rx_hd[9];
  /* nghttp2's big blocks (its 16 KiB frame buffer, its 4 KiB stream map) on
   * their own pages, so that an idle session can give them back (trim_idle) */
  struct h2_big_s {
    void *p;
    size_t len;      /* mapped bytes, whole pages */
    uint8_t dead_idle; /* the frame buffer: no content worth keeping when idle */
  } big[4];
  uint8_t in_new;    /* inside nghttp2_session_server_new3 */
  uint8_t trimmed;   /* the big blocks were given back since the last frame */
  uint8_t trim_due;  /* idle, not settled yet: the LR_TO_BODY timeout does it (idle_now) */
  uint64_t trim_ms;  /* when trim_idle or h2_wake last ran */
  /* Asleep (ng == NULL, h2_sleep): an idle connection keeps no nghttp2
   * session, only what a new one needs to carry on (h2_wake) */
  uint8_t restoring;      /* h2_wake is replaying the connection's state into a new session */
  uint8_t slept;          /* it has slept once: later sleeps wait for a quiet while (idle_now) */
  uint8_t indexed;        /* the peer's fields are in our HPACK decoder's table: it can't sleep */
  uint8_t settings_acked; /* the peer acknowledged our SETTINGS */
  int32_t window;         /* asleep: our send window on the connection, as the peer sees it */
  /* the peer sees a send window this much smaller than nghttp2 does: a session
   * made by h2_wake starts at 65,535 and had been granted less (on_read_data) */
  int32_t win_debt;
  uint32_t peer_settings[8]; /* asleep: the peer's SETTINGS, by id - 1 (ids 1-6 and 8) */
};

#define H2(c) ((h2_conn_t *)(c)->proto_state)

/* ---- small blocks: a per-thread cache in front of malloc ----
 *
 * Each request makes and frees the same few small blocks: nghttp2's stream,
 * its outbound items and header copy, our h2_stream_t and body chunk. With
 * hundreds of streams in flight glibc's tcache (7 blocks a size) runs dry and
 * every pair costs ~400 instructions in _int_malloc/_int_free. Freed blocks of
 * up to 1 KiB wait on per-thread lists by size class (malloc_usable_size says
 * which), SMALL_CACHE_BYTES at most per thread; they are ordinary malloc
 * blocks, so free() and realloc() stay valid on any of them. */
#ifdef __SANITIZE_ADDRESS__
#define SMALL_CACHE_BYTES 0 /* let AddressSanitizer see a block used after its free */
#else
#define SMALL_CACHE_BYTES (1024 * 1024)
#endif
#define SMALL_CLASSES 6 /* 32 .. 1024 bytes */

static __thread struct {
  void *head[SMALL_CLASSES];
  size_t bytes;
  int keyed; /* small_key holds this thread's lists: they go at its exit */
} small;
static pthread_key_t small_key;
static pthread_once_t small_once = PTHREAD_ONCE_INIT;

static void small_drain(void *unused) {
  (void)unused;
  for (int c = 0; c < SMALL_CLASSES; c++)
    while (small.head[c]) {
      void *p = small.head[c];
      small.head[c] = *(void **)p;
      free(p);
    }
  small.bytes = 0;
}

static void small_init(void) { pthread_key_create(&small_key, small_drain); }

/* a connection went to sleep: what a burst left cached goes back to malloc
 * (and from there to the system at the worker's trim), down to keep bytes,
 * so idle connections are not charged for the busy ones' cache */
#define SMALL_IDLE_BYTES (64 * 1024)
static void small_trim(size_t keep) {
  for (int c = SMALL_CLASSES - 1; c >= 0 && small.bytes > keep; c--)
    while (small.head[c] && small.bytes > keep) {
      void *p = small.head[c];
      small.head[c] = *(void **)p;
      small.bytes -= (size_t)32 << c;
      free(p);
    }
}

/* the smallest class holding n bytes (n <= 1024) */
static int small_class(size_t n) { return n <= 32 ? 0 : 64 - __builtin_clzll((unsigned long long)n - 1) - 5; }

static void *small_alloc(size_t n) {
  if (n > (32u << (SMALL_CLASSES - 1))) return malloc(n);
  int c = small_class(n);
  void *p = small.head[c];
  if (p == NULL) return malloc((size_t)32 << c);
  small.head[c] = *(void **)p;
  small.bytes -= (size_t)32 << c;
  return p;
}

static void *small_calloc(size_t n) {
  void *p = small_alloc(n);
  if (p) memset(p, 0, n);
  return p;
}

static void small_free(void *p) {
  if (p == NULL) return;
  size_t u = malloc_usable_size(p);
  if (u < 32 || small.bytes + u > SMALL_CACHE_BYTES) {
    free(p);
    return;
  }
  int c = u >= (32u << (SMALL_CLASSES - 1)) ? SMALL_CLASSES - 1 : 63 - __builtin_clzll((unsigned long long)u) - 5; /* the largest class u holds */
  if (!small.keyed) {
    pthread_once(&small_once, small_init);
    pthread_setspecific(small_key, &small);
    small.keyed = 1;
  }
  *(void **)p = small.head[c];
  small.head[c] = p;
  small.bytes += (size_t)32 << c;
}

/* ---- memory: nghttp2 allocates through these ----
 *
 * nghttp2 1.52 gives every session a 16 KiB frame buffer and a 4 KiB stream
 * map (256 buckets), both allocated at once and kept for the session's life:
 * with malloc they made most of an idle connection's ~15 KiB. Blocks of
 * BIG_BLOCK bytes or more get pages of their own (mmap: nothing is resident
 * until touched), and once the connection is idle trim_idle() hands back the
 * frame buffer's pages (what it held has been copied out already) and any page
 * of another block that is all zeros (the empty stream map); the kernel maps
 * a zero page again on the next touch. */
#define BIG_BLOCK 4096

static size_t page_size;

static struct h2_big_s *big_find(h2_conn_t *h, void *p) {
  for (size_t i = 0; i < sizeof h->big / sizeof h->big[0]; i++)
    if (h->big[i].p == p) return &h->big[i];
  return NULL;
}

static void *big_alloc(h2_conn_t *h, size_t n) {
  struct h2_big_s *b = big_find(h, NULL);
  if (b == NULL) return NULL;
  size_t len = (n + page_size - 1) & ~(page_size - 1);
  void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return NULL;
  *b = (struct h2_big_s){p, len, 0};
  return p;
}

static void *mem_malloc(size_t n, void *ud) {
  void *p = n >= BIG_BLOCK ? big_alloc(ud, n) : NULL;
  return p ? p : small_alloc(n);
}

static void *mem_calloc(size_t k, size_t n, void *ud) {
  if (n && k > SIZE_MAX / n) return NULL;
  void *p = k * n >= BIG_BLOCK ? big_alloc(ud, k * n) : NULL; /* fresh pages read as zeros */
  return p ? p : small_calloc(k * n);
}

static void mem_free(void *p, void *ud) {
  /* big blocks are whole pages: most frees needn't look */
  struct h2_big_s *b = p && ((uintptr_t)p & (page_size - 1)) == 0 ? big_find(ud, p) : NULL;
  if (b == NULL) {
    small_free(p);
    return;
  }
  munmap(b->p, b->len);
  *b = (struct h2_big_s){0};
}

static void *mem_realloc(void *p, size_t n, void *ud) {
  h2_conn_t *h = ud;
  struct h2_big_s *b = p ? big_find(h, p) : NULL;
  if (b == NULL) {
    void *q = p == NULL && n >= BIG_BLOCK ? big_alloc(h, n) : NULL;
    if (q == NULL) return realloc(p, n);
    /* the frame buffer: the one big nghttp2_buf made while the session is created */
    if (h->in_new && n > 16384) big_find(h, q)->dead_idle = 1;
    return q;
  }
  if (n <= b->len) return p;
  uint8_t dead_idle = b->dead_idle;
  size_t old = b->len;
  void *q = big_alloc(h, n);
  if (q) big_find(h, q)->dead_idle = dead_idle;
  else if ((q = malloc(n)) == NULL) return NULL;
  memcpy(q, p, old);
  mem_free(p, h);
  return q;
}

/* the connection is idle: give the big blocks' pages back */
static void trim_idle(h2_conn_t *h) {
  if (h->trimmed) return;
  h->trimmed = 1;
  for (size_t i = 0; i < sizeof h->big / sizeof h->big[0]; i++) {
    struct h2_big_s *b = &h->big[i];
    if (b->p == NULL) continue;
    if (b->dead_idle) {
      madvise(b->p, b->len, MADV_DONTNEED);
      continue;
    }
    for (size_t off = 0; off < b->len; off += page_size) {
      const uint64_t *w = (const uint64_t *)((char *)b->p + off);
      size_t k = 0, nw = page_size / sizeof *w;
      while (k < nw && w[k] == 0) k++;
      if (k == nw) madvise((char *)b->p + off, page_size, MADV_DONTNEED);
    }
  }
}

static int h2_sleep(h2_conn_t *h);
static int h2_wake(h2_conn_t *h);
static int doze(h2_conn_t *h, const uint8_t *p, size_t len);

/* idle: asleep if it can (h2_sleep), else its big blocks trimmed */
static void settle(h2_conn_t *h) {
  if (h2_sleep(h)) trim_idle(h);
  h->trim_ms = uv_now(&h->c->worker->loop);
}

/* Between a client's requests a busy connection is idle for moments: giving
 * the pages back each time, and faulting them in again with the next frame,
 * cost ~15% of h2c hello throughput, and a session made again by h2_wake
 * costs more. So a connection sleeps at once the first time it is idle
 * enough (a client that asks and then waits, the common case of an idle
 * connection, costs one wake), and settles at most once per TRIM_GAP_MS: an idle
 * moment within that only arms the LR_TO_BODY timeout (HTTP/1.1's body check,
 * 10 ms-1 s, which HTTP/2 has no other use for), and settling waits for it. */
#define TRIM_GAP_MS 1000

static void idle_now(h2_conn_t *h) {
  if (h->trimmed || h->ng == NULL) return;
  lr_conn_t *c = h->c;
  const lr_worker_t *w = c->worker;
  uint64_t now = uv_now(&w->loop);
  if (!h->slept && !h->indexed && h2_sleep(h) == 0) { /* (over TLS the preface comes after our SETTINGS) */
    h->trim_ms = now;
    return;
  }
  if (h->trim_ms && now - h->trim_ms < TRIM_GAP_MS && w->timeout_ms[LR_TO_BODY] < w->timeout_ms[LR_TO_IDLE]) {
    h->trim_due = 1;
    lr_conn_set_timeout(c, LR_TO_BODY);
    return;
  }
  settle(h);
}

static void want_send(h2_conn_t *h) {
  h->c->flags |= LR_CF_NEED_RESUME;
  lr_conn_defer(h->c);
}

static void pend(h2_stream_t *st, unsigned what) {
  st->pend |= what;
  if (!lr_link_linked(&st->pend_link)) lr_list_push(&st->h->pending, &st->pend_link);
}

/* ---- response body queue ---- */

static void chunk_push(h2_stream_t *st, h2_chunk_t *k) {
  k->next = NULL;
  if (st->tail)
    st->tail->next = k;
  else
    st->head = k;
  st->tail = k;
  st->queued += k->len;
  st->h->queued += k->len;
}

static int queue_data(h2_stream_t *st, const char *data, size_t len, lr_release_cb release, void *arg) {
  h2_chunk_t *k;
  if (release) {
    k = small_alloc(sizeof *k);
    if (k == NULL) {
      release(arg);
      return UV_ENOMEM;
    }
    *k = (h2_chunk_t){NULL, data, len, release, arg};
  } else {
    k = small_alloc(sizeof *k + len);
    if (k == NULL) return UV_ENOMEM;
    char *d = (char *)(k + 1);
    memcpy(d, data, len);
    *k = (h2_chunk_t){NULL, d, len, NULL, NULL};
  }
  chunk_push(st, k);
  return 0;
}

/* drop what was never sent; a referenced chunk may have pieces already in the
 * output queue, so its release goes through the queue, after them */
static void drop_queue(h2_stream_t *st) {
  lr_conn_t *c = st->h->c;
  h2_chunk_t *k = st->head;
  while (k) {
    h2_chunk_t *next = k->next;
    if (k->release) lr_conn_write_ref(c, "", 0, k->release, k->arg);
    small_free(k);
    k = next;
  }
  st->head = st->tail = NULL;
  st->h->queued -= st->queued;
  st->queued = 0;
}

static void free_trailers(h2_stream_t *st) {
  free(st->trailers);
  st->trailers = NULL;
  st->n_trailers = 0;
}

/* ---- nghttp2 callbacks: record, never call the application ---- */

/* a session made by h2_wake thinks the peer granted more than it did: send
 * what the peer's own count allows */
static size_t window_owed(h2_conn_t *h, size_t n) {
  int32_t left = nghttp2_session_get_remote_window_size(h->ng) - h->win_debt;
  return left <= 0 ? 0 : n < (size_t)left ? n : (size_t)left;
}

/* a WINDOW_UPDATE for the connection: what window_owed held back may go */
static void debt_update(h2_conn_t *h) {
  for (lr_link_t *l = h->streams.next; l != &h->streams; l = l->next) {
    h2_stream_t *st = LR_CONTAINER_OF(l, h2_stream_t, all);
    if (st->deferred && st->queued) {
      st->deferred = 0;
      nghttp2_session_resume_data(h->ng, st->id);
    }
  }
  want_send(h);
}

static ssize_t on_read_data(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                            nghttp2_data_source *src, void *ud) {
  (void)buf;
  (void)id;
  h2_stream_t *st = src->ptr;
  size_t n = st->queued < length ? st->queued : length;
  if (st->h->win_debt) n = window_owed(st->h, n);
  if (n == 0 && (!st->fin || st->queued)) {
    st->deferred = 1;
    return NGHTTP2_ERR_DEFERRED;
  }
  if (n) *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
  if (st->fin && n == st->queued) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (st->trailers) {
      if (nghttp2_submit_trailer(ng, st->id, st->trailers, st->n_trailers) == 0) *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      free_trailers(st);
    }
  }
  (void)ud;
  return (ssize_t)n;
}

static int on_send_data(nghttp2_session *ng, nghttp2_frame *frame, const uint8_t *framehd, size_t length,
                        nghttp2_data_source *src, void *ud) {
  (void)ng;
  h2_conn_t *h = ud;
  h2_stream_t *st = src->ptr;
  lr_conn_t *c = h->c;
  size_t pad = frame->data.padlen;
  size_t cap = 10 + (length <= 1024 ? length : 0);
  char *d = lr_conn_reserve(c, cap);
  if (d == NULL) return NGHTTP2_ERR_CALLBACK_FAILURE;
  memcpy(d, framehd, 9);
  size_t used = 9;
  if (pad) d[used++] = (char)(pad - 1);
  while (length) {
    h2_chunk_t *k = st->head;
    size_t n = k->len < length ? k->len : length;
    if (used && used + n <= cap && k->release == NULL) { /* (a small piece of a big frame doesn't fit) */
      /* small pieces are copied right after the frame header */
      memcpy(d + used, k->data, n);
      used += n;
    } else {
      if (used) lr_conn_commit(c, used);
      used = 0;
      if (k->release == NULL)
        lr_conn_write(c, k->data, n);
      else
        lr_conn_write_ref(c, k->data, n, n == k->len ? k->release : NULL, n == k->len ? k->arg : NULL);
    }
    length -= n;
    st->queued -= n;
    h->queued -= n;
    if (n == k->len) {
      st->head = k->next;
      if (st->head == NULL) st->tail = NULL;
      small_free(k);
    } else {
      k->data += n;
      k->len -= n;
    }
  }
  if (used) lr_conn_commit(c, used);
  if (pad > 1) {
    char zeros[256] = {0};
    lr_conn_write(c, zeros, pad - 1);
  }
  h->data_st = st;
  h->maybe_drained = 1;
  h->sent_data = 1;
  if (h->wu_credit < WU_CREDIT_MAX) h->wu_credit += 2;
  return 0;
}

static int token(h2_conn_t *h, double *bucket, double burst, double rate) {
  uint64_t now = uv_now(&h->c->worker->loop);
  if (now != h->bucket_ms) {
    double dt = (double)(now - h->bucket_ms) / 1000.0;
    h->rst_tokens += dt * RST_RATE;
    if (h->rst_tokens > RST_BURST) h->rst_tokens = RST_BURST;
    h->noise_tokens += dt * NOISE_RATE;
    if (h->noise_tokens > NOISE_BURST) h->noise_tokens = NOISE_BURST;
    h->bucket_ms = now;
  }
  (void)burst;
  (void)rate;
  if (*bucket < 1.0) return -1;
  *bucket -= 1.0;
  return 0;
}

static int calm_down(h2_conn_t *h, const char *why) {
  lr_log(LR_LOG_WARN, "h2: %s: GOAWAY ENHANCE_YOUR_CALM", why);
  h->calm = 1;
  nghttp2_session_terminate_session(h->ng, NGHTTP2_ENHANCE_YOUR_CALM);
  return NGHTTP2_ERR_CALLBACK_FAILURE;
}

/* the same, letting the streams already taken finish (their answers go out
 * first); no more input is read */
static void calm_after(h2_conn_t *h, const char *why) {
  if (h->calm) return;
  lr_log(LR_LOG_WARN, "h2: %s: GOAWAY ENHANCE_YOUR_CALM", why);
  h->calm = 1;
  h->goaway = 1;
  nghttp2_submit_goaway(h->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h->ng),
                        NGHTTP2_ENHANCE_YOUR_CALM, NULL, 0);
}

/* handlers alive on this connection: open streams plus streams nghttp2 closed
 * whose handler still runs (counted up to max) */
static unsigned live_handlers(const h2_conn_t *h, unsigned max) {
  unsigned n = h->n_streams;
  for (const lr_link_t *l = h->zombies.next; l != &h->zombies && n < max; l = l->next) n++;
  return n;
}

/* ---- closed streams ----
 *
 * With no_closed_streams nghttp2 forgets a stream as soon as it closes (it
 * would otherwise keep up to 100 closed streams per connection for the RFC 7540
 * priority tree: ~4 KiB of an idle connection) and then ignores every frame
 * on it. RFC 9113 asks for more, so we keep the ids of the last few closed
 * client streams:
 * - frames on a stream that the peer had finished (END_STREAM) are errors,
 *   §5.1: DATA a stream error STREAM_CLOSED (§6.1), HEADERS a connection error;
 * - frames on a stream closed by RST_STREAM, ours (§5.4.2: in flight, "MUST
 *   ignore") or the peer's, are ignored, as nghttp2 does. */
#define CLOSED_IGNORE 0x80000000u
#define CLOSED_N (sizeof ((h2_conn_t *)0)->closed / sizeof(uint32_t))
enum { CLOSED_UNKNOWN, CLOSED_DONE, CLOSED_IN_FLIGHT };

static int closed_find(const h2_conn_t *h, int32_t id) {
  for (unsigned i = 0; i < CLOSED_N; i++)
    if ((h->closed[i] & ~CLOSED_IGNORE) == (uint32_t)id)
      return h->closed[i] & CLOSED_IGNORE ? CLOSED_IN_FLIGHT : CLOSED_DONE;
  return CLOSED_UNKNOWN;
}

static void closed_peer_reset(h2_conn_t *h, int32_t id) {
  for (unsigned i = 0; i < CLOSED_N; i++)
    if (h->closed[i] == ((uint32_t)id | CLOSED_IGNORE)) h->closed[i] = (uint32_t)id;
}

static void closed_push(h2_conn_t *h, int32_t id, int in_flight) {
  h->closed[h->n_closed++ % CLOSED_N] = (uint32_t)id | (in_flight ? CLOSED_IGNORE : 0);
}

static void closed_add(h2_conn_t *h, int32_t id, int in_flight) {
  if (!(id & 1) || closed_find(h, id) != CLOSED_UNKNOWN) return;
  closed_push(h, id, in_flight);
}

/* a DATA frame's header, before nghttp2 sees it (it never calls
 * on_begin_frame for DATA it is going to ignore) */
static int data_begins(h2_conn_t *h, int32_t id) {
  nghttp2_session *ng = h->ng;
  /* idle streams (nghttp2: PROTOCOL_ERROR), streams it never took (after
   * GOAWAY, refused), open ones: nghttp2's */
  if (!(id & 1) || id > nghttp2_session_get_last_proc_stream_id(ng) || nghttp2_session_find_stream(ng, id) ||
      !nghttp2_session_want_read(ng) || closed_find(h, id) == CLOSED_IN_FLIGHT)
    return 0;
  if (token(h, &h->noise_tokens, NOISE_BURST, NOISE_RATE)) return calm_down(h, "frames on closed streams");
  if (nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, id, NGHTTP2_STREAM_CLOSED)) return NGHTTP2_ERR_CALLBACK_FAILURE;
  closed_add(h, id, 1); /* answered once: what follows it is in flight */
  return 0;
}

/* nghttp2_session_mem_recv, stopping at each DATA frame header to look at it
 * with the frames before it handled */
static ssize_t recv_frames(h2_conn_t *h, const uint8_t *p, size_t len) {
  size_t i = 0, fed = 0;
  ssize_t rv;
  while (i < len) {
    if (h->rx_preface) {
      size_t n = len - i < h->rx_preface ? len - i : h->rx_preface;
      h->rx_preface -= (uint8_t)n;
      i += n;
      continue;
    }
    if (h->rx_left) {
      size_t n = len - i < h->rx_left ? len - i : h->rx_left;
      h->rx_left -= (uint32_t)n;
      i += n;
      continue;
    }
    size_t start = i;
    const uint8_t *hd;
    if (h->rx_hlen == 0 && len - i >= 9) { /* the whole frame header is here: read it in place */
      hd = p + i;
      i += 9;
    } else {
      while (i < len && h->rx_hlen < 9) h->rx_hd[h->rx_hlen++] = p[i++];
      if (h->rx_hlen < 9) break;
      hd = h->rx_hd;
      h->rx_hlen = 0;
    }
    h->rx_left = (uint32_t)hd[0] << 16 | (uint32_t)hd[1] << 8 | hd[2];
    /* extension frames are ignored by nghttp2 without a callback: noise */
    if (hd[3] > NGHTTP2_CONTINUATION && token(h, &h->noise_tokens, NOISE_BURST, NOISE_RATE))
      return calm_down(h, "control frame flood");
    if (hd[3] != NGHTTP2_DATA) continue;
    if (start > fed) {
      rv = nghttp2_session_mem_recv(h->ng, p + fed, start - fed);
      if (rv < 0) return rv;
      fed = start;
    }
    int32_t id = (int32_t)(((uint32_t)hd[5] & 0x7f) << 24 | (uint32_t)hd[6] << 16 | (uint32_t)hd[7] << 8 | hd[8]);
    if ((rv = data_begins(h, id)) != 0) return rv;
  }
  if (len > fed && (rv = nghttp2_session_mem_recv(h->ng, p + fed, len - fed)) < 0) return rv;
  return (ssize_t)len;
}

/* flood accounting happens before the payload is read */
static int on_begin_frame(nghttp2_session *ng, const nghttp2_frame_hd *hd, void *ud) {
  (void)ng;
  h2_conn_t *h = ud;
  int noise = 0;
  switch (hd->type) {
    case NGHTTP2_RST_STREAM:
      if (token(h, &h->rst_tokens, RST_BURST, RST_RATE)) return calm_down(h, "rapid reset");
      /* a stream we reset, and now the peer did too: what it sends on it
       * from here on can't be in flight any more (§5.1 closed) */
      closed_peer_reset(h, hd->stream_id);
      break;
    case NGHTTP2_SETTINGS: /* INITIAL_WINDOW_SIZE may open every stream */
      if (h->queued > OUT_HIGH) h->maybe_drained = 1; /* writers may wait on windows (queue_blocked) */
      noise = !(hd->flags & NGHTTP2_FLAG_ACK);
      if (!noise) h->settings_acked = 1; /* (h2_sleep) */
      break;
    case NGHTTP2_PING:
      noise = !(hd->flags & NGHTTP2_FLAG_ACK);
      break;
    case NGHTTP2_PRIORITY:
      noise = 1;
      break;
    case NGHTTP2_DATA:
      noise = hd->length == 0 && !(hd->flags & NGHTTP2_FLAG_END_STREAM);
      break;
    case NGHTTP2_HEADERS:
      /* RFC 9113 §5.1.1: new streams must be numbered above every earlier one;
       * nghttp2 can't tell a skipped (implicitly closed) id from a new one */
      if ((hd->stream_id & 1) && hd->stream_id <= h->max_sid && nghttp2_session_find_stream(ng, hd->stream_id) == NULL) {
        if (h->restoring) break; /* h2_wake: the last stream again */
        int closed = closed_find(h, hd->stream_id);
        if (closed == CLOSED_IN_FLIGHT) { /* nghttp2 ignores it, and still decodes its header block */
          noise = 1;
          break;
        }
        nghttp2_session_terminate_session(ng, closed ? NGHTTP2_STREAM_CLOSED : NGHTTP2_PROTOCOL_ERROR);
        h->calm = 1; /* terminated: no more input */
        return NGHTTP2_ERR_CALLBACK_FAILURE;
      }
      if (hd->stream_id > h->max_sid) h->max_sid = hd->stream_id;
      /* fall through */
    case NGHTTP2_CONTINUATION:
      noise = hd->length == 0 && !(hd->flags & NGHTTP2_FLAG_END_HEADERS);
      break;
    case NGHTTP2_WINDOW_UPDATE:
      if (h->win_debt && hd->stream_id == 0) debt_update(h);
      if (h->queued > OUT_HIGH) h->maybe_drained = 1; /* a writer waiting for this window may go on */
      if (h->wu_credit)
        h->wu_credit--;
      else
        noise = 1;
      break;
    case NGHTTP2_GOAWAY:
      noise = 1;
      break;
  }
  if (noise && !h->restoring && token(h, &h->noise_tokens, NOISE_BURST, NOISE_RATE))
    return calm_down(h, "control frame flood");
  return 0;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *ud) {
  h2_conn_t *h = ud;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST || h->restoring) return 0;
  unsigned max = h->c->worker->cfg->h2_max_streams;
  if (!lr_list_empty(&h->zombies) && live_handlers(h, max) >= max) {
    /* nghttp2 counts open streams only: handlers of reset streams (ours or
     * the peer's) still run. Refused, unprocessed: the client may retry; the
     * RST_STREAM is charged to the reset guard (on_frame_send). The block is
     * still decoded (HPACK state), nobody sees it. */
    LR_DEBUG("h2: stream %d refused: %u handlers still run", frame->hd.stream_id, max);
    return nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_REFUSED_STREAM) ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
  }
  lr_stream_t *s = lr__stream_new(h->c);
  h2_stream_t *st = s ? small_calloc(sizeof *st) : NULL;
  if (st == NULL) {
    free(s);
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  st->s = s;
  st->h = h;
  st->id = frame->hd.stream_id;
  lr_list_init(&st->pend_link);
  lr_list_push(&h->streams, &st->all);
  h->n_streams++;
  s->version = 20;
  s->id = (uint32_t)st->id;
  s->proto_data = st;
  nghttp2_session_set_stream_user_data(ng, st->id, st);
  h->hdr_st = st;
  lr_conn_set_timeout(h->c, LR_TO_NONE);
  return 0;
}

static lr_str_t pool_str(lr_stream_t *s, const uint8_t *p, size_t n) {
  char *d = lr_pool_strdup(s->worker, &s->pool, (const char *)p, n);
  return d ? (lr_str_t){d, n} : (lr_str_t){"", 0};
}

/* names and methods most requests carry point to constants instead of copies */
static lr_str_t common_str(lr_stream_t *s, const uint8_t *p, size_t n) {
  const char *a = NULL, *b = NULL; /* the candidates of this length */
  switch (n) {
    case 3: a = "GET"; break;
    case 4: a = "POST", b = "HEAD"; break;
    case 6: a = "accept", b = "cookie"; break;
    case 7: a = "referer"; break;
    case 10: a = "user-agent"; break;
    case 12: a = "content-type"; break;
    case 13: a = "cache-control", b = "if-none-match"; break;
    case 14: a = "content-length"; break;
    case 15: a = "accept-encoding", b = "accept-language"; break;
    case 17: a = "if-modified-since"; break;
  }
  if (a && memcmp(a, p, n) == 0) return (lr_str_t){a, n};
  if (b && memcmp(b, p, n) == 0) return (lr_str_t){b, n};
  return pool_str(s, p, n);
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud) {
  (void)flags;
  h2_conn_t *h = ud;
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  h2_stream_t *st = h->hdr_st && h->hdr_st->id == frame->hd.stream_id
                        ? h->hdr_st
                        : nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
  if (st == NULL || st->s == NULL) return 0;
  lr_stream_t *s = st->s;
  const lr_config_t *cfg = h->c->worker->cfg;
  /* RFC 9113 §6.5.2: the size is names + values + 32 per field. A few bytes
   * of HPACK can name a big table entry again and again: past 431 we keep
   * counting, and a block that decodes to several times the limit is an
   * attack on our CPU, not a request (trailers included) */
  st->head_bytes += nlen + vlen + 32;
  if (st->head_bytes > BOMB_FACTOR * (uint64_t)cfg->max_header_bytes) return calm_down(h, "header block too large");
  if (frame->headers.cat != NGHTTP2_HCAT_REQUEST || st->reject) return 0; /* trailers: dropped */
  if (st->head_bytes > cfg->max_header_bytes || s->n_headers >= cfg->max_headers) {
    st->reject = 431;
    return 0;
  }
  if (nlen && name[0] == ':') {
    lr_str_t *dst = NULL;
    if (nlen == 7 && memcmp(name, ":method", 7) == 0) {
      s->method = vlen ? common_str(s, value, vlen) : pool_str(s, value, vlen);
      return 0;
    }
    else if (nlen == 5 && memcmp(name, ":path", 5) == 0) {
      if (vlen > cfg->max_request_line) { /* as HTTP/1.1's request line */
        st->reject = 414;
        return 0;
      }
      dst = &s->target;
    }
    else if (nlen == 10 && memcmp(name, ":authority", 10) == 0)
      dst = &s->authority;
    else if (nlen == 9 && memcmp(name, ":protocol", 9) == 0 && vlen == 9 && memcmp(value, "websocket", 9) == 0)
      s->flags |= LR_SF_WS_UPGRADE; /* RFC 8441 extended CONNECT (core/websocket.c) */
    if (dst) *dst = pool_str(s, value, vlen);
    return 0;
  }
  lr_str_t n = common_str(s, name, nlen), v = pool_str(s, value, vlen);
  if (lr__stream_add_header(s, n.base, n.len, v.base, v.len)) st->reject = 503;
  return 0;
}

/* RFC 9113 §8.2.1: a field that isn't valid makes the request malformed */
static int on_invalid_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name, size_t nlen,
                             const uint8_t *value, size_t vlen, uint8_t flags, void *ud) {
  (void)ng, (void)frame, (void)name, (void)nlen, (void)value, (void)vlen, (void)flags, (void)ud;
  return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

/* does a comma-separated list contain token (case-insensitive)? */
static int has_token(const char *v, size_t len, const char *tok) { return lr_token_in_list(v, len, tok, strlen(tok), 1); }

/* the request head is complete: fill in what the handler sees */
static void head_done(h2_conn_t *h, h2_stream_t *st, int end_stream) {
  lr_stream_t *s = st->s;
  const lr_config_t *cfg = h->c->worker->cfg;
  /* the fields the core reads, first of each, in one pass */
  const lr_str_t *host = NULL, *cl = NULL, *expect = NULL, *te = NULL;
  for (unsigned i = 0; i < s->n_headers; i++) {
    const lr_header_t *f = &s->headers[i];
    const lr_str_t **slot;
    const char *name;
    switch (f->name.len) {
      case 2: slot = &te, name = "te"; break;
      case 4: slot = &host, name = "host"; break;
      case 6: slot = &expect, name = "expect"; break;
      case 14: slot = &cl, name = "content-length"; break;
      default: continue;
    }
    if (*slot == NULL && memcmp(f->name.base, name, f->name.len) == 0) *slot = &f->value;
  }
  if (s->method.len == 4 && memcmp(s->method.base, "HEAD", 4) == 0) s->flags |= LR_SF_HEAD;
  if (s->authority.base == NULL) s->authority = host ? *host : (lr_str_t){"", 0};
  if (s->method.base == NULL) s->method = (lr_str_t){"-", 1};
  /* a WebSocket's CONNECT routes like the GET of an HTTP/1.1 upgrade (app:ws) */
  if ((s->flags & LR_SF_WS_UPGRADE) && s->method.len == 7 && memcmp(s->method.base, "CONNECT", 7) == 0)
    s->method = (lr_str_t){"GET", 3};
  lr_str_t t = s->target.base ? s->target : (lr_str_t){"/", 1}; /* CONNECT has no :path */
  s->target = t;
  const char *q = memchr(t.base, '?', t.len);
  s->path = (lr_str_t){t.base, q ? (size_t)(q - t.base) : t.len};
  if (s->path.len == 0) s->path = (lr_str_t){"/", 1};
  s->query = q ? (lr_str_t){q + 1, t.len - (size_t)(q - t.base) - 1} : (lr_str_t){"", 0};
  if (cl) {
    int64_t n = 0;
    for (size_t i = 0; i < cl->len && cl->base[i] >= '0' && cl->base[i] <= '9'; i++) n = n * 10 + (cl->base[i] - '0');
    s->content_length = n; /* nghttp2 checked it is a number matching the DATA it carries */
  }
  if (end_stream) {
    s->flags |= LR_SF_BODY_DONE;
    if (s->content_length < 0) s->content_length = 0;
  }
  if (expect && expect->len == 12 && strncasecmp(expect->base, "100-continue", 12) == 0 && !end_stream)
    s->flags |= LR_SF_EXPECT;
  if (te && has_token(te->base, te->len, "trailers")) s->flags |= LR_SF_TE_TRAILERS;
  if (!st->reject && s->content_length > 0 && (uint64_t)s->content_length > cfg->max_body) st->reject = 413;
  pend(st, st->reject ? PEND_REJECT : PEND_START);
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *ud) {
  h2_conn_t *h = ud;
  int end_stream = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
  h2_stream_t *st;
  switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
      st = h->hdr_st && h->hdr_st->id == frame->hd.stream_id ? h->hdr_st
                                                              : nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
      if (st) st->peer_done |= (uint8_t)end_stream;
      if (st == NULL || st->s == NULL) return 0;
      if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        head_done(h, st, end_stream);
      } else if (end_stream) { /* request trailers end the body */
        st->s->flags |= LR_SF_BODY_DONE;
        pend(st, PEND_WAKE);
      }
      break;
    case NGHTTP2_DATA:
      st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
      if (st) st->peer_done |= (uint8_t)end_stream;
      if (st && st->s && end_stream) {
        st->s->flags |= LR_SF_BODY_DONE;
        pend(st, PEND_WAKE);
      }
      break;
  }
  return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *ud) {
  (void)flags;
  h2_conn_t *h = ud;
  /* the connection window is given back at once: memory is bounded per stream */
  nghttp2_session_consume_connection(ng, len);
  h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, id);
  if (st) {
    st->got_data = 1;
    if (st->rst_on_data) { /* a body after all: stop it */
      st->rst_on_data = 0;
      h->n_lingering--;
      pend(st, PEND_RST);
    }
  }
  lr_stream_t *s = st ? st->s : NULL;
  if (s == NULL || (s->flags & (LR_SF_FINISHED | LR_SF_RESET)) || st->reject) {
    nghttp2_session_consume_stream(ng, id, len); /* nobody reads it: drop, keep the window open */
    return 0;
  }
  s->body_received += len;
  /* a WebSocket's stream is no request body: its messages have their own limit */
  if (s->body_received > h->c->worker->cfg->max_body && !(s->flags & LR_SF_WS_UPGRADE)) {
    s->flags |= LR_SF_BODY_TOO_BIG;
    st->reject = 413;
    pend(st, PEND_REJECT);
    nghttp2_session_consume_stream(ng, id, len);
    return 0;
  }
  if (lr_buf_append(&s->body, data, len)) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  st->unacked += len;
  if (s->wait & LR_WAIT_BODY) pend(st, PEND_WAKE);
  return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud) {
  (void)code;
  h2_conn_t *h = ud;
  /* not finished by the peer: reset, by it or by us (RST_STREAM is recorded as sent, in on_frame_send) */
  h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, id);
  int in_flight = nghttp2_session_get_stream_remote_close(ng, id) != 1;
  if (st && !st->rst_sent && (id & 1))
    closed_push(h, id, in_flight); /* not there yet: only our RST_STREAM (on_frame_send) adds a stream of ours */
  else
    closed_add(h, id, in_flight);
  if (st == NULL) return 0;
  st->closed = 1;
  pend(st, PEND_CLOSED);
  return 0;
}

static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *frame, void *ud) {
  h2_conn_t *h = ud;
  if (frame->hd.type == NGHTTP2_RST_STREAM) {
    if (h->restoring) return 0; /* h2_wake's own stream: closed long ago */
    /* §5.4.2: what the peer sent before it saw this is ignored, the stream's state whatever it was */
    closed_add(h, frame->hd.stream_id, 1);
    /* CVE-2025-8671 (MadeYouReset): a stream the peer made us reset (a body
     * longer than its content-length, a window overflow, refused because
     * too many handlers run...) frees its slot like a reset of its own: the
     * same guard counts both. Not a response that ended early, nor a handler's abort. */
    h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (st) st->rst_sent = 1;
    if (frame->rst_stream.error_code != NGHTTP2_NO_ERROR && !(st && st->aborted) &&
        token(h, &h->rst_tokens, RST_BURST, RST_RATE))
      h->calm_due = 1;
    return 0;
  }
  if ((frame->hd.type != NGHTTP2_DATA && frame->hd.type != NGHTTP2_HEADERS) ||
      !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
    return 0;
  h2_stream_t *st = frame->hd.type == NGHTTP2_DATA && h->data_st && h->data_st->id == frame->hd.stream_id
                        ? h->data_st
                        : nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
  /* RFC 9113 §8.1: a complete response may end a request still being sent,
   * by RST_STREAM(NO_ERROR). Only once a body is being sent, though: until
   * then the stream stays half-closed (local) and what the peer sends on it
   * gets the handling RFC 9113 §5.1 asks for (a WINDOW_UPDATE overflow, a
   * second HEADERS... are errors), not the silence due to frames in flight
   * after our RST_STREAM. Such a stream doesn't keep the connection from
   * its idle timeout (n_lingering). */
  if (st && !st->closed && !st->peer_done && !nghttp2_session_get_stream_remote_close(ng, st->id)) {
    if (st->got_data) {
      pend(st, PEND_RST);
    } else if (!st->rst_on_data) {
      st->rst_on_data = 1;
      h->n_lingering++;
    }
  }
  return 0;
}

/* ---- responses ---- */

#define NV(n, v, vl) ((nghttp2_nv){(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, (vl), NGHTTP2_NV_FLAG_NONE})
/* our own fields: names (and the server and date values) outlive the frame,
 * so nghttp2 neither copies nor lowercases them */
#define NV_STATIC(n, v, vl, f) \
  ((nghttp2_nv){(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, (vl), NGHTTP2_NV_FLAG_NO_COPY_NAME | (f)})

/* handler fields as nghttp2_nv, protocol fields dropped: nghttp2 copies them
 * and lowercases the names as it does (nghttp2_nv_array_copy) */
static size_t build_fields(const lr_header_t *hs, size_t n, nghttp2_nv *nv, int *has_server, int checked) {
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    const lr_header_t *hd = &hs[i];
    if (lr_header_is_hop_by_hop(hd->name.base, hd->name.len) || (!checked && !lr_header_valid(hd))) continue;
    /* RFC 9113 §8.2.2: te is the only connection-ish field allowed, and only "trailers" */
    if (hd->name.len == 2 && strncasecmp(hd->name.base, "te", 2) == 0) continue;
    if (hd->name.len == 6 && strncasecmp(hd->name.base, "server", 6) == 0) *has_server = 1;
    nv[k++] = (nghttp2_nv){(uint8_t *)hd->name.base, (uint8_t *)hd->value.base, hd->name.len, hd->value.len,
                           NGHTTP2_NV_FLAG_NONE};
  }
  return k;
}

/* n in decimal, ending at end; returns where it starts (snprintf costs ~600
 * instructions a number, a third of a hello's response head) */
static char *fmt_u64(char *end, uint64_t n) {
  char *p = end;
  do *--p = (char)('0' + n % 10);
  while (n /= 10);
  return p;
}

static int submit_head(h2_stream_t *st, int status, const lr_header_t *hs, size_t n, int64_t clen, int provider) {
  h2_conn_t *h = st->h;
  lr_worker_t *w = h->c->worker;
  nghttp2_nv stackv[40];
  nghttp2_nv *nv = n + 4 <= 40 ? stackv : malloc((n + 4) * sizeof *nv);
  if (nv == NULL) return UV_ENOMEM;
  char st_buf[8], cl_buf[24];
  char *sp = st_buf + 5;
  if (status >= 100 && status <= 999) { /* always, from the core and the bindings alike */
    unsigned u = (unsigned)status;
    sp[0] = (char)('0' + u / 100), sp[1] = (char)('0' + u / 10 % 10), sp[2] = (char)('0' + u % 10);
  } else {
    sp = fmt_u64(st_buf + sizeof st_buf, (uint64_t)(status > 0 ? status : 0));
  }
  size_t k = 0;
  nv[k++] = NV_STATIC(":status", sp, (size_t)(st_buf + sizeof st_buf - sp), 0);
  int has_server = 0;
  k += build_fields(hs, n, nv + k, &has_server, st->s && (st->s->flags & LR_SF_CHECKED));
  if (!has_server) nv[k++] = NV_STATIC("server", "lariat", 6, NGHTTP2_NV_FLAG_NO_COPY_VALUE);
  /* the worker's buffer: if the second turns before the frame is made, it says the new one */
  nv[k++] = NV_STATIC("date", lr_worker_date(w), 29, NGHTTP2_NV_FLAG_NO_COPY_VALUE);
  if (clen >= 0) {
    char *cp = fmt_u64(cl_buf + sizeof cl_buf, (uint64_t)clen);
    nv[k++] = NV_STATIC("content-length", cp, (size_t)(cl_buf + sizeof cl_buf - cp), 0);
  }
  nghttp2_data_provider prd = {.source.ptr = st, .read_callback = on_read_data};
  int r = nghttp2_submit_response(h->ng, st->id, nv, k, provider ? &prd : NULL);
  if (nv != stackv) free(nv);
  want_send(h);
  return r == 0 ? 0 : LR_ECLOSED;
}

static void response_done(h2_stream_t *st) {
  lr_stream_t *s = st->s;
  s->flags |= LR_SF_FINISHED;
  lr_worker_access_log(st->h->c->worker, s);
}

static void resume_provider(h2_stream_t *st) {
  if (st->deferred) {
    st->deferred = 0;
    nghttp2_session_resume_data(st->h->ng, st->id);
  }
  want_send(st->h);
}

static int h2_send_head(lr_stream_t *s, int status, const lr_header_t *hs, size_t n, const char *body, size_t len,
                        lr_release_cb release, void *arg, int fin) {
  h2_stream_t *st = s->proto_data;
  int has_body = lr_status_has_body(status);
  st->drop = (s->flags & LR_SF_HEAD) || !has_body;
  int64_t clen = fin && has_body ? (int64_t)len : -1;
  int provider = !fin || (!st->drop && len > 0);
  if (fin && len && !st->drop) {
    int r = queue_data(st, body, len, release, arg);
    if (r) return r;
    s->bytes_sent += len;
  } else if (release) {
    release(arg);
  }
  st->fin = (uint8_t)fin;
  int r = submit_head(st, status, hs, n, clen, provider);
  if (fin) response_done(st);
  return r;
}

static int h2_send_data(lr_stream_t *s, const char *data, size_t len, lr_release_cb release, void *arg, int fin) {
  h2_stream_t *st = s->proto_data;
  if (len && !st->drop) {
    int r = queue_data(st, data, len, release, arg);
    if (r) return r;
    s->bytes_sent += len;
  } else if (release) {
    release(arg);
  }
  if (fin) {
    st->fin = 1;
    response_done(st);
  }
  resume_provider(st);
  return 0;
}

static int h2_send_trailers(lr_stream_t *s, const lr_header_t *hs, size_t n) {
  h2_stream_t *st = s->proto_data;
  if (!st->drop && n) {
    /* copied now, submitted when the data provider reaches the end (a HEADERS
     * frame submitted earlier would overtake the DATA still queued) */
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++) bytes += hs[i].name.len + hs[i].value.len;
    nghttp2_nv *nv = malloc(n * sizeof *nv + bytes);
    if (nv == NULL) return UV_ENOMEM;
    char *d = (char *)(nv + n);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
      const lr_header_t *hd = &hs[i];
      if (lr_header_is_hop_by_hop(hd->name.base, hd->name.len) || !lr_header_valid(hd)) continue;
      char *nm = d;
      for (size_t j = 0; j < hd->name.len; j++) {
        char ch = hd->name.base[j];
        *d++ = (ch >= 'A' && ch <= 'Z') ? (char)(ch | 0x20) : ch;
      }
      memcpy(d, hd->value.base, hd->value.len);
      nv[k++] = (nghttp2_nv){(uint8_t *)nm, (uint8_t *)d, hd->name.len, hd->value.len, NGHTTP2_NV_FLAG_NONE};
      d += hd->value.len;
    }
    free_trailers(st);
    if (k) {
      st->trailers = nv;
      st->n_trailers = k;
    } else {
      free(nv);
    }
  }
  st->fin = 1;
  response_done(st);
  resume_provider(st);
  return 0;
}

static void h2_abort(lr_stream_t *s) {
  h2_stream_t *st = s->proto_data;
  s->flags |= LR_SF_RESET;
  st->aborted = 1;
  nghttp2_submit_rst_stream(st->h->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
  want_send(st->h);
}

static void h2_body_wanted(lr_stream_t *s) {
  h2_stream_t *st = s->proto_data;
  h2_conn_t *h = st->h;
  if ((s->flags & LR_SF_EXPECT) && !(s->flags & (LR_SF_CONTINUED | LR_SF_REPLIED))) {
    s->flags |= LR_SF_CONTINUED;
    nghttp2_nv nv = NV(":status", "100", 3);
    nghttp2_submit_headers(h->ng, NGHTTP2_FLAG_NONE, st->id, NULL, &nv, 1, NULL);
    want_send(h);
  }
  if (st->unacked > s->body.len) {
    nghttp2_session_consume_stream(h->ng, st->id, st->unacked - s->body.len);
    st->unacked = s->body.len;
    want_send(h);
  }
}

/* A handler may always queue one write on a stream with nothing queued (a
 * stream the peer stopped reading, its window at 0, can't stall the others);
 * more waits while the connection holds OUT_HIGH */
static int stream_blocked(const h2_stream_t *st) {
  const h2_conn_t *h = st->h;
  return st->queued > 0 && (h->queued > OUT_HIGH || lr_conn_queued(h->c) > OUT_HIGH);
}

static int h2_write_blocked(lr_stream_t *s) { return stream_blocked(s->proto_data); }

/* ... and a write to a stream that can't send now (its window or the
 * connection's at 0, or the socket full) waits before it is queued while the
 * connection holds OUT_HIGH: a peer keeping 100 streams at window 0 then
 * costs ~OUT_HIGH, not a write per stream */
static int queue_blocked(const h2_stream_t *st) {
  const h2_conn_t *h = st->h;
  if (lr_conn_queued(h->c) > OUT_HIGH) return 1;
  return h->queued > OUT_HIGH && (nghttp2_session_get_remote_window_size(h->ng) <= 0 ||
                                  nghttp2_session_get_stream_remote_window_size(h->ng, st->id) <= 0);
}

static int h2_queue_blocked(lr_stream_t *s) { return queue_blocked(s->proto_data); }

static size_t h2_held(lr_conn_t *c) { return H2(c)->queued; }

/* the core's own answer (431, 413): the handler never sees the request */
static void reject(h2_stream_t *st) {
  lr_stream_t *s = st->s;
  int status = st->reject;
  /* each of these cost a whole header block to decode */
  if ((status == 431 || status == 414) && ++st->h->rejects >= MAX_REJECTS) calm_after(st->h, "repeated 431/414");
  static const lr_header_t ct = {{"content-type", 12}, {"text/plain; charset=utf-8", 25}};
  char body[64];
  int n = snprintf(body, sizeof body, "%s\n", lr_status_reason(status));
  if (!(s->flags & LR_SF_REPLIED)) {
    s->flags |= LR_SF_REPLIED;
    s->status = status;
    h2_send_head(s, status, &ct, 1, body, (size_t)n, NULL, NULL, LR_FIN);
  } else if (!(s->flags & LR_SF_FINISHED)) {
    h2_abort(s);
  }
  s->flags |= LR_SF_RESET;
  if (!(s->flags & LR_SF_FINISHED)) response_done(st);
  st->s = NULL;
  s->proto_data = NULL;
  lr__stream_conn_release(s); /* a running handler's reads now say "too large" */
}

/* ---- acting on what the callbacks recorded ---- */

static void stream_free(h2_stream_t *st) {
  h2_conn_t *h = st->h;
  if (h->hdr_st == st) h->hdr_st = NULL;
  if (h->data_st == st) h->data_st = NULL;
  lr_link_unlink(&st->pend_link);
  lr_link_unlink(&st->all);
  h->n_streams--;
  if (st->rst_on_data) h->n_lingering--;
  drop_queue(st);
  free_trailers(st);
  if (st->s) {
    lr_stream_t *s = st->s;
    st->s = NULL;
    s->proto_data = NULL;
    if (!(s->flags & LR_SF_FINISHED)) s->flags |= LR_SF_RESET;
    /* its handler still runs: it keeps its place in the limit until it is
     * gone (stream.c unlinks it); conn_gone (below) tells it to stop */
    if (s->app_data && !(s->flags & LR_SF_APP_GONE) && !(h->c->flags & LR_CF_CLOSING))
      lr_list_push(&h->zombies, &s->conn_link);
    lr__stream_conn_release(s);
  }
  small_free(st);
}

static void run_pending(h2_conn_t *h) {
  lr_conn_t *c = h->c;
  lr_app_hooks_t const *app = c->worker->app;
  while (!lr_list_empty(&h->pending) && !(c->flags & LR_CF_CLOSING)) {
    h2_stream_t *st = LR_CONTAINER_OF(h->pending.next, h2_stream_t, pend_link);
    lr_link_unlink(&st->pend_link);
    unsigned what = st->pend;
    st->pend = 0;
    if (what & PEND_CLOSED) {
      if (st->closed) nghttp2_session_set_stream_user_data(h->ng, st->id, NULL);
      stream_free(st);
      continue;
    }
    if ((what & PEND_REJECT) && st->s) reject(st);
    if ((what & PEND_RST) && !st->closed) {
      nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
      want_send(h);
    }
    lr_stream_t *s = st->s;
    if (s == NULL) continue;
    if ((what & PEND_START) && !st->started) {
      st->started = 1;
      app->start(s); /* may reply at once */
    } else if ((what & PEND_WAKE) && st->started && (s->wait & LR_WAIT_BODY)) {
      app->wake(s);
    }
  }
  if (!(c->flags & LR_CF_CLOSING)) {
    h->trim_due = 0;
    lr_conn_set_timeout(c, h->n_streams > h->n_lingering ? LR_TO_NONE : LR_TO_IDLE);
  }
}

/* handlers waiting in req:write() whose stream's output went out */
static void wake_writers(h2_conn_t *h) {
  lr_conn_t *c = h->c;
  h->maybe_drained = 0;
  lr_link_t *l = h->streams.next;
  while (l != &h->streams && !(c->flags & LR_CF_CLOSING)) {
    h2_stream_t *st = LR_CONTAINER_OF(l, h2_stream_t, all);
    l = l->next;
    lr_stream_t *s = st->s;
    if (s && (s->wait & LR_WAIT_DRAIN) && !stream_blocked(st) && !queue_blocked(st)) c->worker->app->wake(s);
  }
}

static void fail(h2_conn_t *h, int rv) {
  LR_DEBUG("h2: closing: %s", nghttp2_strerror(rv));
  if (!h->calm) {
    uint32_t code = rv == NGHTTP2_ERR_FLOODED || rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS ? NGHTTP2_ENHANCE_YOUR_CALM
                    : rv == NGHTTP2_ERR_BAD_CLIENT_MAGIC                                  ? NGHTTP2_PROTOCOL_ERROR
                                                                                          : NGHTTP2_INTERNAL_ERROR;
    nghttp2_session_terminate_session(h->ng, code);
  }
  want_send(h);
}

/* Response data waits for the peer's window and none went out since the
 * last look: conn.c's send timeout (--send-timeout) runs, and restarts
 * whenever data moves; a peer holding its window at 0 is closed when it
 * expires and what it held is freed. (A peer that doesn't read at all is
 * conn.c's own case: its write stays pending.) */
static void stall_check(h2_conn_t *h, int sent_all) {
  int waiting = h->queued > 0 && sent_all;
  if (waiting && (!h->stalled || h->sent_data)) {
    if (h->stalled) lr_conn_send_stalled(h->c, 0); /* data moved: a fresh period */
    h->stalled = 1;
    lr_conn_send_stalled(h->c, 1);
  } else if (!waiting && h->stalled) {
    h->stalled = 0;
    lr_conn_send_stalled(h->c, 0);
  }
  h->sent_data = 0;
}

/* A connection that ends after a GOAWAY may still receive (h2spec generic/3.8:
 * a PING right after the client's GOAWAY): closing with unread input makes
 * the kernel send RST and the peer may lose the GOAWAY, so it ends with a
 * lingering close (conn.c: output out, FIN, input dropped for a while). */
static void linger(h2_conn_t *h) {
  if (h->c->worker->stopping) /* a stopping worker doesn't wait for peers */
    lr_conn_close_after_write(h->c);
  else
    lr_conn_close_linger(h->c);
}

/* produce frames (the deferred pass calls this once per loop phase) */
static void h2_resume(lr_conn_t *c) {
  h2_conn_t *h = H2(c);
  int sent_all = 0;
  if (h->ng == NULL) return; /* asleep: nothing to say */
  h->trimmed = 0;
  for (int round = 0; round < 16 && !(c->flags & LR_CF_CLOSING); round++) {
    h->send_blocked = 0;
    sent_all = 0;
    for (;;) {
      if (lr_conn_queued(c) > OUT_HIGH) {
        h->send_blocked = 1; /* on_drain brings us back */
        break;
      }
      const uint8_t *d;
      ssize_t n = nghttp2_session_mem_send(h->ng, &d);
      if (n < 0) {
        LR_DEBUG("h2: send: %s", nghttp2_strerror((int)n));
        lr_conn_close(c);
        return;
      }
      if (n == 0) {
        sent_all = 1;
        break;
      }
      lr_conn_write(c, d, (size_t)n);
    }
    if (h->calm_due && !h->calm) {
      calm_down(h, "streams reset by the server (rapid reset)");
      continue; /* the GOAWAY goes out in the next round */
    }
    if (h->maybe_drained) wake_writers(h);
    if (lr_list_empty(&h->pending)) break;
    run_pending(h);
  }
  if (c->flags & LR_CF_CLOSING) return;
  if (c->flags & LR_CF_NEED_RESUME) {
    /* a handler woken above queued more: come back in this same deferred pass */
    return;
  }
  if (c->flags & LR_CF_CLOSE_AFTER_WRITE) return;
  stall_check(h, sent_all);
  if (!nghttp2_session_want_read(h->ng) && !nghttp2_session_want_write(h->ng))
    linger(h);
  else if (h->goaway && h->n_streams == 0 && !nghttp2_session_want_write(h->ng))
    linger(h);
  else if (sent_all && h->n_streams == 0 && lr_list_empty(&h->pending) && !nghttp2_session_want_write(h->ng))
    idle_now(h);
}

/* ---- lr_proto_t ---- */

static void h2_on_read(lr_conn_t *c, const char *data, size_t len) {
  h2_conn_t *h = H2(c);
  if (h->calm || (c->flags & LR_CF_CLOSE_AFTER_WRITE)) return;
  if (h->ng == NULL && (doze(h, (const uint8_t *)data, len) == 0 || h2_wake(h))) return;
  h->trimmed = 0;
  h->in_recv = 1;
  ssize_t rv = recv_frames(h, (const uint8_t *)data, len);
  h->in_recv = 0;
  if (rv < 0) {
    fail(h, (int)rv);
    run_pending(h);
    return;
  }
  run_pending(h);
  want_send(h);
}

static void h2_on_eof(lr_conn_t *c) { lr_conn_close(c); }

static void h2_on_drain(lr_conn_t *c) {
  h2_conn_t *h = H2(c);
  if (h->ng == NULL) return;
  if (h->send_blocked) want_send(h);
  wake_writers(h);
}

static void h2_on_timeout(lr_conn_t *c) {
  h2_conn_t *h = H2(c);
  if (h->n_streams > h->n_lingering) return;
  if (h->trim_due) { /* idle since idle_now: the idle timeout runs from here */
    h->trim_due = 0;
    settle(h);
    lr_conn_set_timeout(c, LR_TO_IDLE);
    return;
  }
  if (h2_wake(h)) return;
  nghttp2_session_terminate_session(h->ng, NGHTTP2_NO_ERROR);
  want_send(h); /* h2_resume: the GOAWAY, then linger */
}

static void h2_on_shutdown(lr_conn_t *c) {
  h2_conn_t *h = H2(c);
  if (h2_wake(h)) return;
  h->goaway = 1;
  nghttp2_submit_goaway(h->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h->ng), NGHTTP2_NO_ERROR,
                        NULL, 0);
  for (lr_link_t *l = h->streams.next; l != &h->streams; l = l->next) {
    h2_stream_t *st = LR_CONTAINER_OF(l, h2_stream_t, all);
    if (st->s && st->s->ws) lr_ws_going_away(st->s->ws);
  }
  want_send(h);
}

static void h2_on_close(lr_conn_t *c) {
  h2_conn_t *h = H2(c);
  if (h == NULL) return;
  while (!lr_list_empty(&h->streams)) stream_free(LR_CONTAINER_OF(h->streams.next, h2_stream_t, all));
  while (!lr_list_empty(&h->zombies)) lr_link_unlink(h->zombies.next); /* their handlers outlive us */
  nghttp2_session_del(h->ng);
  free(h);
  c->proto_state = NULL;
}

const lr_proto_t lr_http2_proto = {
    .name = "h2",
    .on_read = h2_on_read,
    .on_eof = h2_on_eof,
    .on_drain = h2_on_drain,
    .on_timeout = h2_on_timeout,
    .on_close = h2_on_close,
    .on_shutdown = h2_on_shutdown,
    .send_head = h2_send_head,
    .send_data = h2_send_data,
    .send_trailers = h2_send_trailers,
    .abort = h2_abort,
    .body_wanted = h2_body_wanted,
    .resume = h2_resume,
    .write_blocked = h2_write_blocked,
    .queue_blocked = h2_queue_blocked,
    .held = h2_held,
};

/* ---- sessions ---- */

static nghttp2_session_callbacks *callbacks;
static nghttp2_option *options;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init_once(void) {
  nghttp2_session_callbacks_new(&callbacks);
  nghttp2_session_callbacks_set_on_begin_frame_callback(callbacks, on_begin_frame);
  nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
  nghttp2_session_callbacks_set_on_invalid_header_callback(callbacks, on_invalid_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, on_frame_send);
  nghttp2_session_callbacks_set_send_data_callback(callbacks, on_send_data);
  nghttp2_option_new(&options);
  nghttp2_option_set_no_auto_window_update(options, 1);
  nghttp2_option_set_max_continuations(options, MAX_CONTINUATIONS);
  nghttp2_option_set_no_closed_streams(options, 1); /* we keep what RFC 9113 needs: closed_add */
  /* our own rapid-reset guard answers ENHANCE_YOUR_CALM first; nghttp2's is the backstop */
  nghttp2_option_set_stream_reset_rate_limit(options, 4 * (uint64_t)RST_BURST, 4 * (uint64_t)RST_RATE);
  page_size = (size_t)sysconf(_SC_PAGESIZE);
}

/* a session with our SETTINGS submitted */
static int session_new(h2_conn_t *h) {
  const lr_config_t *cfg = h->c->worker->cfg;
  nghttp2_mem mem = {h, mem_malloc, mem_free, mem_calloc, mem_realloc};
  h->in_new = 1;
  int rv = nghttp2_session_server_new3(&h->ng, callbacks, h, options, &mem);
  h->in_new = 0;
  if (rv) {
    h->ng = NULL;
    return rv;
  }
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, cfg->h2_max_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, cfg->h2_window},
      {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, cfg->h2_max_frame},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, cfg->max_header_bytes},
      {NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1}, /* RFC 8441: WebSocket over h2 */
  };
  nghttp2_submit_settings(h->ng, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
  nghttp2_session_set_local_window_size(h->ng, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW);
  return 0;
}

static h2_conn_t *h2_new(lr_conn_t *c) {
  pthread_once(&once, init_once);
  h2_conn_t *h = calloc(1, sizeof *h);
  if (h == NULL) return NULL;
  h->c = c;
  lr_list_init(&h->pending);
  lr_list_init(&h->streams);
  lr_list_init(&h->zombies);
  h->rst_tokens = RST_BURST;
  h->noise_tokens = NOISE_BURST;
  h->bucket_ms = uv_now(&c->worker->loop);
  h->rx_preface = NGHTTP2_CLIENT_MAGIC_LEN;
  if (session_new(h)) {
    free(h);
    return NULL;
  }
  return h;
}

/* ---- sleep: an idle connection without its nghttp2 session ----
 *
 * An nghttp2 session costs ~5.3 KiB however idle (nghttp2 1.52: the session
 * struct 2.9 KiB, two HPACK ring buffers of 1 KiB, the rest small), plus
 * the pages of its frame buffer and stream map (trim_idle). Asleep, the
 * connection keeps what a new session needs to carry on from where the old
 * one was, and h2_wake replays it into a new one: the peer's SETTINGS, our
 * own (acknowledged or not), the connection's send window, the last stream
 * (so GOAWAY, and frames on old streams, are answered as before). Our receive
 * window is whole when it sleeps (what arrived was given back first); our
 * HPACK encoder starts again empty, which the peer's decoder can't tell: both
 * insert at the front and the peer's leftover entries are evicted first. The
 * peer's encoder can't: so a connection whose client indexed fields (the
 * decoder's table isn't empty) stays awake. */

static const uint8_t peer_ids[] = {1, 2, 3, 4, 5, 6, 8}; /* SETTINGS nghttp2_session_get_remote_settings knows */
#define H2_INITIAL_WINDOW 65535

static void frame_hd(uint8_t *d, uint32_t len, uint8_t type, uint8_t flags, uint32_t id) {
  d[0] = (uint8_t)(len >> 16), d[1] = (uint8_t)(len >> 8), d[2] = (uint8_t)len;
  d[3] = type, d[4] = flags;
  d[5] = (uint8_t)(id >> 24), d[6] = (uint8_t)(id >> 16), d[7] = (uint8_t)(id >> 8), d[8] = (uint8_t)id;
}

static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

/* idle enough to sleep: 0 asleep, -1 not now */
static int h2_sleep(h2_conn_t *h) {
  nghttp2_session *ng = h->ng;
  lr_conn_t *c = h->c;
  if (ng == NULL) return 0;
  if (h->n_streams || !lr_list_empty(&h->zombies) || !lr_list_empty(&h->pending) || h->goaway || h->calm ||
      h->calm_due || h->in_recv || h->rx_preface || h->rx_hlen || h->rx_left || h->queued || h->stalled ||
      (c->flags & (LR_CF_CLOSING | LR_CF_CLOSE_AFTER_WRITE)) || !nghttp2_session_want_read(ng) ||
      nghttp2_session_want_write(ng))
    return -1;
  if (nghttp2_session_get_hd_inflate_dynamic_table_size(ng)) {
    h->indexed = 1;
    return -1;
  }
  int32_t unacked = nghttp2_session_get_effective_recv_data_length(ng);
  if (unacked > 0) { /* the peer's window back to whole first; sleep the next time */
    nghttp2_submit_window_update(ng, NGHTTP2_FLAG_NONE, 0, unacked);
    want_send(h);
    return -1;
  }
  for (size_t i = 0; i < sizeof peer_ids; i++)
    h->peer_settings[peer_ids[i] - 1] = nghttp2_session_get_remote_settings(ng, peer_ids[i]);
  h->window = nghttp2_session_get_remote_window_size(ng) - h->win_debt;
  nghttp2_session_del(ng);
  small_trim(SMALL_IDLE_BYTES);
  h->ng = NULL;
  h->win_debt = 0;
  h->trim_due = 0;
  h->slept = 1;
  if (c->tls) lr__tls_idle(c);
  LR_DEBUG("h2: connection asleep (window %d)", (int)h->window);
  return 0;
}

static int drop_output(h2_conn_t *h) {
  const uint8_t *d;
  ssize_t n;
  while ((n = nghttp2_session_mem_send(h->ng, &d)) > 0) continue;
  return (int)n;
}

/* asleep: a new session, told what the old one knew; its own output (our
 * SETTINGS again, the acknowledgement of the peer's) is dropped. 0, or -1 and
 * the connection is closed */
static int h2_wake(h2_conn_t *h) {
  if (h->ng) return 0;
  lr_conn_t *c = h->c;
  if (session_new(h)) {
    lr_conn_close(c);
    return -1;
  }
  nghttp2_session *ng = h->ng;
  h->restoring = 1;
  uint8_t in[NGHTTP2_CLIENT_MAGIC_LEN + 9 + sizeof peer_ids * 6 + 9 + 13 + 15], *d = in;
  memcpy(d, NGHTTP2_CLIENT_MAGIC, NGHTTP2_CLIENT_MAGIC_LEN);
  d += NGHTTP2_CLIENT_MAGIC_LEN;
  uint8_t *settings = d;
  d += 9;
  for (size_t i = 0; i < sizeof peer_ids; i++) {
    uint32_t v = h->peer_settings[peer_ids[i] - 1];
    if (v == nghttp2_session_get_remote_settings(ng, peer_ids[i])) continue;
    *d++ = 0, *d++ = peer_ids[i];
    *d++ = (uint8_t)(v >> 24), *d++ = (uint8_t)(v >> 16), *d++ = (uint8_t)(v >> 8), *d++ = (uint8_t)v;
  }
  frame_hd(settings, (uint32_t)(d - settings - 9), NGHTTP2_SETTINGS, 0, 0);
  if (h->settings_acked) {
    frame_hd(d, 0, NGHTTP2_SETTINGS, NGHTTP2_FLAG_ACK, 0);
    d += 9;
  }
  if (h->window > H2_INITIAL_WINDOW) {
    uint32_t inc = (uint32_t)h->window - H2_INITIAL_WINDOW;
    frame_hd(d, 4, NGHTTP2_WINDOW_UPDATE, 0, 0);
    d[9] = (uint8_t)(inc >> 24), d[10] = (uint8_t)(inc >> 16), d[11] = (uint8_t)(inc >> 8), d[12] = (uint8_t)inc;
    d += 13;
  }
  if (h->max_sid) { /* GET / (:authority x, not indexed): the last stream, at once reset below */
    static const uint8_t block[] = {0x82, 0x86, 0x84, 0x01, 0x01, 'x'};
    frame_hd(d, sizeof block, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_STREAM | NGHTTP2_FLAG_END_HEADERS, (uint32_t)h->max_sid);
    memcpy(d + 9, block, sizeof block);
    d += 9 + sizeof block;
  }
  int ok = drop_output(h) == 0 && nghttp2_session_mem_recv(ng, in, (size_t)(d - in)) == d - in &&
           (h->max_sid == 0 || nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, h->max_sid, NGHTTP2_NO_ERROR) == 0) && drop_output(h) == 0;
  h->restoring = 0;
  if (!ok) {
    lr_log(LR_LOG_WARN, "h2: could not wake an idle connection");
    lr_conn_close(c);
    return -1;
  }
  h->win_debt = h->window < H2_INITIAL_WINDOW ? H2_INITIAL_WINDOW - h->window : 0;
  LR_DEBUG("h2: connection awake (last stream %d)", (int)h->max_sid);
  h->trimmed = 0;
  h->trim_ms = uv_now(&c->worker->loop);
  return 0;
}

/* Asleep, the frames a quiet client still sends are answered without a
 * session: the acknowledgement of our SETTINGS, PING, WINDOW_UPDATE for the
 * connection. Anything else, or a frame cut short, wakes it: -1, nothing
 * taken (all or nothing, so nghttp2 sees the input whole). */
static int doze(h2_conn_t *h, const uint8_t *p, size_t len) {
  int acked = h->settings_acked;
  int64_t window = h->window;
  unsigned noise = 0, credit = h->wu_credit;
  for (size_t i = 0; i < len;) {
    const uint8_t *hd = p + i;
    if (len - i < 9) return -1;
    uint32_t flen = (uint32_t)hd[0] << 16 | (uint32_t)hd[1] << 8 | hd[2];
    if ((get32(hd + 5) & 0x7fffffff) != 0 || len - i - 9 < flen) return -1;
    switch (hd[3]) {
      case NGHTTP2_SETTINGS:
        if (!(hd[4] & NGHTTP2_FLAG_ACK) || flen || acked) return -1;
        acked = 1;
        break;
      case NGHTTP2_PING:
        if ((hd[4] & NGHTTP2_FLAG_ACK) || flen != 8) return -1;
        noise++;
        break;
      case NGHTTP2_WINDOW_UPDATE:
        if (flen != 4 || (get32(hd + 9) & 0x7fffffff) == 0) return -1;
        window += get32(hd + 9) & 0x7fffffff;
        if (window > 0x7fffffff) return -1; /* nghttp2 says what that is */
        if (credit) credit--;
        else noise++;
        break;
      default:
        return -1;
    }
    i += 9 + flen;
  }
  if (noise + 1 > h->noise_tokens) return -1; /* flood: nghttp2's path calms it down */
  for (size_t i = 0; i < len;) {
    const uint8_t *hd = p + i;
    uint32_t flen = (uint32_t)hd[0] << 16 | (uint32_t)hd[1] << 8 | hd[2];
    if (hd[3] == NGHTTP2_PING) {
      uint8_t ack[17];
      frame_hd(ack, 8, NGHTTP2_PING, NGHTTP2_FLAG_ACK, 0);
      memcpy(ack + 9, hd + 9, 8);
      lr_conn_write(h->c, ack, sizeof ack);
    }
    i += 9 + flen;
  }
  for (unsigned k = 0; k < noise; k++) token(h, &h->noise_tokens, NOISE_BURST, NOISE_RATE);
  h->settings_acked = (uint8_t)acked;
  h->window = (int32_t)window;
  h->wu_credit = credit;
  lr_conn_set_timeout(h->c, LR_TO_IDLE);
  return 0;
}

int lr_http2_start(lr_conn_t *c, const char *data, size_t len) {
  h2_conn_t *h = h2_new(c);
  if (h == NULL) {
    lr_conn_close(c);
    return UV_ENOMEM;
  }
  c->proto = &lr_http2_proto;
  c->proto_state = h;
  lr_conn_set_timeout(c, LR_TO_IDLE);
  if (len)
    h2_on_read(c, data, len);
  else
    want_send(h);
  return 0;
}

/* base64url (RFC 4648 §5), padding optional */
static int b64url_decode(const char *in, size_t n, uint8_t *out, size_t *outlen) {
  uint32_t acc = 0;
  int bits = 0;
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    char ch = in[i];
    int v;
    if (ch >= 'A' && ch <= 'Z') v = ch - 'A';
    else if (ch >= 'a' && ch <= 'z') v = ch - 'a' + 26;
    else if (ch >= '0' && ch <= '9') v = ch - '0' + 52;
    else if (ch == '-' || ch == '+') v = 62;
    else if (ch == '_' || ch == '/') v = 63;
    else if (ch == '=') break;
    else return -1;
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (uint8_t)(acc >> bits);
    }
  }
  *outlen = o;
  return 0;
}

int lr_http2_upgrade(lr_conn_t *c, lr_stream_t *s, const lr_str_t *settings, const char *data, size_t len) {
  if (c->tls || settings == NULL || settings->len > 1024 || !(s->flags & LR_SF_BODY_DONE)) return -1;
  uint8_t payload[800];
  size_t plen;
  if (b64url_decode(settings->base, settings->len, payload, &plen) || plen % 6) return -1;
  h2_conn_t *h = h2_new(c);
  if (h == NULL) return -1;
  h2_stream_t *st = calloc(1, sizeof *st);
  if (st == NULL || nghttp2_session_upgrade2(h->ng, payload, plen, (s->flags & LR_SF_HEAD) != 0, st)) {
    free(st);
    nghttp2_session_del(h->ng);
    free(h);
    return -1;
  }
  static const char switching[] = "HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n";
  lr_conn_write(c, switching, sizeof switching - 1);
  c->proto = &lr_http2_proto;
  c->proto_state = h;
  /* the upgrading request is stream 1, half-closed (remote) */
  h->max_sid = 1;
  st->s = s;
  st->h = h;
  st->id = 1;
  lr_list_init(&st->pend_link);
  lr_list_push(&h->streams, &st->all);
  h->n_streams++;
  s->version = 20;
  s->id = 1;
  s->proto_data = st;
  pend(st, PEND_START);
  lr_conn_set_timeout(c, LR_TO_NONE);
  if (len)
    h2_on_read(c, data, len);
  else {
    run_pending(h);
    want_send(h);
  }
  return 0;
}
