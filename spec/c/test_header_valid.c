/* lr_header_valid: the core's last check on every response field (RFC 9110
 * 5.5: CR, LF and NUL in a value are "invalid and dangerous"; a name is a
 * token). Values are looked at a word at a time: every position, in every
 * length, must still be seen. */
#include <string.h>

#include "check.h"
#include "lariat.h"

static int valid(const char *name, const char *value, size_t vlen) {
  lr_header_t h = {{name, strlen(name)}, {value, vlen}};
  return lr_header_valid(&h);
}

int main(void) {
  char v[40];
  CHECK(valid("content-type", "text/plain; charset=utf-8", 25));
  CHECK(valid("x-empty", "", 0));
  CHECK(valid("x-high", "caf\xc3\xa9 \t ok \x7f\x0e\xff", 13)); /* obs-text, HTAB, bytes above 13 */
  for (size_t len = 1; len <= sizeof v; len++)
    for (size_t at = 0; at < len; at++) {
      const char bad[] = {'\r', '\n', '\0'};
      for (size_t b = 0; b < sizeof bad; b++) {
        memset(v, 'a', sizeof v);
        v[at] = bad[b];
        CHECK(!valid("x-evil", v, len));
      }
      memset(v, 'a', sizeof v);
      v[at] = 14; /* just above CR: fine */
      CHECK(valid("x-ok", v, len));
    }
  CHECK(!valid("", "v", 1));
  CHECK(!valid("x evil", "v", 1));
  CHECK(!valid("x:evil", "v", 1));
  CHECK(!valid("x\r\nevil", "v", 1));
  CHECK(!valid("x\x80", "v", 1));
  return CHECK_DONE();
}
