/* TLS (OpenSSL 3) as a filter between the socket and the protocol.
 *
 * Ciphertext read from the socket goes into a memory BIO; what SSL_read
 * makes of it is handed to c->proto->on_read as if it came off the wire.
 * Protocols queue plaintext in c->out as usual; at flush time conn.c seals
 * it (lr__tls_seal) and sends the records that come out of the write BIO
 * (a sink of our own: see below). Neither HTTP/1.1 nor HTTP/2 knows: only ALPN picks which of them
 * runs, and req.scheme says "https".
 *
 * One SSL_CTX per --cert/--key pair, shared by every worker (OpenSSL 3
 * contexts are thread-safe); SNI switches to the context whose certificate
 * names the requested host, the first pair is the default. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "lariat.h"

typedef struct lr_tls_s {
  SSL *ssl;
  BIO *rbio, *wbio; /* owned by ssl */
  int ready;        /* handshake complete */
  int client;       /* an outbound connection (lr__tls_connect) */
  char *origin;     /* client: key of the session kept for resumption */
} lr_tls_t;

static SSL_CTX *ctxs[LR_MAX_CERTS];
static int n_ctxs;

/* ---- the write BIO: records appended to a plain buffer ----
 * A memory BIO zero-fills the room for every write before copying into it
 * (BUF_MEM_grow_clean): for a large body that was a third of TLS's
 * user-space instructions (memset + copy in + copy out, where nginx copies
 * once). This sink only appends; lr__tls_take copies the records out. */
typedef struct sink_s {
  lr_buf_t b;
  size_t off; /* taken so far */
} sink_t;

static BIO_METHOD *sink_method;
static uv_once_t sink_once = UV_ONCE_INIT;

static int sink_write(BIO *bio, const char *p, int n) {
  sink_t *s = BIO_get_data(bio);
  if (n <= 0) return 0;
  if (s->off == s->b.len) s->off = s->b.len = 0; /* all taken: start at the front */
  return lr_buf_append(&s->b, p, (size_t)n) ? -1 : n;
}

static long sink_ctrl(BIO *bio, int cmd, long num, void *ptr) {
  (void)num;
  (void)ptr;
  sink_t *s = BIO_get_data(bio);
  switch (cmd) {
    case BIO_CTRL_PENDING:
    case BIO_CTRL_WPENDING:
      return (long)(s->b.len - s->off);
    case BIO_CTRL_FLUSH:
      return 1;
    default:
      return 0;
  }
}

static int sink_create(BIO *bio) {
  sink_t *s = calloc(1, sizeof *s);
  if (s == NULL) return 0;
  BIO_set_data(bio, s);
  BIO_set_init(bio, 1);
  return 1;
}

static int sink_destroy(BIO *bio) {
  sink_t *s = BIO_get_data(bio);
  if (s) free(s->b.base);
  free(s);
  BIO_set_data(bio, NULL);
  return 1;
}

static void sink_init(void) {
  BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "lariat records");
  if (m && BIO_meth_set_write(m, sink_write) && BIO_meth_set_ctrl(m, sink_ctrl) &&
      BIO_meth_set_create(m, sink_create) && BIO_meth_set_destroy(m, sink_destroy))
    sink_method = m;
  else
    BIO_meth_free(m);
}

static BIO *sink_new(void) {
  uv_once(&sink_once, sink_init);
  return sink_method ? BIO_new(sink_method) : NULL;
}

/* ALPN (RFC 7301): our preference wins, h2 first */
static const unsigned char alpn_protos[] = "\x02h2\x08http/1.1";

static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                   unsigned int inlen, void *arg) {
  (void)ssl;
  (void)arg;
  unsigned char *o;
  if (SSL_select_next_proto(&o, outlen, alpn_protos, sizeof alpn_protos - 1, in, inlen) != OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_NOACK; /* no common protocol: carry on without ALPN (HTTP/1.1) */
  *out = o;
  return SSL_TLSEXT_ERR_OK;
}

static int on_servername(SSL *ssl, int *ad, void *arg) {
  (void)ad;
  (void)arg;
  const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (name == NULL || n_ctxs < 2) return SSL_TLSEXT_ERR_OK;
  for (int i = 0; i < n_ctxs; i++) {
    X509 *x = SSL_CTX_get0_certificate(ctxs[i]);
    if (x && X509_check_host(x, name, 0, 0, NULL) == 1) {
      if (i) SSL_set_SSL_CTX(ssl, ctxs[i]);
      break;
    }
  }
  return SSL_TLSEXT_ERR_OK;
}

static const char *ssl_error(void) {
  static __thread char buf[256];
  unsigned long e = ERR_get_error();
  if (e == 0) return "unknown error";
  ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

int lr_tls_global_init(const lr_config_t *cfg, char *err, size_t errlen) {
  int want = 0;
  for (int i = 0; i < cfg->n_listen; i++) want |= cfg->listen[i].tls;
  if (!want) return 0;
  if (cfg->n_certs == 0) {
    snprintf(err, errlen, "--tls needs --cert FILE and --key FILE");
    return -1;
  }
  for (int i = 0; i < cfg->n_certs; i++) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
      snprintf(err, errlen, "TLS: %s", ssl_error());
      return -1;
    }
    ctxs[n_ctxs++] = ctx;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* TLS 1.2: forward secrecy and AEAD only, which is also what RFC 9113 §9.2.2 asks of h2 */
    SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20");
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    /* resumption: tickets (on by default) and a server-side session cache */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"lariat", 6);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, NULL);
    SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert[i]) != 1) {
      snprintf(err, errlen, "--cert %s: %s", cfg->tls_cert[i], ssl_error());
      return -1;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key[i], SSL_FILETYPE_PEM) != 1) {
      snprintf(err, errlen, "--key %s: %s", cfg->tls_key[i], ssl_error());
      return -1;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
      snprintf(err, errlen, "--key %s does not match --cert %s", cfg->tls_key[i], cfg->tls_cert[i]);
      return -1;
    }
  }
  return 0;
}

/* ---- client mode: contexts per (verify, ca) and sessions per origin, shared by
 * every worker behind one mutex (taken once per new outbound connection) ---- */

#define MAX_CLIENT_CTXS 16
#define MAX_SESSIONS 256

static struct client_ctx {
  SSL_CTX *ctx;
  int verify;
  char *ca;
} client_ctxs[MAX_CLIENT_CTXS];
static int n_client_ctxs;

static struct saved_session {
  char *origin;
  SSL_SESSION *sess;
} sessions[MAX_SESSIONS];
static unsigned n_sessions, next_evict;
static uv_mutex_t client_mu;
static uv_once_t client_once = UV_ONCE_INIT;

static void client_mu_init(void) { uv_mutex_init(&client_mu); }

/* a ticket arrived (TLS 1.3: after the handshake): keep it for the next connection to that origin */
static int on_new_session(SSL *ssl, SSL_SESSION *sess) {
  lr_conn_t *c = SSL_get_app_data(ssl);
  lr_tls_t *t = c ? c->tls : NULL;
  if (t == NULL || t->origin == NULL) return 0;
  uv_mutex_lock(&client_mu);
  struct saved_session *slot = NULL;
  for (unsigned i = 0; i < n_sessions; i++)
    if (strcmp(sessions[i].origin, t->origin) == 0) slot = &sessions[i];
  if (slot == NULL) {
    if (n_sessions < MAX_SESSIONS) {
      slot = &sessions[n_sessions++];
    } else {
      slot = &sessions[next_evict++ % MAX_SESSIONS];
      free(slot->origin);
    }
    slot->origin = strdup(t->origin);
  } else {
    SSL_SESSION_free(slot->sess);
  }
  slot->sess = sess;
  uv_mutex_unlock(&client_mu);
  return 1; /* we keep the reference */
}

static SSL_CTX *client_ctx(int verify, const char *ca, char *err, size_t errlen) {
  SSL_CTX *ctx = NULL;
  for (int i = 0; i < n_client_ctxs; i++)
    if (client_ctxs[i].verify == verify && ((ca == NULL && client_ctxs[i].ca == NULL) ||
                                            (ca && client_ctxs[i].ca && strcmp(ca, client_ctxs[i].ca) == 0)))
      return client_ctxs[i].ctx;
  if (n_client_ctxs == MAX_CLIENT_CTXS) {
    snprintf(err, errlen, "too many distinct ca= files");
    return NULL;
  }
  ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == NULL) {
    snprintf(err, errlen, "tls: %s", ssl_error());
    return NULL;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_verify(ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
  int ok = ca ? SSL_CTX_load_verify_locations(ctx, ca, NULL) : SSL_CTX_set_default_verify_paths(ctx);
  if (ok != 1) {
    snprintf(err, errlen, "ca %s: %s", ca ? ca : "(system)", ssl_error());
    SSL_CTX_free(ctx);
    return NULL;
  }
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(ctx, on_new_session);
  client_ctxs[n_client_ctxs].ctx = ctx;
  client_ctxs[n_client_ctxs].verify = verify;
  client_ctxs[n_client_ctxs].ca = ca ? strdup(ca) : NULL;
  n_client_ctxs++;
  return ctx;
}

void lr_tls_global_free(void) {
  for (int i = 0; i < n_ctxs; i++) SSL_CTX_free(ctxs[i]);
  n_ctxs = 0;
  for (int i = 0; i < n_client_ctxs; i++) {
    SSL_CTX_free(client_ctxs[i].ctx);
    free(client_ctxs[i].ca);
  }
  n_client_ctxs = 0;
  for (unsigned i = 0; i < n_sessions; i++) {
    SSL_SESSION_free(sessions[i].sess);
    free(sessions[i].origin);
  }
  n_sessions = 0;
}

static int is_ip_literal(const char *h) {
  unsigned char buf[16];
  return uv_inet_pton(AF_INET, h, buf) == 0 || uv_inet_pton(AF_INET6, h, buf) == 0;
}

static lr_tls_t *tls_new(SSL_CTX *ctx) {
  lr_tls_t *t = calloc(1, sizeof *t);
  if (t == NULL) return NULL;
  t->ssl = SSL_new(ctx);
  t->rbio = BIO_new(BIO_s_mem());
  t->wbio = sink_new();
  if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL) {
    if (t->ssl) SSL_free(t->ssl);
    BIO_free(t->rbio);
    BIO_free(t->wbio);
    free(t);
    return NULL;
  }
  /* an empty read BIO says "retry", not "EOF" */
  BIO_set_mem_eof_return(t->rbio, -1);
  SSL_set_bio(t->ssl, t->rbio, t->wbio);
  return t;
}

/* A memory BIO keeps the largest buffer it ever had (~2 KiB after a
 * handshake), and so does the sink: an idle connection (nothing in either)
 * gets a fresh read BIO and an empty sink, which allocate on their next use. */
void lr__tls_idle(lr_conn_t *c) {
  lr_tls_t *t = c->tls;
  if (t == NULL || BIO_ctrl_pending(t->rbio) || BIO_ctrl_pending(t->wbio) || SSL_pending(t->ssl)) return;
  sink_t *s = BIO_get_data(t->wbio);
  free(s->b.base);
  *s = (sink_t){0};
  BIO *r = BIO_new(BIO_s_mem());
  if (r == NULL) return;
  BIO_set_mem_eof_return(r, -1);
  SSL_set0_rbio(t->ssl, r); /* frees the old one */
  t->rbio = r;
}

int lr__tls_connect(lr_conn_t *c, const lr_client_opts_t *o, const char *origin, char *err, size_t errlen) {
  uv_once(&client_once, client_mu_init);
  uv_mutex_lock(&client_mu);
  SSL_CTX *ctx = client_ctx(o->verify, o->ca, err, errlen);
  uv_mutex_unlock(&client_mu);
  if (ctx == NULL) return -1;
  lr_tls_t *t = tls_new(ctx);
  if (t == NULL) {
    snprintf(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  t->client = 1;
  t->origin = strdup(origin);
  c->tls = t;
  SSL_set_app_data(t->ssl, c);
  const char *name = o->sni ? o->sni : o->host;
  int literal = is_ip_literal(o->host);
  /* SNI carries names only (RFC 6066 §3) */
  if (!(o->sni == NULL && literal)) SSL_set_tlsext_host_name(t->ssl, name);
  if (o->verify) {
    /* the name checked is the one the caller connects to; an IP literal matches an IP SAN */
    X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
    X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    int ok = literal ? X509_VERIFY_PARAM_set1_ip_asc(vp, o->host) : X509_VERIFY_PARAM_set1_host(vp, o->host, 0);
    if (ok != 1) {
      snprintf(err, errlen, "tls: bad host name");
      return -1;
    }
  }
  if (o->alpn) SSL_set_alpn_protos(t->ssl, (const unsigned char *)o->alpn, (unsigned)strlen(o->alpn));
  uv_mutex_lock(&client_mu);
  for (unsigned i = 0; i < n_sessions; i++)
    if (strcmp(sessions[i].origin, origin) == 0) {
      if (SSL_SESSION_is_resumable(sessions[i].sess)) SSL_set_session(t->ssl, sessions[i].sess);
      break;
    }
  uv_mutex_unlock(&client_mu);
  SSL_set_connect_state(t->ssl);
  int r = SSL_do_handshake(t->ssl); /* the ClientHello, into the write BIO */
  (void)r;
  ERR_clear_error();
  lr_conn_defer(c);
  return 0;
}

/* why a client handshake failed, for the caller: the verification result if there is one */
static void client_failure(lr_tls_t *t, char *buf, size_t len) {
  long v = SSL_get_verify_result(t->ssl);
  if (v != X509_V_OK)
    snprintf(buf, len, "certificate verify failed: %s", X509_verify_cert_error_string(v));
  else
    snprintf(buf, len, "tls handshake failed: %.120s", ssl_error());
  ERR_clear_error();
}

int lr__tls_accept(lr_conn_t *c) {
  if (n_ctxs == 0) return -1;
  lr_tls_t *t = tls_new(ctxs[0]);
  if (t == NULL) return UV_ENOMEM;
  SSL_set_accept_state(t->ssl);
  c->tls = t;
  return 0;
}

void lr__tls_free(lr_conn_t *c) {
  lr_tls_t *t = c->tls;
  if (t == NULL) return;
  SSL_free(t->ssl);
  free(t->origin);
  free(t);
  c->tls = NULL;
}

int lr__tls_ready(const lr_conn_t *c) { return ((lr_tls_t *)c->tls)->ready; }

size_t lr__tls_pending(const lr_conn_t *c) { return BIO_ctrl_pending(((lr_tls_t *)c->tls)->wbio); }

size_t lr__tls_take(lr_conn_t *c, char *out, size_t max) {
  sink_t *s = BIO_get_data(((lr_tls_t *)c->tls)->wbio);
  size_t n = s->b.len - s->off < max ? s->b.len - s->off : max;
  if (n == 0) return 0;
  memcpy(out, s->b.base + s->off, n);
  s->off += n;
  if (s->off == s->b.len) s->off = s->b.len = 0;
  return n;
}

/* small pieces (frame headers, short bodies) are gathered so that a batch
 * becomes few full records, not one record per piece */
static __thread char stage[16384];
static __thread size_t staged;

static void seal_stage(lr_tls_t *t) {
  if (staged) SSL_write(t->ssl, stage, (int)staged);
  staged = 0;
}

void lr__tls_seal(lr_conn_t *c, const char *p, size_t n) {
  lr_tls_t *t = c->tls;
  if (p == NULL) {
    seal_stage(t);
    return;
  }
  if (n >= 4096) {
    seal_stage(t);
    while (n) {
      int k = n > (1u << 30) ? 1 << 30 : (int)n;
      if (SSL_write(t->ssl, p, k) <= 0) return;
      p += k;
      n -= (size_t)k;
    }
    return;
  }
  if (staged + n > sizeof stage) seal_stage(t);
  memcpy(stage + staged, p, n);
  staged += n;
}

static void handshake_failed(lr_conn_t *c, const char *why) {
  LR_DEBUG("TLS handshake failed: %s", why);
  ERR_clear_error();
  /* an alert may be waiting in the write BIO: send it, then close */
  lr_conn_read_stop(c);
  lr_conn_close_after_write(c);
}

void lr__tls_on_read(lr_conn_t *c, const char *data, size_t len) {
  lr_tls_t *t = c->tls;
  if (c->flags & LR_CF_CLOSE_AFTER_WRITE && !t->ready) return;
  if (BIO_write(t->rbio, data, (int)len) != (int)len) {
    lr_conn_close(c);
    return;
  }
  if (!t->ready) {
    int r = SSL_do_handshake(t->ssl);
    if (BIO_ctrl_pending(t->wbio)) lr_conn_defer(c);
    if (r != 1) {
      int e = SSL_get_error(t->ssl, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
      if (t->client) {
        char why[160];
        client_failure(t, why, sizeof why);
        lr__client_tls_done(c, why, 0);
      } else {
        handshake_failed(c, ssl_error());
      }
      return;
    }
    t->ready = 1;
    const unsigned char *proto;
    unsigned plen;
    SSL_get0_alpn_selected(t->ssl, &proto, &plen);
    if (t->client) {
      lr__client_tls_done(c, NULL, plen == 2 && memcmp(proto, "h2", 2) == 0);
      if (c->flags & LR_CF_CLOSING) return;
    } else if (plen == 2 && memcmp(proto, "h2", 2) == 0) {
      lr_http2_start(c, NULL, 0);
      if (c->flags & LR_CF_CLOSING) return;
    }
  }
  /* the ciphertext is in the BIO now: the read buffer can take the plaintext */
  char *buf = c->worker->read_buf;
  size_t cap = c->worker->read_buf_size;
  for (;;) {
    int n = SSL_read(t->ssl, buf, (int)cap);
    if (n > 0) {
      c->proto->on_read(c, buf, (size_t)n);
      if (c->flags & LR_CF_CLOSING) return;
      continue;
    }
    int e = SSL_get_error(t->ssl, n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
    if (e == SSL_ERROR_ZERO_RETURN) { /* close_notify */
      if (c->proto->on_eof)
        c->proto->on_eof(c);
      else
        lr_conn_close(c);
      return;
    }
    LR_DEBUG("TLS read failed: %s", ssl_error());
    lr_conn_close(c);
    return;
  }
  if (BIO_ctrl_pending(t->wbio)) lr_conn_defer(c); /* tickets, key updates */
}
