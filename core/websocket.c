/* WebSocket (RFC 6455) with permessage-deflate (RFC 7692).
 *
 * After the handshake the connection's protocol becomes this one. wslay's
 * frame layer reads and writes the wire format; the message layer is here:
 * fragmentation, control frames, UTF-8 checked as bytes arrive (also across
 * fragments and after inflating), the close handshake, limits, server pings.
 *
 * The application sees whole messages through lr_ws_recv and is told about
 * new messages, drained output and the end of the connection through one
 * notify callback, always from a loop callback and never while this file is
 * in the middle of parsing. The object lives until both the connection and
 * the application let go of it. */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <wslay/wslay.h>
#include <zlib.h>

#include "lariat.h"

#define RSV1 4
#define CLOSE_WAIT_MS 3000 /* how long we wait for the peer's close reply */

typedef struct msg_s {
  struct msg_s *next;
  int kind;
  lr_buf_t data;
} msg_t;

struct lr_ws_s {
  /* the transport: the whole connection (HTTP/1.1 Upgrade) or one HTTP/2
   * stream (RFC 8441 extended CONNECT); `up` until it is gone */
  lr_conn_t *conn;     /* h1: the connection, NULL once gone */
  lr_stream_t *h2s;    /* h2: the CONNECT stream, NULL once gone */
  lr_worker_t *worker;
  int up;
  lr_stream_t *stream; /* the upgrade request; released with the connection (h1) */
  lr_ws_opts_t o;
  wslay_frame_context_ptr fr; /* wslay's framing state; NULL while idle between frames */
  uint64_t wire_in, wire_used; /* bytes given to wslay, bytes of the frames it returned */
  /* input handed to wslay's recv callback */
  const char *in;
  size_t in_len;
  lr_buf_t pending; /* bytes that arrived with the upgrade request */
  /* the frame being read */
  int in_frame;
  uint8_t f_op, f_fin, f_rsv;
  uint64_t f_len, f_off;
  char ctl[125];
  size_t ctl_len;
  /* the message being assembled */
  int in_msg, msg_op, msg_deflated;
  uint64_t zin; /* compressed bytes of the message so far */
  lr_buf_t msg;
  uint8_t u_need, u_lo, u_hi; /* UTF-8 validator state */
  /* complete messages waiting for the application */
  msg_t *head, *tail;
  size_t queued;
  /* close state */
  int close_sent, close_recv;
  int failed, fail_sent; /* failed: the close code */
  const char *fail_why;
  int code; /* what recv reports once closed */
  char reason[124];
  size_t reason_len;
  /* deflate */
  z_stream inf, def;
  int inf_on, def_on;
  lr_buf_t zout;
  /* liveness */
  uv_timer_t timer;
  uint64_t last_rx, ping_window;
  unsigned pings;
  int ping_out, read_paused;
  /* application */
  void (*notify)(lr_ws_t *ws, int events);
  void *app_data;
  int events;  /* to deliver when the current callback ends */
  int busy;    /* inside a callback that may notify */
  int app_gone, timer_closed;
};

static void on_timer(uv_timer_t *t);

/* ---- the transport ---- */

static uint64_t now_ms(lr_ws_t *ws) { return uv_now(&ws->worker->loop); }

static void t_write(lr_ws_t *ws, const void *p, size_t n) {
  if (ws->h2s)
    lr_stream_send_data(ws->h2s, p, n, NULL, NULL);
  else if (ws->conn)
    lr_conn_write(ws->conn, p, n);
}

/* nothing can be written any more */
static int t_dead(lr_ws_t *ws) {
  if (!ws->up) return 1;
  if (ws->h2s) return ws->h2s->conn == NULL || (ws->h2s->flags & (LR_SF_FINISHED | LR_SF_RESET));
  return (ws->conn->flags & LR_CF_CLOSING) != 0;
}

/* the end of our side is decided (close after what is queued) */
static int t_ending(lr_ws_t *ws) {
  return t_dead(ws) || (ws->conn && (ws->conn->flags & LR_CF_CLOSE_AFTER_WRITE));
}

static void t_read_stop(lr_ws_t *ws) {
  if (ws->conn) lr_conn_read_stop(ws->conn); /* h2: we stop taking the stream's body, its window closes */
}

static void t_read_start(lr_ws_t *ws) {
  if (ws->conn) lr_conn_read_start(ws->conn);
}

/* end after the queued output: TCP close (h1), END_STREAM (h2) */
static void t_end(lr_ws_t *ws) {
  if (ws->h2s)
    lr_stream_finish(ws->h2s);
  else if (ws->conn)
    lr_conn_close_after_write(ws->conn);
}

/* end now: TCP close (h1), RST_STREAM (h2) */
static void t_close(lr_ws_t *ws) {
  if (ws->h2s) {
    lr_stream_t *s = ws->h2s;
    if (s->conn && !(s->flags & LR_SF_RESET)) s->conn->proto->abort(s);
  } else if (ws->conn) {
    lr_conn_close(ws->conn);
  }
}

static int t_blocked(lr_ws_t *ws) {
  if (ws->h2s) return ws->h2s->conn && lr_stream_write_blocked(ws->h2s);
  return ws->conn && lr_conn_queued(ws->conn) > LR_OUT_HIGH;
}

/* ---- helpers ---- */

void lr_ws_accept_key(const char *key, size_t len, char out[29]) {
  static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  unsigned char md[EVP_MAX_MD_SIZE];
  char buf[128];
  unsigned mdlen = 0;
  if (len > sizeof buf - sizeof guid) len = sizeof buf - sizeof guid;
  memcpy(buf, key, len);
  memcpy(buf + len, guid, sizeof guid - 1);
  EVP_Digest(buf, len + sizeof guid - 1, md, &mdlen, EVP_sha1(), NULL);
  EVP_EncodeBlock((unsigned char *)out, md, (int)mdlen);
}

/* the proxy's side of a handshake it makes for an HTTP/2 client (RFC 8441
 * has no key): RFC 6455 §4.1 "a randomly selected 16-byte value" */
int lr_ws_client_key(char key[25], char accept[29]) {
  unsigned char nonce[16];
  if (RAND_bytes(nonce, sizeof nonce) != 1) return -1;
  EVP_EncodeBlock((unsigned char *)key, nonce, sizeof nonce);
  lr_ws_accept_key(key, 24, accept);
  return 0;
}

/* incremental UTF-8 check: 0 ok so far, -1 invalid */
static int utf8_feed(lr_ws_t *ws, const unsigned char *p, size_t n) {
  uint8_t need = ws->u_need, lo = ws->u_lo, hi = ws->u_hi;
  for (size_t i = 0; i < n; i++) {
    unsigned char b = p[i];
    if (need == 0) {
      if (b < 0x80) continue;
      lo = 0x80, hi = 0xBF;
      if (b >= 0xC2 && b <= 0xDF)
        need = 1;
      else if (b == 0xE0)
        need = 2, lo = 0xA0;
      else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF)
        need = 2;
      else if (b == 0xED)
        need = 2, hi = 0x9F;
      else if (b == 0xF0)
        need = 3, lo = 0x90;
      else if (b >= 0xF1 && b <= 0xF3)
        need = 3;
      else if (b == 0xF4)
        need = 3, hi = 0x8F;
      else
        return -1;
    } else {
      if (b < lo || b > hi) return -1;
      need--;
      lo = 0x80, hi = 0xBF;
    }
  }
  ws->u_need = need, ws->u_lo = lo, ws->u_hi = hi;
  return 0;
}

int lr_utf8_valid(const char *p, size_t n) {
  lr_ws_t tmp;
  tmp.u_need = 0;
  return utf8_feed(&tmp, (const unsigned char *)p, n) == 0 && tmp.u_need == 0;
}

static int valid_close_code(int code) {
  return (code >= 1000 && code <= 1014 && code != 1004 && code != 1005 && code != 1006) ||
         (code >= 3000 && code <= 4999);
}

/* ---- output ---- */

static ssize_t send_cb(const uint8_t *data, size_t len, int flags, void *user) {
  lr_ws_t *ws = user;
  t_write(ws, data, len);
  return (ssize_t)len; /* the connection queues everything */
}

static ssize_t recv_cb(uint8_t *buf, size_t len, int flags, void *user) {
  lr_ws_t *ws = user;
  size_t n = ws->in_len < len ? ws->in_len : len;
  if (n == 0) return 0;
  memcpy(buf, ws->in, n);
  ws->in += n;
  ws->in_len -= n;
  return (ssize_t)n;
}

static int genmask_cb(uint8_t *buf, size_t len, void *user) {
  memset(buf, 0, len); /* servers never mask */
  return 0;
}

/* wslay's frame context carries a 4 KiB input buffer: it exists only while
 * frames are being read or written, not for an idle connection */
static int frames_on(lr_ws_t *ws) {
  static const struct wslay_frame_callbacks cbs = {send_cb, recv_cb, genmask_cb};
  return ws->fr != NULL || wslay_frame_context_init(&ws->fr, &cbs, ws) == 0;
}

/* between frames with nothing buffered in wslay: drop the context */
static void frames_off_if_idle(lr_ws_t *ws) {
  if (ws->fr && !ws->in_frame && ws->wire_in == ws->wire_used) {
    wslay_frame_context_free(ws->fr);
    ws->fr = NULL;
  }
}

static uint64_t frame_header_len(const struct wslay_frame_iocb *io) {
  uint64_t n = io->payload_length;
  return 2 + (n < 126 ? 0 : n <= 0xFFFF ? 2 : 8) + (io->mask ? 4 : 0);
}

static void send_frame(lr_ws_t *ws, int op, int rsv, const char *data, size_t len) {
  if (t_dead(ws) || !frames_on(ws)) return;
  struct wslay_frame_iocb io = {0};
  io.fin = 1;
  io.rsv = (uint8_t)rsv;
  io.opcode = (uint8_t)op;
  io.payload_length = len;
  io.data = (const uint8_t *)data;
  io.data_length = len;
  /* every call completes: send_cb never pushes back */
  wslay_frame_send(ws->fr, &io);
  if (len == 0) return;
}

static void send_close(lr_ws_t *ws, int code, const char *reason, size_t rlen) {
  if (ws->close_sent) return;
  ws->close_sent = 1;
  char buf[125] = {0}; /* zeroed: with no code nothing is read, but the compiler can't tell */
  size_t n = 0;
  if (code) {
    if (rlen > 123) rlen = 123;
    buf[0] = (char)(code >> 8);
    buf[1] = (char)(code & 0xff);
    if (rlen) memcpy(buf + 2, reason, rlen);
    n = 2 + rlen;
  }
  send_frame(ws, WSLAY_CONNECTION_CLOSE, 0, buf, n);
}

static void set_closed(lr_ws_t *ws, int code, const char *reason, size_t rlen) {
  if (ws->code) return;
  ws->code = code;
  if (rlen > sizeof ws->reason) rlen = sizeof ws->reason;
  if (rlen) memcpy(ws->reason, reason, rlen);
  ws->reason_len = rlen;
  ws->events |= LR_WS_EV_CLOSED;
}

/* _Fail the WebSocket Connection_ (RFC 6455 §7.1.7). Input stops here; the
 * close goes out once the current callback has delivered the messages that
 * came before the bad frame (so an echo of them still reaches the peer). */
static void ws_fail(lr_ws_t *ws, int code, const char *why) {
  if (ws->failed || !ws->up) return;
  ws->failed = code;
  ws->fail_why = why;
  LR_DEBUG("websocket: closing with %d: %s", code, why);
  t_read_stop(ws);
}

/* send the close of a failed connection; 1 if there is news for the app */
static int flush_fail(lr_ws_t *ws) {
  if (!ws->failed || ws->fail_sent || !ws->up) return 0;
  ws->fail_sent = 1;
  size_t n = strlen(ws->fail_why);
  send_close(ws, ws->failed, ws->fail_why, n);
  set_closed(ws, ws->failed, ws->fail_why, n);
  t_end(ws);
  /* a peer that doesn't read our close doesn't keep the connection */
  uv_timer_start(&ws->timer, on_timer, CLOSE_WAIT_MS, 0);
  return 1;
}

/* ---- deflate ---- */

static int inflate_into(lr_ws_t *ws, const char *p, size_t n) {
  if (!ws->inf_on) {
    if (inflateInit2(&ws->inf, -15) != Z_OK) return -1;
    ws->inf_on = 1;
  }
  z_stream *z = &ws->inf;
  z->next_in = (Bytef *)p;
  z->avail_in = (uInt)n;
  while (z->avail_in > 0) {
    if (ws->msg.len >= ws->o.max_message) return -2;
    size_t room = 16384;
    if (lr_buf_reserve(&ws->msg, room)) return -1;
    size_t before_out = ws->msg.len;
    z->next_out = (Bytef *)ws->msg.base + ws->msg.len;
    z->avail_out = (uInt)room;
    int r = inflate(z, Z_SYNC_FLUSH);
    size_t got = room - z->avail_out;
    ws->msg.len += got;
    if (ws->msg_op == WSLAY_TEXT_FRAME &&
        utf8_feed(ws, (const unsigned char *)ws->msg.base + before_out, got) != 0)
      return -3;
    if (ws->msg.len > ws->o.max_message) return -2;
    if (r == Z_STREAM_END) {
      inflateReset(z);
      continue;
    }
    if (r == Z_BUF_ERROR && got == 0) break;
    if (r != Z_OK && r != Z_BUF_ERROR) return -4;
  }
  return 0;
}

/* deflate a message for a frame with RSV1; returns the bytes in ws->zout */
static int deflate_msg(lr_ws_t *ws, const char *p, size_t n) {
  if (!ws->def_on) {
    int bits = ws->o.server_max_window_bits ? ws->o.server_max_window_bits : 15;
    if (deflateInit2(&ws->def, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -bits, 8, Z_DEFAULT_STRATEGY) != Z_OK) return -1;
    ws->def_on = 1;
  }
  z_stream *z = &ws->def;
  ws->zout.len = 0;
  z->next_in = (Bytef *)p;
  z->avail_in = (uInt)n;
  do {
    size_t room = deflateBound(z, n) + 16;
    if (lr_buf_reserve(&ws->zout, room)) return -1;
    z->next_out = (Bytef *)ws->zout.base + ws->zout.len;
    z->avail_out = (uInt)room;
    int r = deflate(z, Z_SYNC_FLUSH);
    if (r != Z_OK && r != Z_BUF_ERROR) return -1;
    ws->zout.len += room - z->avail_out;
  } while (z->avail_out == 0 || z->avail_in > 0);
  /* RFC 7692 §7.2.1: the empty block's 00 00 ff ff tail is not sent */
  if (ws->zout.len >= 4) ws->zout.len -= 4;
  if (ws->o.server_no_context_takeover) deflateReset(z);
  return 0;
}

/* ---- input: the message layer ---- */

static void queue_msg(lr_ws_t *ws) {
  msg_t *m = malloc(sizeof *m);
  if (m == NULL) {
    ws_fail(ws, 1011, "out of memory");
    return;
  }
  m->next = NULL;
  m->kind = ws->msg_op == WSLAY_TEXT_FRAME ? LR_WS_TEXT : LR_WS_BINARY;
  m->data = ws->msg;
  ws->msg = (lr_buf_t){0};
  if (ws->tail)
    ws->tail->next = m;
  else
    ws->head = m;
  ws->tail = m;
  ws->queued += m->data.len;
  ws->events |= LR_WS_EV_MESSAGE;
}

static void on_control(lr_ws_t *ws) {
  switch (ws->f_op) {
    case WSLAY_CONNECTION_CLOSE: {
      int code = 1005;
      const char *reason = "";
      size_t rlen = 0;
      if (ws->ctl_len == 1) return ws_fail(ws, 1002, "close frame with a 1-byte payload");
      if (ws->ctl_len >= 2) {
        code = ((unsigned char)ws->ctl[0] << 8) | (unsigned char)ws->ctl[1];
        if (!valid_close_code(code)) return ws_fail(ws, 1002, "invalid close code");
        reason = ws->ctl + 2;
        rlen = ws->ctl_len - 2;
        if (!lr_utf8_valid(reason, rlen)) return ws_fail(ws, 1007, "close reason is not UTF-8");
      }
      ws->close_recv = 1;
      set_closed(ws, code, reason, rlen);
      /* echo the code (RFC 6455 §5.5.1), then the server closes TCP first */
      send_close(ws, code == 1005 ? 0 : code, NULL, 0);
      t_read_stop(ws);
      t_end(ws);
      uv_timer_start(&ws->timer, on_timer, CLOSE_WAIT_MS, 0);
      return;
    }
    case WSLAY_PING: {
      uint64_t now = now_ms(ws);
      if (now - ws->ping_window >= 1000) {
        ws->ping_window = now;
        ws->pings = 0;
      }
      if (++ws->pings > ws->o.max_pings) return ws_fail(ws, 1008, "ping flood");
      if (!ws->close_sent) send_frame(ws, WSLAY_PONG, 0, ws->ctl, ws->ctl_len);
      return;
    }
    case WSLAY_PONG:
      ws->ping_out = 0;
      return;
  }
}

static void frame_start(lr_ws_t *ws, const struct wslay_frame_iocb *io) {
  ws->in_frame = 1;
  ws->f_op = io->opcode;
  ws->f_fin = io->fin;
  ws->f_rsv = io->rsv;
  ws->f_len = io->payload_length;
  ws->f_off = 0;
  ws->ctl_len = 0;
  if (!io->mask) return ws_fail(ws, 1002, "unmasked client frame");
  int rsv_ok = ws->o.deflate ? RSV1 : 0;
  if (io->rsv & ~rsv_ok) return ws_fail(ws, 1002, "reserved bits set");
  switch (io->opcode) {
    case WSLAY_CONTINUATION_FRAME:
      if (!ws->in_msg) return ws_fail(ws, 1002, "continuation frame without a message");
      if (io->rsv) return ws_fail(ws, 1002, "RSV1 on a continuation frame");
      break;
    case WSLAY_TEXT_FRAME:
    case WSLAY_BINARY_FRAME:
      if (ws->in_msg) return ws_fail(ws, 1002, "new message inside a fragmented one");
      ws->in_msg = 1;
      ws->msg_op = io->opcode;
      ws->msg_deflated = (io->rsv & RSV1) != 0;
      ws->msg.len = 0;
      ws->zin = 0;
      ws->u_need = 0;
      break;
    case WSLAY_CONNECTION_CLOSE:
    case WSLAY_PING:
    case WSLAY_PONG:
      if (io->rsv) return ws_fail(ws, 1002, "reserved bits on a control frame");
      return;
    default:
      return ws_fail(ws, 1002, "reserved opcode");
  }
  /* compressed or not, no message takes more than max_message bytes on the wire */
  uint64_t have = ws->msg_deflated ? ws->zin : ws->msg.len;
  if (have + io->payload_length > ws->o.max_message) return ws_fail(ws, 1009, "message too big");
  ws->zin += io->payload_length;
}

static void frame_data(lr_ws_t *ws, const char *p, size_t n) {
  if (n == 0) return;
  if (ws->f_op >= 8) {
    memcpy(ws->ctl + ws->ctl_len, p, n); /* wslay bounds control frames to 125 bytes */
    ws->ctl_len += n;
    return;
  }
  if (ws->close_recv || ws->close_sent) return; /* closing: data is dropped */
  if (ws->msg_deflated) {
    int r = inflate_into(ws, p, n);
    if (r == -2) return ws_fail(ws, 1009, "message too big");
    if (r == -3) return ws_fail(ws, 1007, "invalid UTF-8 in a text message");
    if (r) return ws_fail(ws, 1007, "bad compressed data");
    return;
  }
  if (ws->msg_op == WSLAY_TEXT_FRAME && utf8_feed(ws, (const unsigned char *)p, n) != 0)
    return ws_fail(ws, 1007, "invalid UTF-8 in a text message");
  if (lr_buf_append(&ws->msg, p, n)) return ws_fail(ws, 1011, "out of memory");
}

static void frame_end(lr_ws_t *ws) {
  ws->in_frame = 0;
  if (ws->f_op >= 8) return on_control(ws);
  if (!ws->f_fin) return;
  ws->in_msg = 0;
  if (ws->close_recv || ws->close_sent) return;
  if (ws->msg_deflated) {
    static const char tail[4] = {0, 0, (char)0xff, (char)0xff};
    int r = inflate_into(ws, tail, 4);
    if (r == -2) return ws_fail(ws, 1009, "message too big");
    if (r == -3) return ws_fail(ws, 1007, "invalid UTF-8 in a text message");
    if (r) return ws_fail(ws, 1007, "bad compressed data");
    if (ws->o.client_no_context_takeover) inflateReset(&ws->inf);
  }
  if (ws->msg_op == WSLAY_TEXT_FRAME && ws->u_need) return ws_fail(ws, 1007, "truncated UTF-8 in a text message");
  queue_msg(ws);
}

static void deliver(lr_ws_t *ws);

static void process(lr_ws_t *ws, const char *p, size_t n) {
  if (!frames_on(ws)) return ws_fail(ws, 1011, "out of memory");
  ws->in = p;
  ws->in_len = n;
  ws->wire_in += n;
  while (!ws->failed && !t_dead(ws)) {
    struct wslay_frame_iocb io;
    memset(&io, 0, sizeof io);
    ssize_t r = wslay_frame_recv(ws->fr, &io);
    if (r == WSLAY_ERR_WANT_READ) break;
    if (r < 0) {
      ws_fail(ws, 1002, "malformed frame");
      break;
    }
    if (!ws->in_frame) {
      ws->wire_used += frame_header_len(&io);
      frame_start(ws, &io);
      if (ws->failed) break;
    }
    ws->wire_used += io.data_length;
    frame_data(ws, (const char *)io.data, io.data_length);
    ws->f_off += io.data_length;
    if (ws->failed) break;
    if (ws->f_off == ws->f_len) frame_end(ws);
  }
  ws->in = NULL;
  ws->in_len = 0;
  frames_off_if_idle(ws);
  if (ws->up && !ws->failed && !ws->close_recv) {
    /* a reader that falls behind (or a peer that doesn't read our pongs) is slowed down */
    if (ws->queued > ws->o.max_queued || t_blocked(ws)) {
      ws->read_paused = 1;
      t_read_stop(ws);
    }
  }
}

/* ---- events to the application ---- */

static void maybe_free(lr_ws_t *ws) {
  if (ws->busy || !ws->app_gone || ws->up || !ws->timer_closed) return;
  while (ws->head) {
    msg_t *m = ws->head;
    ws->head = m->next;
    lr_buf_free(&m->data);
    free(m);
  }
  lr_buf_free(&ws->msg);
  lr_buf_free(&ws->zout);
  lr_buf_free(&ws->pending);
  if (ws->inf_on) inflateEnd(&ws->inf);
  if (ws->def_on) deflateEnd(&ws->def);
  if (ws->fr) wslay_frame_context_free(ws->fr);
  free(ws);
}

static void deliver(lr_ws_t *ws) {
  ws->busy++;
  while (ws->events && !ws->app_gone && ws->notify) {
    int ev = ws->events;
    ws->events = 0;
    ws->notify(ws, ev);
  }
  ws->busy--;
  maybe_free(ws);
}

/* ---- lr_proto_t ---- */

#define WS(c) ((lr_ws_t *)(c)->proto_state)

static void ws_on_read(lr_conn_t *c, const char *data, size_t len) {
  lr_ws_t *ws = WS(c);
  ws->busy++;
  ws->last_rx = now_ms(ws);
  ws->ping_out = 0;
  if (ws->pending.len) {
    lr_buf_append(&ws->pending, data, len);
    lr_buf_t in = ws->pending;
    ws->pending = (lr_buf_t){0};
    process(ws, in.base, in.len);
    lr_buf_free(&in);
  } else {
    process(ws, data, len);
  }
  ws->busy--;
  deliver(ws);
  if (flush_fail(ws)) deliver(ws);
}

static void ws_resume(lr_conn_t *c) {
  lr_ws_t *ws = WS(c);
  if (ws->pending.len == 0) return;
  ws_on_read(c, "", 0);
}

static void ws_on_eof(lr_conn_t *c) {
  lr_ws_t *ws = WS(c);
  if (!ws->close_recv) set_closed(ws, 1006, "", 0);
  lr_conn_close(c);
}

static void ws_on_drain(lr_conn_t *c) {
  lr_ws_t *ws = WS(c);
  if (ws->read_paused && ws->queued <= ws->o.max_queued && !ws->close_recv && !ws->failed) {
    ws->read_paused = 0;
    lr_conn_read_start(c);
  }
  ws->events |= LR_WS_EV_DRAIN;
  deliver(ws);
}

static void on_timer_closed(uv_handle_t *h) {
  lr_ws_t *ws = h->data;
  ws->timer_closed = 1;
  maybe_free(ws);
}

/* the transport is gone: the connection closed (h1) or the stream ended (h2) */
static void ws_gone(lr_ws_t *ws) {
  if (!ws->up) return;
  ws->busy++;
  if (!ws->code) set_closed(ws, 1006, "", 0);
  ws->events |= LR_WS_EV_CLOSED;
  ws->up = 0;
  ws->conn = NULL;
  if (ws->h2s) ws->h2s->ws = NULL;
  ws->h2s = NULL; /* h2 releases its own side of the stream */
  uv_close((uv_handle_t *)&ws->timer, on_timer_closed);
  lr_stream_t *s = ws->stream;
  ws->stream = NULL;
  if (s && s->version != 20) lr__stream_conn_release(s);
  ws->busy--;
  deliver(ws);
}

static void ws_on_close(lr_conn_t *c) {
  lr_ws_t *ws = WS(c);
  c->proto_state = NULL;
  ws_gone(ws);
}

static void ws_on_shutdown(lr_conn_t *c) {
  lr_ws_t *ws = WS(c);
  /* the server stops: 1001 going away, and we don't wait for the reply */
  send_close(ws, 1001, "server shutting down", 20);
  set_closed(ws, 1001, "server shutting down", 20);
  lr_conn_close_after_write(c);
  uv_timer_start(&ws->timer, on_timer, CLOSE_WAIT_MS, 0);
  deliver(ws);
}

static void ws_on_timeout(lr_conn_t *c) { lr_conn_close(c); }

/* h2 (RFC 8441): the connection is going away with GOAWAY; each WebSocket on
 * it says 1001 like an HTTP/1.1 one, then waits briefly for the reply. The
 * handler hears of it with the reply (or the timeout): the caller walks its
 * streams, so no handler may run from here. */
void lr_ws_going_away(lr_ws_t *ws) { lr_ws_close(ws, 1001, "server shutting down", 20); }

static void on_timer(uv_timer_t *t) {
  lr_ws_t *ws = t->data;
  if (!ws->up) return;
  if (ws->close_sent) { /* the peer never answered our close */
    t_close(ws);
    return;
  }
  uint64_t now = now_ms(ws);
  if (now - ws->last_rx + 10 < ws->o.ping_interval_ms) return;
  if (ws->ping_out) {
    ws_fail(ws, 1001, "no pong");
    flush_fail(ws);
    deliver(ws);
    return;
  }
  ws->ping_out = 1;
  send_frame(ws, WSLAY_PING, 0, "lariat", 6);
}

static const lr_proto_t ws_proto = {
    .name = "websocket",
    .on_read = ws_on_read,
    .on_eof = ws_on_eof,
    .on_drain = ws_on_drain,
    .on_timeout = ws_on_timeout,
    .on_close = ws_on_close,
    .on_shutdown = ws_on_shutdown,
    .resume = ws_resume,
};

/* ---- negotiation ---- */

/* one parameter of an offer: name[=value] */
static int param_bits(const char *v, size_t n) {
  if (n >= 2 && v[0] == '"' && v[n - 1] == '"') v++, n -= 2;
  if (n == 0 || n > 2) return -1;
  int b = 0;
  for (size_t i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '9') return -1;
    b = b * 10 + (v[i] - '0');
  }
  if (n == 2 && v[0] == '0') return -1;
  return b >= 8 && b <= 15 ? b : -1;
}

static void trim(const char **p, size_t *n) {
  while (*n && (**p == ' ' || **p == '\t')) (*p)++, (*n)--;
  while (*n && ((*p)[*n - 1] == ' ' || (*p)[*n - 1] == '\t')) (*n)--;
}

/* try one offer ("permessage-deflate; a; b=1"); 0 and fills o, or -1 */
static int try_offer(const char *p, size_t n, lr_ws_opts_t *o, char *resp, size_t rlen) {
  const char *end = p + n;
  const char *semi = memchr(p, ';', n);
  const char *nm = p;
  size_t nl = (size_t)((semi ? semi : end) - p);
  trim(&nm, &nl);
  if (nl != 18 || strncasecmp(nm, "permessage-deflate", 18) != 0) return -1;
  int snct = 0, cnct = 0, smwb = 0, cmwb = 0, seen = 0;
  const char *q = semi ? semi + 1 : end;
  while (q < end) {
    const char *e = memchr(q, ';', (size_t)(end - q));
    if (e == NULL) e = end;
    const char *k = q;
    size_t kl = (size_t)(e - q);
    const char *eq = memchr(k, '=', kl);
    const char *v = NULL;
    size_t vl = 0;
    if (eq) {
      v = eq + 1;
      vl = (size_t)(e - v);
      kl = (size_t)(eq - k);
      trim(&v, &vl);
    }
    trim(&k, &kl);
    int bit;
    if (kl == 26 && strncasecmp(k, "server_no_context_takeover", 26) == 0) {
      bit = 1;
      if (eq) return -1;
      snct = 1;
    } else if (kl == 26 && strncasecmp(k, "client_no_context_takeover", 26) == 0) {
      bit = 2;
      if (eq) return -1;
      cnct = 1;
    } else if (kl == 22 && strncasecmp(k, "server_max_window_bits", 22) == 0) {
      bit = 4;
      if (!eq || (smwb = param_bits(v, vl)) < 0) return -1;
    } else if (kl == 22 && strncasecmp(k, "client_max_window_bits", 22) == 0) {
      bit = 8;
      cmwb = 15;
      if (eq && (cmwb = param_bits(v, vl)) < 0) return -1;
    } else {
      return -1; /* an unknown parameter: decline this offer */
    }
    if (seen & bit) return -1;
    seen |= bit;
    q = e + 1;
  }
  /* zlib can't make an 8-bit window: decline, the client may offer more */
  if (smwb == 8) return -1;
  int s_bits = o->server_max_window_bits ? o->server_max_window_bits : 15;
  if (smwb && smwb < s_bits) s_bits = smwb;
  if (s_bits == 8) s_bits = 9;
  o->deflate = 1;
  o->server_no_context_takeover = snct || o->server_no_context_takeover;
  o->client_no_context_takeover = cnct || o->client_no_context_takeover;
  int n2 = snprintf(resp, rlen, "permessage-deflate");
  if (o->server_no_context_takeover) n2 += snprintf(resp + n2, rlen - (size_t)n2, "; server_no_context_takeover");
  if (o->client_no_context_takeover) n2 += snprintf(resp + n2, rlen - (size_t)n2, "; client_no_context_takeover");
  /* the server may only answer with server_max_window_bits when it was offered */
  if (smwb || s_bits < 15) {
    if (!smwb && s_bits < 15) {
      s_bits = 15; /* can't tell the client: use the full window */
    } else {
      n2 += snprintf(resp + n2, rlen - (size_t)n2, "; server_max_window_bits=%d", s_bits);
    }
  }
  o->server_max_window_bits = s_bits;
  if ((seen & 8) && o->client_max_window_bits && o->client_max_window_bits < cmwb)
    n2 += snprintf(resp + n2, rlen - (size_t)n2, "; client_max_window_bits=%d", o->client_max_window_bits);
  return 0;
}

int lr_ws_negotiate_deflate(const char *v, size_t n, lr_ws_opts_t *o, char *resp, size_t rlen) {
  /* offers are comma separated, in the client's order of preference */
  const char *p = v, *end = v + n;
  while (p < end) {
    const char *c = memchr(p, ',', (size_t)(end - p));
    if (c == NULL) c = end;
    lr_ws_opts_t tmp = *o;
    if (try_offer(p, (size_t)(c - p), &tmp, resp, rlen) == 0) {
      *o = tmp;
      return 1;
    }
    p = c + 1;
  }
  return 0;
}

/* ---- the application's side ---- */

lr_ws_t *lr_ws_accept(lr_stream_t *s, const lr_header_t *extra, size_t n, const lr_ws_opts_t *opts) {
  lr_conn_t *c = s->conn;
  if (c == NULL || (s->flags & (LR_SF_REPLIED | LR_SF_RESET)) || c->worker->stopping) return NULL;
  lr_ws_t *ws = calloc(1, sizeof *ws);
  if (ws == NULL) return NULL;
  ws->o = *opts;
  if (ws->o.max_message == 0) ws->o.max_message = 16 << 20;
  if (ws->o.max_pings == 0) ws->o.max_pings = 100;
  if (ws->o.max_queued == 0) ws->o.max_queued = 1 << 20;
  ws->worker = c->worker;
  if (s->version == 20) {
    /* RFC 8441 §5: a 2xx to the extended CONNECT; the stream carries the frames */
    if (lr_stream_send_head(s, 200, extra, n, NULL, 0, NULL, NULL, 0) != 0) {
      free(ws);
      return NULL;
    }
    ws->h2s = s;
    s->ws = ws;
    s->wait = LR_WAIT_BODY;
  } else {
    if (lr_http1_switch(s, extra, n, &ws_proto, ws, &ws->pending) != 0) {
      free(ws);
      return NULL;
    }
    ws->conn = c;
    ws->stream = s;
  }
  ws->up = 1;
  uv_timer_init(&c->worker->loop, &ws->timer);
  ws->timer.data = ws;
  ws->last_rx = now_ms(ws);
  if (ws->o.ping_interval_ms) uv_timer_start(&ws->timer, on_timer, ws->o.ping_interval_ms, ws->o.ping_interval_ms);
  if (ws->pending.len) {
    c->flags |= LR_CF_NEED_RESUME;
    lr_conn_defer(c);
  }
  return ws;
}

/* h2: the stream has news (body data, drained output, its end); called by the
 * application's wake/conn_gone hooks for a stream that carries a WebSocket */
void lr_ws_stream_event(lr_ws_t *ws) {
  lr_stream_t *s = ws->h2s;
  if (s == NULL || ws->busy) return;
  if (s->conn == NULL) { /* reset, or both sides ended */
    ws_gone(ws);
    return;
  }
  ws->busy++;
  if (ws->read_paused && ws->queued <= ws->o.max_queued && !t_blocked(ws) && !ws->close_recv) ws->read_paused = 0;
  lr_buf_t in = {0};
  int fin = 0;
  while (!ws->failed && !ws->read_paused && !t_dead(ws)) {
    in.len = 0;
    int r = lr_stream_read_body(s, &in, 65536, &fin);
    if (r > 0) {
      ws->last_rx = now_ms(ws);
      ws->ping_out = 0;
      process(ws, in.base, in.len);
    }
    if (r <= 0 || fin) break;
  }
  lr_buf_free(&in);
  if (fin && !ws->close_recv && ws->up) {
    /* the peer ended its side without a close frame: the TCP EOF of h1 */
    set_closed(ws, 1006, "", 0);
    t_end(ws);
  }
  if (ws->up) {
    int blocked = t_blocked(ws);
    if (!blocked) ws->events |= LR_WS_EV_DRAIN;
    if (ws->h2s) ws->h2s->wait = blocked ? LR_WAIT_DRAIN : LR_WAIT_BODY;
  }
  ws->busy--;
  deliver(ws);
  if (flush_fail(ws)) deliver(ws);
}

void lr_ws_set_app(lr_ws_t *ws, void (*notify)(lr_ws_t *ws, int events), void *app_data) {
  ws->notify = notify;
  ws->app_data = app_data;
}

void *lr_ws_app_data(lr_ws_t *ws) { return ws->app_data; }

int lr_ws_recv(lr_ws_t *ws, int *kind, const char **data, size_t *len) {
  msg_t *m = ws->head;
  if (m) {
    *kind = m->kind;
    *data = m->data.base ? m->data.base : "";
    *len = m->data.len;
    return 1;
  }
  if (ws->code || !ws->up) return LR_ECLOSED;
  return 0;
}

void lr_ws_consume(lr_ws_t *ws) {
  msg_t *m = ws->head;
  if (m == NULL) return;
  ws->head = m->next;
  if (ws->head == NULL) ws->tail = NULL;
  ws->queued -= m->data.len;
  lr_buf_free(&m->data);
  free(m);
  if (ws->up && ws->read_paused && ws->queued <= ws->o.max_queued / 2 && !t_blocked(ws) && !ws->close_recv &&
      !ws->failed) {
    ws->read_paused = 0;
    t_read_start(ws);
    if (ws->h2s && !ws->busy) lr_ws_stream_event(ws); /* h2: take what waits in the stream */
  }
}

int lr_ws_close_info(lr_ws_t *ws, const char **reason, size_t *len) {
  *reason = ws->reason;
  *len = ws->reason_len;
  return ws->code ? ws->code : 1006;
}

static int can_send(lr_ws_t *ws) {
  return ws->up && !ws->close_sent && !t_ending(ws);
}

int lr_ws_can_send(lr_ws_t *ws) { return can_send(ws); }

int lr_ws_send(lr_ws_t *ws, int kind, const char *data, size_t len) {
  if (!can_send(ws)) return LR_ECLOSED;
  int op = kind == LR_WS_TEXT ? WSLAY_TEXT_FRAME : WSLAY_BINARY_FRAME;
  if (ws->o.deflate && len >= ws->o.compress_threshold && deflate_msg(ws, data, len) == 0) {
    send_frame(ws, op, RSV1, ws->zout.base, ws->zout.len);
    if (ws->zout.cap > 65536) lr_buf_free(&ws->zout);
    return 0;
  }
  send_frame(ws, op, 0, data, len);
  return 0;
}

int lr_ws_ping(lr_ws_t *ws, const char *data, size_t len) {
  if (!can_send(ws)) return LR_ECLOSED;
  if (len > 125) return UV_EINVAL;
  send_frame(ws, WSLAY_PING, 0, data, len);
  return 0;
}

int lr_ws_close(lr_ws_t *ws, int code, const char *reason, size_t len) {
  if (!can_send(ws)) return LR_ECLOSED;
  send_close(ws, code, reason, len);
  set_closed(ws, code ? code : 1005, reason, len);
  /* wait a little for the peer's close, then drop the connection */
  uv_timer_start(&ws->timer, on_timer, CLOSE_WAIT_MS, 0);
  return 0;
}

int lr_ws_write_blocked(lr_ws_t *ws) {
  int b = ws->up && t_blocked(ws);
  /* h2: the stream wakes us when its output drained instead of on data */
  if (b && ws->h2s) ws->h2s->wait = LR_WAIT_DRAIN;
  return b;
}

void lr_ws_app_release(lr_ws_t *ws) {
  ws->app_gone = 1;
  ws->notify = NULL;
  ws->app_data = NULL;
  if (ws->h2s) {
    /* h2: the stream is the request the application lets go of now; our side
     * ends after the close frame already queued */
    lr_stream_t *s = ws->h2s;
    if (s->conn && !(s->flags & (LR_SF_FINISHED | LR_SF_RESET))) lr_stream_finish(s);
    ws_gone(ws);
  }
  maybe_free(ws);
}
