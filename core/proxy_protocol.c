/* --proxy-protocol: every connection starts with HAProxy's PROXY header (v1
 * text or v2 binary, told apart by the first byte) naming the real client.
 * Nothing else is read until it is complete; a malformed one closes the
 * connection with a log line. A slow one is bounded by the header timeout,
 * armed at accept. The client's address is kept for lr_stream_peer (req.peer,
 * the access log). Spec: https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "lariat.h"

#define V1_MAX 107 /* "PROXY TCP6 " + 2 * 39 + 2 * 5 + spaces + CRLF */
#define V2_HEAD 16
#define V2_ADDR_MAX 216 /* AF_UNIX: two 108-byte paths */

static const unsigned char v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

typedef struct lr_proxy_s {
  int has_peer; /* a PROXY/TCP header named the client (LOCAL, UNKNOWN: the socket's peer) */
  char addr[INET6_ADDRSTRLEN];
  int port;
  size_t want; /* v2: bytes of header (+ address block) to hold in buf */
  size_t skip; /* v2: TLV bytes to discard once buf holds want bytes */
  size_t len;
  unsigned char buf[]; /* the header so far; dropped once parsed (realloc) */
} lr_proxy_t;

#define BUF_SIZE (V2_HEAD + V2_ADDR_MAX)

int lr__proxy_start(lr_conn_t *c) {
  c->proxy = calloc(1, sizeof *c->proxy + BUF_SIZE);
  if (c->proxy == NULL) return -1;
  c->flags |= LR_CF_PROXY_HDR;
  return 0;
}

void lr__proxy_free(lr_conn_t *c) {
  free(c->proxy);
  c->proxy = NULL;
}

int lr__proxy_peer(const lr_conn_t *c, char *out, size_t outlen, int *port) {
  if (!c->proxy->has_peer) return -1;
  snprintf(out, outlen, "%s", c->proxy->addr);
  *port = c->proxy->port;
  return 0;
}

static int parse_port(const char *s, int *port) {
  if (*s == '\0' || strlen(s) > 5 || (s[0] == '0' && s[1])) return -1;
  long v = 0;
  for (; *s; s++) {
    if (*s < '0' || *s > '9') return -1;
    v = v * 10 + (*s - '0');
  }
  if (v > 65535) return -1;
  *port = (int)v;
  return 0;
}

/* "PROXY TCP4 src dst sport dport\r\n" | "PROXY TCP6 …" | "PROXY UNKNOWN …" */
static const char *parse_v1(lr_proxy_t *x) {
  char line[V1_MAX + 1];
  if (x->len < 2 || x->buf[x->len - 2] != '\r') return "v1 header line does not end in CRLF";
  memcpy(line, x->buf, x->len - 2);
  line[x->len - 2] = '\0';
  char *tok[7];
  int n = 0;
  char *save = NULL;
  for (char *t = strtok_r(line, " ", &save); t && n < 7; t = strtok_r(NULL, " ", &save)) tok[n++] = t;
  if (n < 2 || strcmp(tok[0], "PROXY") != 0) return "bad v1 header";
  if (strcmp(tok[1], "UNKNOWN") == 0) return NULL; /* the socket's peer stands */
  int v6 = strcmp(tok[1], "TCP6") == 0;
  if (!v6 && strcmp(tok[1], "TCP4") != 0) return "v1: unknown protocol";
  if (n != 6) return "v1: want 6 fields";
  unsigned char a[16];
  int dport;
  if (inet_pton(v6 ? AF_INET6 : AF_INET, tok[2], a) != 1 || inet_pton(v6 ? AF_INET6 : AF_INET, tok[3], a) != 1)
    return "v1: bad address";
  if (parse_port(tok[4], &x->port) || parse_port(tok[5], &dport)) return "v1: bad port";
  inet_pton(v6 ? AF_INET6 : AF_INET, tok[2], a);
  inet_ntop(v6 ? AF_INET6 : AF_INET, a, x->addr, sizeof x->addr);
  x->has_peer = 1;
  return NULL;
}

/* the fixed part is in: how much address block to hold, how much TLV to skip */
static const char *v2_sizes(lr_proxy_t *x) {
  if (memcmp(x->buf, v2_sig, sizeof v2_sig) != 0) return "bad v2 signature";
  unsigned ver = x->buf[12] >> 4, cmd = x->buf[12] & 0x0F;
  if (ver != 2 || cmd > 1) return "v2: bad version or command";
  size_t len = (size_t)x->buf[14] << 8 | x->buf[15];
  size_t hold = len < V2_ADDR_MAX ? len : V2_ADDR_MAX;
  x->want = V2_HEAD + hold;
  x->skip = len - hold;
  return NULL;
}

static const char *parse_v2(lr_proxy_t *x) {
  unsigned cmd = x->buf[12] & 0x0F, fam = x->buf[13];
  size_t have = x->want - V2_HEAD;
  const unsigned char *a = x->buf + V2_HEAD;
  if (cmd == 0) return NULL; /* LOCAL (a health check from the proxy itself): the socket's peer */
  if (fam == 0x11) {         /* TCP over IPv4 */
    if (have < 12) return "v2: short IPv4 address block";
    inet_ntop(AF_INET, a, x->addr, sizeof x->addr);
    x->port = a[8] << 8 | a[9];
    x->has_peer = 1;
  } else if (fam == 0x21) { /* TCP over IPv6 */
    if (have < 36) return "v2: short IPv6 address block";
    inet_ntop(AF_INET6, a, x->addr, sizeof x->addr);
    x->port = a[32] << 8 | a[33];
    x->has_peer = 1;
  } else if (fam != 0x00 && fam != 0x31 && fam != 0x12 && fam != 0x22 && fam != 0x32) {
    return "v2: bad address family";
  }
  return NULL; /* UNSPEC, unix, UDP: the socket's peer stands */
}

static void reject(lr_conn_t *c, const char *why) {
  struct sockaddr_storage ss;
  int sl = sizeof ss;
  char peer[INET6_ADDRSTRLEN] = "unix:";
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
    if (ss.ss_family == AF_INET) uv_ip4_name((struct sockaddr_in *)&ss, peer, sizeof peer);
    if (ss.ss_family == AF_INET6) uv_ip6_name((struct sockaddr_in6 *)&ss, peer, sizeof peer);
  }
  lr_log(LR_LOG_WARN, "PROXY protocol: %s (from %s): connection closed", why, peer);
  lr_conn_close(c);
}

/* the header is done: keep only the client's address */
static void finish(lr_conn_t *c) {
  c->flags &= ~LR_CF_PROXY_HDR;
  lr_proxy_t *small = realloc(c->proxy, sizeof *c->proxy);
  if (small) c->proxy = small;
}

ssize_t lr__proxy_read(lr_conn_t *c, const char *p, size_t n) {
  lr_proxy_t *x = c->proxy;
  size_t used = 0;
  while (used < n) {
    if (x->skip && x->len == x->want) { /* v2 TLVs we don't use, after the addresses */
      size_t k = n - used < x->skip ? n - used : x->skip;
      x->skip -= k;
      used += k;
      if (x->skip == 0) finish(c);
      return (ssize_t)used;
    }
    unsigned char ch = (unsigned char)p[used++];
    x->buf[x->len++] = ch;
    const char *why = NULL;
    if (x->buf[0] == 'P') {
      if (x->len <= 6 && memcmp(x->buf, "PROXY ", x->len) != 0) why = "bad v1 signature";
      else if (ch == '\n') {
        why = parse_v1(x);
        if (why == NULL) {
          finish(c);
          return (ssize_t)used;
        }
      } else if (x->len >= V1_MAX) why = "v1 header longer than 107 bytes";
    } else if (x->buf[0] == v2_sig[0]) {
      if (x->len <= sizeof v2_sig && x->buf[x->len - 1] != v2_sig[x->len - 1]) why = "bad v2 signature";
      else if (x->len == V2_HEAD) why = v2_sizes(x);
      if (why == NULL && x->len >= V2_HEAD && x->len == x->want) {
        why = parse_v2(x);
        if (why == NULL && x->skip == 0) {
          finish(c); /* x is gone */
          return (ssize_t)used;
        }
      }
    } else {
      why = "no PROXY header";
    }
    if (why) {
      reject(c, why);
      return -1;
    }
  }
  return (ssize_t)used;
}
