/* Logging to stderr: one line per event, with time, level and worker thread. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lariat.h"

int lr_log_level = LR_LOG_INFO;
int lr_log_json;

static const char *level_names[] = {"debug", "info", "warn", "error"};

/* {"ts":"…","level":"…","msg":"…"}: for log collectors; msg is JSON-escaped */
static void log_json(int level, const struct tm *tm, long ms, const char *msg, size_t len) {
  char buf[8192];
  size_t n = (size_t)snprintf(buf, sizeof buf, "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\",\"msg\":\"",
                              tm->tm_year + 1900, tm->tm_mon + 1, tm->tm_mday, tm->tm_hour, tm->tm_min, tm->tm_sec, ms,
                              level_names[level]);
  for (size_t i = 0; i < len && n < sizeof buf - 8; i++) {
    unsigned char c = (unsigned char)msg[i];
    if (c == '"' || c == '\\') {
      buf[n++] = '\\';
      buf[n++] = (char)c;
    } else if (c == '\n') {
      buf[n++] = '\\';
      buf[n++] = 'n';
    } else if (c == '\t') {
      buf[n++] = '\\';
      buf[n++] = 't';
    } else if (c < 0x20) {
      n += (size_t)snprintf(buf + n, sizeof buf - n, "\\u%04x", c);
    } else {
      buf[n++] = (char)c;
    }
  }
  memcpy(buf + n, "\"}\n", 3);
  ssize_t r = write(STDERR_FILENO, buf, n + 3);
  (void)r;
}

void lr_log_raw(int level, const char *msg, size_t len) {
  if (level < lr_log_level) return;
  char head[64];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  if (lr_log_json) {
    log_json(level, &tm, ts.tv_nsec / 1000000, msg, len);
    return;
  }
  int n = snprintf(head, sizeof head, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s ", tm.tm_year + 1900, tm.tm_mon + 1,
                   tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, level_names[level]);
  struct iovec iov[3] = {{head, (size_t)n}, {(void *)msg, len}, {"\n", 1}};
  /* one writev so lines of different threads never interleave */
  ssize_t r = writev(STDERR_FILENO, iov, 3);
  (void)r;
}

void lr_log(int level, const char *fmt, ...) {
  if (level < lr_log_level) return;
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n >= sizeof msg) n = sizeof msg - 1;
  lr_log_raw(level, msg, (size_t)n);
}
