/* The command line: `lariat [options] APP.lua`, options before or after the app. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lariat.h"

void lr_config_defaults(lr_config_t *cfg) {
  memset(cfg, 0, sizeof *cfg);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  cfg->workers = n > 0 ? (int)n : 1;
  cfg->max_body = 8 * 1024 * 1024;
  cfg->max_keepalive = 1000;
  cfg->max_outbound = 1024;
  cfg->max_request_line = 8192;
  cfg->max_header_bytes = 64 * 1024;
  cfg->max_headers = 100;
  cfg->header_timeout_ms = 10000;
  cfg->idle_timeout_ms = 60000;
  cfg->body_timeout_ms = 10000;
  cfg->drain_timeout_ms = 30000;
  /* nginx's defaults: send_timeout 60 s, lingering_time 30 s, lingering_timeout 5 s;
   * the body deadline is Apache mod_reqtimeout's idea (body=20,minrate=500), longer */
  cfg->send_timeout_ms = 60000;
  /* nginx's proxy_read_timeout (60 s): what a client behind a proxy waits for
   * a response head anyway; long-poll routes say so per route */
  cfg->handler_timeout_ms = 60000;
  cfg->body_deadline_ms = 60000;
  cfg->body_min_rate = 500;
  cfg->lingering_time_ms = 30000;
  cfg->lingering_timeout_ms = 5000;
  cfg->output_buffer = 64 * 1024;
  cfg->unix_mode = 0666; /* nginx's: who may connect is the directory's business */
  cfg->cpu_budget_ms = 1000;
  cfg->lua_memory = (size_t)1024 * 1024 * 1024;
  cfg->log_level = LR_LOG_INFO;
  cfg->h2_max_streams = 100;
  cfg->h2_window = 256 * 1024;
  cfg->h2_max_frame = 16384;
}

static const char usage[] =
    "usage: lariat [options] APP.lua\n"
    "  -l, --listen HOST:PORT     plain listener (HTTP/1.1 and h2c); repeatable; default 127.0.0.1:8080\n"
    "      --listen unix:PATH     the same on a unix socket (a stale socket file is replaced)\n"
    "      --tls HOST:PORT        TLS listener (ALPN h2, http/1.1); repeatable; needs --cert and --key\n"
    "      --unix-mode MODE       permissions of unix socket files (default 0666)\n"
    "      --proxy-protocol       every listener expects a PROXY v1/v2 header first (behind HAProxy)\n"
    "      --metrics HOST:PORT    Prometheus metrics at GET /metrics on a listener of their own\n"
    "      --cert FILE, --key FILE  PEM certificate chain and key; repeat the pair for more\n"
    "                             certificates (chosen by SNI; the first is the default)\n"
    "      --h2-max-streams N     concurrent HTTP/2 streams per connection (default 100)\n"
    "      --h2-window BYTES      HTTP/2 stream window: request body buffered per stream (default 262144)\n"
    "      --h2-max-frame BYTES   largest HTTP/2 frame we accept (default 16384)\n"
    "  -w, --workers N            worker threads (default: number of CPUs)\n"
    "      --access-log FILE|-    one line per request (combined log format)\n"
    "      --max-body BYTES       largest request body (default 8388608)\n"
    "      --max-keepalive N      requests per connection (default 1000)\n"
    "      --header-timeout SEC   time to receive a request head (default 10)\n"
    "      --idle-timeout SEC     keep-alive idle time (default 60)\n"
    "      --body-timeout SEC     time a body read waits for data (default 10)\n"
    "      --drain-timeout SEC    time to finish requests on stop (default 30)\n"
    "      --send-timeout SEC     close a connection whose peer takes none of our output for SEC (default 60)\n"
    "      --handler-timeout SEC  a handler must start its response within SEC of the request head, else\n"
    "                             it is cancelled and the client gets 504; 0: no limit (default 60)\n"
    "      --body-deadline SEC    a request body must arrive within SEC, plus 1 s per --body-min-rate bytes\n"
    "                             received (default 60) -> 408, or close once the response is out\n"
    "      --body-min-rate BYTES  see --body-deadline; 0: a fixed deadline (default 500)\n"
    "      --lingering-time SEC   after an early answer (413, 400...), read and discard the request's\n"
    "                             rest for at most SEC before closing, so the client sees the answer (default 30)\n"
    "      --lingering-timeout SEC  ... and at most SEC between two reads (default 5)\n"
    "      --output-buffer BYTES  output queued per connection before writers wait (default 65536)\n"
    "      --log-level LEVEL      debug, info, warn or error (default info)\n"
    "      --log-format FORMAT    text or json (one object per line) (default text)\n"
    "      --max-connections N    connections per worker; more wait in the backlog (default: no cap)\n"
    "      --max-outbound N       outbound connections per worker, idle pooled ones included;\n"
    "                             at the cap an idle one is closed, else connect fails (default 1024)\n"
    "      --redis URL            keep lariat.shared dictionaries and lariat.channel messages in this\n"
    "                             Redis (redis://[[user]:password@]host[:port][/db]): every instance\n"
    "                             using it shares them\n"
    "      --pid-file FILE        write the process id there while running\n"
    "      --user NAME            drop to this user after binding the listeners\n"
    "      --watch                reload the app when files in its directory change\n"
    "      --cpu-budget SEC       most CPU time a handler may use without yielding (default 1) -> 503\n"
    "      --lua-memory MIB       Lua memory cap per worker (default 1024) -> 503\n"
    "  -h, --help                 this text\n"
    "  -v, --version              print the version\n"
    "signals: HUP reloads the app without dropping a connection, TERM/INT stop gracefully\n";

static int parse_listen(lr_listen_addr_t *a, const char *v) {
  if (strncmp(v, "unix:", 5) == 0) {
    if (v[5] == '\0' || strlen(v + 5) >= sizeof a->path) return -1;
    snprintf(a->path, sizeof a->path, "%s", v + 5);
    snprintf(a->host, sizeof a->host, "unix");
    return 0;
  }
  const char *colon = strrchr(v, ':');
  if (colon == NULL) return -1;
  const char *host = v;
  size_t hl = (size_t)(colon - v);
  if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
    host++;
    hl -= 2;
  }
  if (hl == 0 || hl >= sizeof a->host) return -1;
  char *end;
  errno = 0;
  long port = strtol(colon + 1, &end, 10);
  if (errno || *end || end == colon + 1 || port < 0 || port > 65535) return -1;
  memcpy(a->host, host, hl);
  a->host[hl] = '\0';
  a->port = (int)port;
  return 0;
}

static int parse_u64(const char *v, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long n = strtoull(v, &end, 10);
  if (errno || *end || end == v || v[0] == '-') return -1;
  *out = n;
  return 0;
}

static int parse_seconds(const char *v, uint64_t *ms) {
  char *end;
  errno = 0;
  double d = strtod(v, &end);
  if (errno || *end || end == v || d < 0 || d > 1e7) return -1;
  *ms = (uint64_t)(d * 1000 + 0.5);
  return 0;
}

int lr_config_parse(lr_config_t *cfg, int argc, char **argv, char *err, size_t errlen) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *val = NULL;
    char name[64];
    if (a[0] != '-' || a[1] == '\0') {
      if (cfg->app_path) {
        snprintf(err, errlen, "more than one app file given: %s and %s", cfg->app_path, a);
        return -1;
      }
      cfg->app_path = a;
      continue;
    }
    /* --name=value or --name value */
    const char *eqs = strchr(a, '=');
    if (a[1] == '-' && eqs) {
      snprintf(name, sizeof name, "%.*s", (int)(eqs - a), a);
      val = eqs + 1;
    } else {
      snprintf(name, sizeof name, "%s", a);
    }
#define IS(s, l) (strcmp(name, s) == 0 || strcmp(name, l) == 0)
#define NEEDVAL()                                                  \
  do {                                                             \
    if (!val) {                                                    \
      if (i + 1 >= argc) {                                         \
        snprintf(err, errlen, "option %s needs a value", name);    \
        return -1;                                                 \
      }                                                            \
      val = argv[++i];                                             \
    }                                                              \
  } while (0)
    if (IS("--help", "-h")) {
      fputs(usage, stdout);
      return 1;
    } else if (IS("--version", "-v")) {
      printf("lariat %s\n", LR_VERSION);
      return 1;
    } else if (IS("--listen", "-l")) {
      NEEDVAL();
      if (cfg->n_listen >= LR_MAX_LISTENERS || parse_listen(&cfg->listen[cfg->n_listen], val)) {
        snprintf(err, errlen, "bad --listen value '%s' (want HOST:PORT or unix:PATH)", val);
        return -1;
      }
      cfg->n_listen++;
    } else if (IS("--tls", "--tls")) {
      NEEDVAL();
      if (cfg->n_listen >= LR_MAX_LISTENERS || parse_listen(&cfg->listen[cfg->n_listen], val)) {
        snprintf(err, errlen, "bad --tls value '%s' (want HOST:PORT or unix:PATH)", val);
        return -1;
      }
      cfg->listen[cfg->n_listen++].tls = 1;
    } else if (IS("--cert", "--cert") || IS("--key", "--key")) {
      NEEDVAL();
      int is_cert = name[2] == 'c';
      int *n = &cfg->n_certs;
      const char **slot = is_cert ? cfg->tls_cert : cfg->tls_key;
      /* pairs: a --cert and a --key fill the same slot, in either order */
      int k = 0;
      while (k < *n && slot[k] != NULL) k++;
      if (k >= LR_MAX_CERTS) {
        snprintf(err, errlen, "too many certificates (at most %d)", LR_MAX_CERTS);
        return -1;
      }
      slot[k] = val;
      if (k == *n) (*n)++;
    } else if (IS("--h2-max-streams", "--h2-max-streams") || IS("--h2-window", "--h2-window") ||
               IS("--h2-max-frame", "--h2-max-frame")) {
      NEEDVAL();
      uint64_t v;
      unsigned *dst = name[5] == 'm' && name[9] == 's' ? &cfg->h2_max_streams
                      : name[5] == 'w'                 ? &cfg->h2_window
                                                       : &cfg->h2_max_frame;
      uint64_t lo = dst == &cfg->h2_max_frame ? 16384 : 1;
      uint64_t hi = dst == &cfg->h2_max_frame ? 16777215 : dst == &cfg->h2_window ? 2147483647 : 1000000;
      if (parse_u64(val, &v) || v < lo || v > hi) {
        snprintf(err, errlen, "bad %s value '%s' (want %llu..%llu)", name, val, (unsigned long long)lo,
                 (unsigned long long)hi);
        return -1;
      }
      *dst = (unsigned)v;
    } else if (IS("--workers", "-w")) {
      NEEDVAL();
      uint64_t n;
      if (parse_u64(val, &n) || n < 1 || n > 256) {
        snprintf(err, errlen, "bad --workers value '%s' (want 1..256)", val);
        return -1;
      }
      cfg->workers = (int)n;
    } else if (IS("--access-log", "--access-log")) {
      NEEDVAL();
      cfg->access_log = val;
    } else if (IS("--max-body", "--max-body")) {
      NEEDVAL();
      if (parse_u64(val, &cfg->max_body)) {
        snprintf(err, errlen, "bad --max-body value '%s'", val);
        return -1;
      }
    } else if (IS("--max-keepalive", "--max-keepalive")) {
      NEEDVAL();
      uint64_t n;
      if (parse_u64(val, &n) || n < 1 || n > 0xffffffffu) {
        snprintf(err, errlen, "bad --max-keepalive value '%s'", val);
        return -1;
      }
      cfg->max_keepalive = (unsigned)n;
    } else if (IS("--header-timeout", "--header-timeout") || IS("--idle-timeout", "--idle-timeout") || IS("--body-timeout", "--body-timeout") ||
               IS("--drain-timeout", "--drain-timeout")) {
      NEEDVAL();
      uint64_t *dst = name[2] == 'h'   ? &cfg->header_timeout_ms
                      : name[2] == 'i' ? &cfg->idle_timeout_ms
                      : name[2] == 'b' ? &cfg->body_timeout_ms
                                       : &cfg->drain_timeout_ms;
      if (parse_seconds(val, dst) || *dst == 0) {
        snprintf(err, errlen, "bad %s value '%s' (want seconds > 0)", name, val);
        return -1;
      }
    } else if (IS("--send-timeout", "--send-timeout") || IS("--body-deadline", "--body-deadline") ||
               IS("--lingering-time", "--lingering-time") || IS("--lingering-timeout", "--lingering-timeout")) {
      NEEDVAL();
      uint64_t *dst = name[2] == 's'                ? &cfg->send_timeout_ms
                      : name[2] == 'b'              ? &cfg->body_deadline_ms
                      : strlen(name) == strlen("--lingering-time") ? &cfg->lingering_time_ms
                                                    : &cfg->lingering_timeout_ms;
      if (parse_seconds(val, dst) || *dst == 0) {
        snprintf(err, errlen, "bad %s value '%s' (want seconds > 0)", name, val);
        return -1;
      }
    } else if (IS("--handler-timeout", "--handler-timeout")) {
      NEEDVAL();
      if (parse_seconds(val, &cfg->handler_timeout_ms)) {
        snprintf(err, errlen, "bad --handler-timeout value '%s' (want seconds, 0 for none)", val);
        return -1;
      }
    } else if (IS("--body-min-rate", "--body-min-rate")) {
      NEEDVAL();
      if (parse_u64(val, &cfg->body_min_rate) || cfg->body_min_rate > 0xffffffffu) {
        snprintf(err, errlen, "bad --body-min-rate value '%s' (want bytes per second)", val);
        return -1;
      }
    } else if (IS("--output-buffer", "--output-buffer")) {
      NEEDVAL();
      uint64_t n;
      if (parse_u64(val, &n) || n < 1024 || n > (1u << 30)) {
        snprintf(err, errlen, "bad --output-buffer value '%s' (want 1024..1073741824)", val);
        return -1;
      }
      cfg->output_buffer = (size_t)n;
    } else if (IS("--log-format", "--log-format")) {
      NEEDVAL();
      if (strcmp(val, "text") != 0 && strcmp(val, "json") != 0) {
        snprintf(err, errlen, "bad --log-format value '%s' (want text or json)", val);
        return -1;
      }
      cfg->log_json = val[0] == 'j';
    } else if (IS("--max-connections", "--max-connections")) {
      NEEDVAL();
      uint64_t n;
      if (parse_u64(val, &n) || n < 1 || n > 10000000) {
        snprintf(err, errlen, "bad --max-connections value '%s'", val);
        return -1;
      }
      cfg->max_connections = (unsigned)n;
    } else if (IS("--max-outbound", "--max-outbound")) {
      NEEDVAL();
      uint64_t n;
      if (parse_u64(val, &n) || n > 10000000) {
        snprintf(err, errlen, "bad --max-outbound value '%s'", val);
        return -1;
      }
      cfg->max_outbound = (unsigned)n;
    } else if (IS("--redis", "--redis")) {
      NEEDVAL();
      cfg->redis_url = val;
    } else if (IS("--pid-file", "--pid-file")) {
      NEEDVAL();
      cfg->pid_file = val;
    } else if (IS("--user", "--user")) {
      NEEDVAL();
      cfg->user = val;
    } else if (IS("--metrics", "--metrics")) {
      NEEDVAL();
      if (parse_listen(&cfg->metrics, val) || cfg->metrics.path[0]) {
        snprintf(err, errlen, "bad --metrics value '%s' (want HOST:PORT)", val);
        return -1;
      }
      cfg->has_metrics = 1;
    } else if (IS("--proxy-protocol", "--proxy-protocol")) {
      cfg->proxy_protocol = 1;
    } else if (IS("--unix-mode", "--unix-mode")) {
      NEEDVAL();
      char *end;
      unsigned long m = strtoul(val, &end, 8);
      if (*val == '\0' || *end || m > 0777) {
        snprintf(err, errlen, "bad --unix-mode value '%s' (want an octal mode like 0660)", val);
        return -1;
      }
      cfg->unix_mode = (unsigned)m;
    } else if (IS("--watch", "--watch")) {
      cfg->watch = 1;
    } else if (IS("--cpu-budget", "--cpu-budget")) {
      NEEDVAL();
      if (parse_seconds(val, &cfg->cpu_budget_ms) || cfg->cpu_budget_ms == 0) {
        snprintf(err, errlen, "bad --cpu-budget value '%s' (want seconds > 0)", val);
        return -1;
      }
    } else if (IS("--lua-memory", "--lua-memory")) {
      NEEDVAL();
      uint64_t mib;
      if (parse_u64(val, &mib) || mib < 1 || mib > (1u << 20)) {
        snprintf(err, errlen, "bad --lua-memory value '%s' (want MiB, 1 or more)", val);
        return -1;
      }
      cfg->lua_memory = (size_t)mib * 1024 * 1024;
    } else if (IS("--log-level", "--log-level")) {
      NEEDVAL();
      static const char *levels[] = {"debug", "info", "warn", "error"};
      int found = -1;
      for (int k = 0; k < 4; k++)
        if (strcmp(val, levels[k]) == 0) found = k;
      if (found < 0) {
        snprintf(err, errlen, "bad --log-level value '%s' (want debug, info, warn or error)", val);
        return -1;
      }
      cfg->log_level = found;
    } else {
      snprintf(err, errlen, "unknown option '%s' (see --help)", name);
      return -1;
    }
#undef IS
#undef NEEDVAL
  }
  if (cfg->app_path == NULL) {
    snprintf(err, errlen, "no app file given (usage: lariat [options] APP.lua)");
    return -1;
  }
  for (int i = 0; i < cfg->n_certs; i++)
    if (cfg->tls_cert[i] == NULL || cfg->tls_key[i] == NULL) {
      snprintf(err, errlen, "every --cert needs its --key");
      return -1;
    }
  int tls = 0;
  for (int i = 0; i < cfg->n_listen; i++) tls |= cfg->listen[i].tls;
  if (tls && cfg->n_certs == 0) {
    snprintf(err, errlen, "--tls needs --cert FILE and --key FILE");
    return -1;
  }
  if (cfg->n_listen == 0) {
    parse_listen(&cfg->listen[0], "127.0.0.1:8080");
    cfg->n_listen = 1;
  }
  return 0;
}
