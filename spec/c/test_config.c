/* The command line: options before or after the app, values, errors. */
#include <string.h>

#include "check.h"
#include "lariat.h"

static int parse(lr_config_t *cfg, char *err, int argc, char **argv) {
  lr_config_defaults(cfg);
  return lr_config_parse(cfg, argc, argv, err, 256);
}

int main(void) {
  lr_config_t cfg;
  char err[256];

  char *a1[] = {"lariat", "app.lua", "--listen", "127.0.0.1:0", "-l", "[::1]:9000", "-w", "3"};
  CHECK(parse(&cfg, err, 8, a1) == 0);
  CHECK(strcmp(cfg.app_path, "app.lua") == 0);
  CHECK(cfg.n_listen == 2);
  CHECK(cfg.listen[0].port == 0 && strcmp(cfg.listen[0].host, "127.0.0.1") == 0);
  CHECK(cfg.listen[1].port == 9000 && strcmp(cfg.listen[1].host, "::1") == 0);
  CHECK(cfg.workers == 3);

  char *a2[] = {"lariat", "--header-timeout=0.5", "--max-body", "1000", "x.lua"};
  CHECK(parse(&cfg, err, 5, a2) == 0);
  CHECK(cfg.header_timeout_ms == 500);
  CHECK(cfg.max_body == 1000);
  CHECK(cfg.n_listen == 1 && cfg.listen[0].port == 8080); /* the default listener */

  char *a3[] = {"lariat", "--bogus", "x.lua"};
  CHECK(parse(&cfg, err, 3, a3) == -1);
  CHECK(strstr(err, "--bogus") != NULL);

  char *a4[] = {"lariat", "-l", "nocolon", "x.lua"};
  CHECK(parse(&cfg, err, 4, a4) == -1);
  CHECK(strstr(err, "nocolon") != NULL);

  char *a5[] = {"lariat", "--workers"};
  CHECK(parse(&cfg, err, 2, a5) == -1);
  CHECK(strstr(err, "needs a value") != NULL);

  char *a6[] = {"lariat", "-w", "2"};
  CHECK(parse(&cfg, err, 3, a6) == -1);
  CHECK(strstr(err, "no app file") != NULL);

  char *a7[] = {"lariat", "--idle-timeout", "-1", "a.lua"};
  CHECK(parse(&cfg, err, 4, a7) == -1);
  return CHECK_DONE();
}
