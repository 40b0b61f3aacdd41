/* --watch: reload when the app's Lua source changes, and only then.
 *
 * Watched: the app file and every module it required while loading whose
 * file lies under the app's directory (package.loaded, resolved again with
 * package.searchpath). Not watched: anything else in that directory, so an
 * app writing its own log or database next to itself does not reload itself.
 * The set is taken again after every successful load, so a newly required
 * module is watched from the next reload on.
 *
 * One inotify watch (uv_fs_event) per directory holding a watched file,
 * events filtered by file name: editors that save by writing a temporary
 * file and renaming it over the original are seen too. Changes come in
 * bursts (write, rename, touch), so a reload waits for 200 ms of quiet.
 * Everything here runs on the main thread: lr_app_load (startup and reload)
 * and the main loop's callbacks. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "bindings.h"

#define DEBOUNCE_MS 200

typedef struct {
  uv_fs_event_t h;
  char dir[PATH_MAX];
} dir_watch_t;

static char *files;          /* the watched real paths, '\n'-separated, sorted by load order */
static dir_watch_t **dirs;   /* one per directory holding a watched file */
static int n_dirs;
static uv_loop_t *loop;      /* set by lr_watch_start */
static uv_timer_t debounce;
static void (*reload_fn)(const char *why);

static void on_dir_closed(uv_handle_t *h) { free(h->data); }

static void unwatch_all(void) {
  for (int i = 0; i < n_dirs; i++) uv_close((uv_handle_t *)&dirs[i]->h, on_dir_closed);
  free(dirs);
  dirs = NULL;
  n_dirs = 0;
}

/* is dir/name one of the watched files? */
static int watched(const char *dir, const char *name) {
  size_t dl = strlen(dir), nl = strlen(name);
  for (const char *p = files; p && *p;) {
    const char *end = strchr(p, '\n');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len == dl + 1 + nl && memcmp(p, dir, dl) == 0 && p[dl] == '/' && memcmp(p + dl + 1, name, nl) == 0)
      return 1;
    p += len + (end != NULL);
  }
  return 0;
}

static void on_debounced(uv_timer_t *t) {
  (void)t;
  reload_fn("files changed");
}

static void on_fs_event(uv_fs_event_t *h, const char *name, int events, int status) {
  (void)events;
  dir_watch_t *d = h->data;
  if (status < 0 || name == NULL || !watched(d->dir, name)) return;
  LR_DEBUG("--watch: %s/%s changed", d->dir, name);
  uv_timer_start(&debounce, on_debounced, DEBOUNCE_MS, 0);
}

static void watch_dirs(void) {
  unwatch_all();
  for (const char *p = files; p && *p;) {
    const char *end = strchr(p, '\n');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    const char *slash = p + len;
    while (slash > p && *slash != '/') slash--;
    size_t dl = (size_t)(slash - p);
    int seen = 0;
    for (int i = 0; i < n_dirs && !seen; i++) seen = strlen(dirs[i]->dir) == dl && memcmp(dirs[i]->dir, p, dl) == 0;
    if (!seen && dl < PATH_MAX) {
      dir_watch_t *d = calloc(1, sizeof *d);
      dir_watch_t **nd = realloc(dirs, (size_t)(n_dirs + 1) * sizeof *nd);
      if (d == NULL || nd == NULL) {
        free(d);
        if (nd) dirs = nd;
        break;
      }
      dirs = nd;
      memcpy(d->dir, p, dl);
      d->dir[dl] = '\0';
      uv_fs_event_init(loop, &d->h);
      d->h.data = d;
      if (uv_fs_event_start(&d->h, on_fs_event, d->dir, 0) != 0) {
        lr_log(LR_LOG_WARN, "--watch: cannot watch %s", d->dir);
        uv_close((uv_handle_t *)&d->h, on_dir_closed);
      } else {
        dirs[n_dirs++] = d;
      }
    }
    p += len + (end != NULL);
  }
}

/* The files of the app just loaded in L: the app file and the required
 * modules under its directory, as real paths, '\n'-separated. */
static char *collect(lua_State *L, const char *app_path) {
  char app_real[PATH_MAX], base[PATH_MAX];
  if (realpath(app_path, app_real) == NULL) return NULL;
  snprintf(base, sizeof base, "%s", app_real);
  char *slash = strrchr(base, '/');
  if (slash) slash[slash == base ? 1 : 0] = '\0';
  size_t bl = strlen(base);
  static const char list_modules[] =
      "local out = {}\n"
      "for name in pairs(package.loaded) do\n"
      "  if type(name) == 'string' then\n"
      "    local f = package.searchpath(name, package.path)\n"
      "    if f then out[#out + 1] = f end\n"
      "  end\n"
      "end\n"
      "table.sort(out)\n"
      "return table.concat(out, '\\n')\n";
  lr_buf_t out = {0};
  lr_buf_append(&out, app_real, strlen(app_real));
  int top = lua_gettop(L);
  if (luaL_loadstring(L, list_modules) == LUA_OK && lua_pcall(L, 0, 1, 0) == LUA_OK && lua_isstring(L, -1)) {
    const char *p = lua_tostring(L, -1);
    while (*p) {
      const char *end = strchr(p, '\n');
      size_t len = end ? (size_t)(end - p) : strlen(p);
      char path[PATH_MAX], real[PATH_MAX];
      if (len < sizeof path) {
        memcpy(path, p, len);
        path[len] = '\0';
        if (realpath(path, real) && strncmp(real, base, bl) == 0 && real[bl] == '/' && strcmp(real, app_real) != 0) {
          lr_buf_append(&out, "\n", 1);
          lr_buf_append(&out, real, strlen(real));
        }
      }
      p += len + (end != NULL);
    }
  }
  lua_settop(L, top);
  lr_buf_append(&out, "", 1);
  return out.base;
}

/* the list on one log line */
static void log_files(const char *what) {
  char line[2048];
  snprintf(line, sizeof line, "%s", files);
  for (char *p = line; *p; p++)
    if (*p == '\n') *p = ' ';
  lr_log(LR_LOG_INFO, "%s %s", what, line);
}

/* after a successful load (every worker's, at startup and on reload) */
void lr_watch_note(lua_State *L, const char *app_path) {
  char *fresh = collect(L, app_path);
  if (fresh == NULL) return;
  if (files && strcmp(files, fresh) == 0) {
    free(fresh);
    return;
  }
  free(files);
  files = fresh;
  if (loop) {
    watch_dirs();
    log_files("--watch: the app's files changed; now watching");
  }
}

int lr_watch_start(uv_loop_t *l, void (*reload)(const char *why)) {
  loop = l;
  reload_fn = reload;
  uv_timer_init(loop, &debounce);
  watch_dirs();
  if (n_dirs == 0) {
    lr_log(LR_LOG_WARN, "--watch: nothing to watch");
    return -1;
  }
  log_files("--watch: watching");
  return 0;
}

void lr_watch_stop(void) {
  if (loop == NULL) return;
  unwatch_all();
  uv_close((uv_handle_t *)&debounce, NULL);
  free(files);
  files = NULL;
  loop = NULL;
}
