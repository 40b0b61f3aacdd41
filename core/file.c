/* Files as response bodies: a per-worker cache of open files, and the
 * out-queue entry that sends one with sendfile(2).
 *
 * The cache (nginx's open_file_cache): a hit younger than the caller's
 * validity costs no open, stat or fstat; an older one is checked with one
 * stat(2) and dropped when device, inode, size or mtime moved (a file
 * replaced or rewritten). Entries are bounded (LRU) and one unused for
 * LR_FILE_INACTIVE_MS is closed on a later lookup, so descriptors don't
 * pile up. A missing file is cached too (nginx's open_file_cache_errors):
 * the .gz sibling lariat.static looks for on every request usually is one. A file stays open while a queued body or a read references it
 * (refs), even once the cache has let go of it.
 *
 * The body entry: lr_stream_send_file on a plain HTTP/1.1 connection queues
 * the response head and then a segment whose ext is lr_seg_file; conn.c
 * hands such a segment to lr__file_sendfile when it reaches the head of the
 * queue. TLS and HTTP/2 can't use sendfile: the binding reads for them
 * (bindings/file.c). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lariat.h"

#define LR_FILE_MAX 1024          /* cached files per worker */
#define LR_FILE_BUCKETS 2048      /* power of two */
#define LR_FILE_INACTIVE_MS 20000 /* unused this long: closed at a later lookup */
#define LR_FILE_INLINE 16384      /* bodies up to this leave with their head, in one write */

const char lr_seg_file[1];

struct lr_files_s {
  lr_file_t *bucket[LR_FILE_BUCKETS];
  lr_link_t lru; /* most recently used first */
  unsigned n;
};

/* a queued body: which file, and where its bytes start (the segment's off
 * counts the bytes already sent) */
typedef struct filebody_s {
  lr_file_t *f;
  uint64_t start;
} filebody_t;

static uint32_t hash(const char *p, size_t n) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 16777619u;
  return h;
}

void lr_file_unref(lr_file_t *f) {
  if (--f->refs) return;
  if (f->fd >= 0) close(f->fd);
  free(f->real);
  free(f);
}

/* the cache lets go of f (a body still sending keeps it open) */
static void drop(lr_files_t *fc, lr_file_t *f) {
  lr_file_t **pp = &fc->bucket[f->hash & (LR_FILE_BUCKETS - 1)];
  while (*pp != f) pp = &(*pp)->next;
  *pp = f->next;
  lr_link_unlink(&f->lru);
  fc->n--;
  lr_file_unref(f);
}

static int same(const lr_file_t *f, const struct stat *st) {
  return f->dev == (uint64_t)st->st_dev && f->ino == (uint64_t)st->st_ino && f->size == (uint64_t)st->st_size &&
         f->mtime_ns == (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

static void fill(lr_file_t *f, const struct stat *st) {
  f->dev = (uint64_t)st->st_dev;
  f->ino = (uint64_t)st->st_ino;
  f->size = (uint64_t)st->st_size;
  f->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

static lr_files_t *files_of(lr_worker_t *w) {
  if (w->files == NULL) {
    w->files = calloc(1, sizeof *w->files);
    if (w->files) lr_list_init(&w->files->lru);
  }
  return w->files;
}

static lr_file_t *find(lr_files_t *fc, const char *path, size_t len, uint32_t h) {
  for (lr_file_t *f = fc->bucket[h & (LR_FILE_BUCKETS - 1)]; f; f = f->next)
    if (f->hash == h && f->path_len == len && memcmp(f->path, path, len) == 0) return f;
  return NULL;
}

/* ---- sending (conn.c, for a segment whose ext is lr_seg_file) ---- */

int lr__file_sendfile(int sock, lr_seg_t *s) {
  filebody_t *fb = s->arg;
  while (s->len) {
    off_t off = (off_t)(fb->start + s->off);
    size_t want = s->len < 0x7ffff000 ? s->len : 0x7ffff000;
    ssize_t r = sendfile(sock, fb->f->fd, &off, want);
    if (r > 0) {
      s->off += (size_t)r;
      s->len -= (size_t)r;
      if ((size_t)r < want) return 1; /* the socket buffer is full */
    } else if (r == 0) {
      return UV_EIO; /* the file shrank under us: the promised length can't be sent */
    } else if (errno == EAGAIN) {
      return 1;
    } else if (errno != EINTR) {
      return -errno;
    }
  }
  return 0;
}

int lr__file_take_byte(lr_seg_t *s, char *out) {
  filebody_t *fb = s->arg;
  if (pread(fb->f->fd, out, 1, (off_t)(fb->start + s->off)) != 1) return UV_EIO;
  s->off++;
  s->len--;
  return 0;
}

static void filebody_release(void *arg) {
  filebody_t *fb = arg;
  lr_file_unref(fb->f);
  free(fb);
}

/* ---- public entry points ---- */

int lr_file_open(lr_worker_t *w, const char *path, size_t len, uint64_t valid_ms, lr_file_t **out) {
  lr_files_t *fc = files_of(w);
  if (fc == NULL) return UV_ENOMEM;
  uint64_t now = uv_now(&w->loop);
  if (!lr_list_empty(&fc->lru)) { /* the least recently used one, if long unused */
    lr_file_t *old = LR_CONTAINER_OF(fc->lru.prev, lr_file_t, lru);
    if (now - old->used > LR_FILE_INACTIVE_MS) drop(fc, old);
  }
  uint32_t h = hash(path, len);
  lr_file_t *f = find(fc, path, len, h);
  if (f && now - f->checked >= valid_ms) {
    struct stat st;
    if (f->fd >= 0 && stat(f->path, &st) == 0 && same(f, &st)) {
      f->checked = now;
    } else {
      drop(fc, f);
      f = NULL;
    }
  }
  if (f == NULL) {
    if (memchr(path, '\0', len)) return UV_ENOENT;
    f = calloc(1, sizeof *f + len + 1);
    if (f == NULL) return UV_ENOMEM;
    memcpy(f->path, path, len);
    f->path_len = len;
    f->hash = h;
    f->fd = open(f->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    struct stat st;
    int err = f->fd < 0 ? -errno : fstat(f->fd, &st) ? -errno : 0;
    if (err == 0 && !S_ISREG(st.st_mode)) err = S_ISDIR(st.st_mode) ? UV_EISDIR : UV_EINVAL;
    if (err && err != UV_ENOENT) {
      if (f->fd >= 0) close(f->fd);
      free(f);
      return err;
    }
    if (err == 0) fill(f, &st);
    f->err = err;
    f->checked = now;
    f->refs = 1; /* the cache's */
    if (fc->n == LR_FILE_MAX) drop(fc, LR_CONTAINER_OF(fc->lru.prev, lr_file_t, lru));
    f->next = fc->bucket[h & (LR_FILE_BUCKETS - 1)];
    fc->bucket[h & (LR_FILE_BUCKETS - 1)] = f;
    lr_list_init(&f->lru);
    fc->n++;
  }
  lr_link_unlink(&f->lru);
  lr_list_push(fc->lru.next, &f->lru); /* before the first: most recent */
  f->used = now;
  if (f->fd < 0) return f->err;
  f->refs++;
  *out = f;
  return 0;
}

int lr_stream_can_sendfile(const lr_stream_t *s) {
  const lr_conn_t *c = s->conn;
  return c && c->proto == &lr_http1_proto && c->tls == NULL;
}

int lr_stream_send_file(lr_stream_t *s, int status, const lr_header_t *h, size_t n, lr_file_t *f, uint64_t off,
                        uint64_t len, int flags) {
  if (!lr_stream_can_sendfile(s)) return LR_ESTATE;
  flags = LR_FIN | (flags & LR_CHECKED);
  if (len == 0) return lr_stream_send_head(s, status, h, n, NULL, 0, NULL, NULL, flags);
  if (len <= LR_FILE_INLINE && !(s->flags & LR_SF_HEAD)) {
    /* A small body is read now and copied behind the head: one write and one
     * TCP segment instead of a writev and a sendfile, which cost the kernel
     * twice per request. pread reads the page cache as sendfile would (and
     * blocks on a cold one just as long). A short read (the file shrank)
     * goes the sendfile way, which closes the connection as before. */
    static __thread char stage[LR_FILE_INLINE];
    if (pread(f->fd, stage, (size_t)len, (off_t)off) == (ssize_t)len)
      return lr_stream_send_head(s, status, h, n, stage, (size_t)len, NULL, NULL, flags);
  }
  filebody_t *fb = malloc(sizeof *fb);
  if (fb == NULL) return UV_ENOMEM;
  f->refs++;
  fb->f = f;
  fb->start = off;
  return lr_stream_send_head(s, status, h, n, lr_seg_file, (size_t)len, filebody_release, fb, flags);
}

void lr__files_free(lr_worker_t *w) {
  lr_files_t *fc = w->files;
  if (fc == NULL) return;
  while (!lr_list_empty(&fc->lru)) drop(fc, LR_CONTAINER_OF(fc->lru.next, lr_file_t, lru));
  free(fc);
  w->files = NULL;
}
