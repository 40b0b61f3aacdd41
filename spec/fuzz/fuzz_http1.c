/* HTTP/1.1 requests into a real connection, access log on: request heads,
 * bodies (length, chunked, trailers), pipelining, errors before and after the
 * head, Upgrade: h2c and websocket. Input: first byte = piece size, then bytes. */
#include "conn_driver.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lr_fuzz_conn_run(NULL, 0, data, size);
  return 0;
}
