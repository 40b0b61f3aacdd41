/* unix:PATH listeners. The socket file gets --unix-mode (default 0666, as
 * nginx: who may connect is decided by the directory's permissions). A
 * socket file left by a server that died is replaced; one a live server
 * answers on, or a file that is not a socket, is an error. Every worker
 * listens on a duplicate of the one socket (SO_REUSEPORT does not spread
 * unix connections). The file is removed at exit. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "lariat.h"

/* a socket file nobody answers on (ECONNREFUSED) is stale */
static int check_stale(const struct sockaddr_un *sun, const char *path, char *err, size_t errlen) {
  struct stat st;
  if (lstat(path, &st) != 0) return 0;
  if (!S_ISSOCK(st.st_mode)) {
    snprintf(err, errlen, "listen unix:%s: exists and is not a socket", path);
    return -1;
  }
  int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (probe < 0) {
    snprintf(err, errlen, "listen unix:%s: %s", path, strerror(errno));
    return -1;
  }
  int r = connect(probe, (const struct sockaddr *)sun, sizeof *sun);
  int e = errno;
  close(probe);
  if (r == 0) {
    snprintf(err, errlen, "listen unix:%s: address already in use (a server answers there)", path);
    return -1;
  }
  if (e != ECONNREFUSED) {
    snprintf(err, errlen, "listen unix:%s: %s", path, strerror(e));
    return -1;
  }
  unlink(path);
  return 0;
}

int lr__unix_bind(lr_listen_addr_t *a, unsigned mode, int workers, int *fds, int i, char *err, size_t errlen) {
  struct sockaddr_un sun;
  memset(&sun, 0, sizeof sun);
  sun.sun_family = AF_UNIX;
  if (strlen(a->path) >= sizeof sun.sun_path) {
    snprintf(err, errlen, "listen unix:%s: path too long", a->path);
    return -1;
  }
  memcpy(sun.sun_path, a->path, strlen(a->path));
  if (check_stale(&sun, a->path, err, errlen)) return -1;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof sun)) {
    snprintf(err, errlen, "listen unix:%s: %s", a->path, strerror(errno));
    if (fd >= 0) close(fd);
    return -1;
  }
  a->created = 1;
  if (chmod(a->path, mode) || listen(fd, 4096)) {
    snprintf(err, errlen, "listen unix:%s: %s", a->path, strerror(errno));
    close(fd);
    return -1;
  }
  fds[i] = fd;
  for (int k = 1; k < workers; k++) {
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (d < 0) {
      snprintf(err, errlen, "listen unix:%s: %s", a->path, strerror(errno));
      return -1;
    }
    fds[k * LR_MAX_LISTENERS + i] = d;
  }
  return 0;
}

void lr_listeners_unlink(lr_config_t *cfg) {
  for (int i = 0; i < cfg->n_listen; i++)
    if (cfg->listen[i].created) {
      unlink(cfg->listen[i].path);
      cfg->listen[i].created = 0;
    }
}
