/* WebSocket frames (RFC 6455) with permessage-deflate (RFC 7692) negotiated:
 * the upgrade is given, the input is the client's frames (masked, fragmented,
 * compressed or not, control frames, close). The app echoes every message,
 * compressed, so both inflate and deflate run. Input: first byte = piece size. */
#include "conn_driver.h"

static const char upgrade[] =
    "GET /ws HTTP/1.1\r\n"
    "host: fuzz\r\n"
    "upgrade: websocket\r\n"
    "connection: upgrade\r\n"
    "sec-websocket-version: 13\r\n"
    "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "sec-websocket-extensions: permessage-deflate; client_max_window_bits\r\n"
    "\r\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lr_fuzz_conn_run(upgrade, sizeof upgrade - 1, data, size);
  return 0;
}
