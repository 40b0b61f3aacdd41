/* HTTP/2 server frames: the client preface is given, the input is the frames
 * that follow it (SETTINGS, HEADERS with HPACK, DATA, RST_STREAM, WINDOW_UPDATE,
 * extended CONNECT for WebSockets...). Input: first byte = piece size, then frames. */
#include "conn_driver.h"

static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lr_fuzz_conn_run(preface, sizeof preface - 1, data, size);
  return 0;
}
