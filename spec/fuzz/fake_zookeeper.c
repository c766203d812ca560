/* A stand-in for libzookeeper_mt in the ZooKeeper fuzz target: the
 * asynchronous calls backends/zookeeper.c makes are queued here, and the
 * target completes them (return code, node data, children, czxid), fires
 * the watches they set and changes the session's state, from the fuzz
 * input. Completions and watcher calls run on the caller's thread, where
 * the real client runs them on its own; the backend copies them into its
 * queue either way. zookeeper_close completes whatever is pending with
 * ZCLOSING before it returns, as the real client does. Constants carry the
 * values of Debian's libzookeeper-mt 3.8. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zookeeper/zookeeper.h>

const int ZOO_PERM_READ = 1, ZOO_PERM_WRITE = 2, ZOO_PERM_CREATE = 4, ZOO_PERM_DELETE = 8,
          ZOO_PERM_ADMIN = 16, ZOO_PERM_ALL = 31;
const int ZOO_PERSISTENT = 0, ZOO_EPHEMERAL = 1, ZOO_PERSISTENT_SEQUENTIAL = 2,
          ZOO_EPHEMERAL_SEQUENTIAL = 3, ZOO_SEQUENCE = 2;
const int ZOO_EXPIRED_SESSION_STATE = -112, ZOO_AUTH_FAILED_STATE = -113, ZOO_CONNECTING_STATE = 1,
          ZOO_ASSOCIATING_STATE = 2, ZOO_CONNECTED_STATE = 3, ZOO_READONLY_STATE = 5,
          ZOO_NOTCONNECTED_STATE = 999;
const int ZOO_CREATED_EVENT = 1, ZOO_DELETED_EVENT = 2, ZOO_CHANGED_EVENT = 3, ZOO_CHILD_EVENT = 4,
          ZOO_SESSION_EVENT = -1, ZOO_NOTWATCHING_EVENT = -2;
struct Id ZOO_ANYONE_ID_UNSAFE = {"world", "anyone"};
struct Id ZOO_AUTH_IDS = {"auth", ""};
static struct ACL fake_open_acl[] = {{31, {"world", "anyone"}}};
struct ACL_vector ZOO_OPEN_ACL_UNSAFE = {1, fake_open_acl};

enum fake_kind { K_VOID, K_STAT, K_DATA, K_CHILDREN, K_STRING, K_CREATED };

typedef struct fake_op {
    zhandle_t *zh;
    enum fake_kind kind;
    void *completion;
    const void *data;
    char *path;
    struct fake_op *next;
} fake_op;

typedef struct fake_watch {
    zhandle_t *zh;
    watcher_fn fn;
    void *ctx;
    char *path;
    struct fake_watch *next;
} fake_watch;

struct _zhandle {
    watcher_fn watcher;
    void *context;
    int state;
    int recv_timeout;
    clientid_t id;
};

static fake_op *fake_ops;
static fake_watch *fake_watches;
static unsigned fake_handles;
static zhandle_t *fake_current; /* the newest handle: session events go to it */
static long long fake_seq;
/* The names (last path component) of the sequential nodes made so far in
 * this input, whatever the create's outcome: a child list may name them as
 * "$0", "$1", ... since their names hold a random uuid the input cannot
 * know. */
static char fake_made[8][128];
static unsigned fake_nmade;

zhandle_t *zookeeper_init2(const char *host, watcher_fn fn, int recv_timeout,
                           const clientid_t *clientid, void *context, int flags,
                           log_callback_fn log_callback)
{
    zhandle_t *zh = calloc(1, sizeof *zh);
    zh->watcher = fn;
    zh->context = context;
    zh->state = ZOO_CONNECTING_STATE;
    zh->recv_timeout = recv_timeout;
    zh->id.client_id = 0x1000 + fake_handles;
    fake_handles++;
    fake_current = zh;
    return zh;
}

zhandle_t *zookeeper_init(const char *host, watcher_fn fn, int recv_timeout,
                          const clientid_t *clientid, void *context, int flags)
{
    return zookeeper_init2(host, fn, recv_timeout, clientid, context, flags, NULL);
}

static void fake_complete(fake_op *op, int rc, long long czxid, const char *payload, size_t len);

int zookeeper_close(zhandle_t *zh)
{
    for (fake_op **p = &fake_ops; *p;) {
        fake_op *op = *p;
        if (op->zh == zh) {
            *p = op->next;
            fake_complete(op, ZCLOSING, 0, "", 0);
        } else {
            p = &op->next;
        }
    }
    for (fake_watch **p = &fake_watches; *p;) {
        fake_watch *w = *p;
        if (w->zh == zh) {
            *p = w->next;
            free(w->path);
            free(w);
        } else {
            p = &w->next;
        }
    }
    if (fake_current == zh)
        fake_current = NULL;
    fake_handles--;
    free(zh);
    return ZOK;
}

static int fake_queue(zhandle_t *zh, enum fake_kind kind, const char *path, void *completion,
                      const void *data)
{
    if (zh->state == ZOO_EXPIRED_SESSION_STATE || zh->state == ZOO_AUTH_FAILED_STATE)
        return ZINVALIDSTATE;
    if (getenv("FUZZ_LOG"))
        fprintf(stderr, "fake_zookeeper call %d %s\n", (int)kind, path);
    fake_op *op = calloc(1, sizeof *op);
    op->zh = zh;
    op->kind = kind;
    op->completion = completion;
    op->data = data;
    op->path = strdup(path);
    fake_op **p = &fake_ops;
    while (*p)
        p = &(*p)->next;
    *p = op;
    return ZOK;
}

static void fake_watch_add(zhandle_t *zh, const char *path, watcher_fn fn, void *ctx)
{
    if (!fn)
        return;
    fake_watch *w = calloc(1, sizeof *w);
    w->zh = zh;
    w->fn = fn;
    w->ctx = ctx;
    w->path = strdup(path);
    w->next = fake_watches;
    fake_watches = w;
}

int zoo_acreate(zhandle_t *zh, const char *path, const char *value, int valuelen,
                const struct ACL_vector *acl, int mode, string_completion_t completion,
                const void *data)
{
    return fake_queue(zh, K_STRING, path, (void *)completion, data);
}

int zoo_acreate2(zhandle_t *zh, const char *path, const char *value, int valuelen,
                 const struct ACL_vector *acl, int mode, string_stat_completion_t completion,
                 const void *data)
{
    return fake_queue(zh, K_CREATED, path, (void *)completion, data);
}

int zoo_adelete(zhandle_t *zh, const char *path, int version, void_completion_t completion,
                const void *data)
{
    return fake_queue(zh, K_VOID, path, (void *)completion, data);
}

int zoo_aexists(zhandle_t *zh, const char *path, int watch, stat_completion_t completion,
                const void *data)
{
    return fake_queue(zh, K_STAT, path, (void *)completion, data);
}

int zoo_awexists(zhandle_t *zh, const char *path, watcher_fn watcher, void *watcherCtx,
                 stat_completion_t completion, const void *data)
{
    int rc = fake_queue(zh, K_STAT, path, (void *)completion, data);
    if (rc == ZOK)
        fake_watch_add(zh, path, watcher, watcherCtx);
    return rc;
}

int zoo_aget(zhandle_t *zh, const char *path, int watch, data_completion_t completion,
             const void *data)
{
    return fake_queue(zh, K_DATA, path, (void *)completion, data);
}

int zoo_awget(zhandle_t *zh, const char *path, watcher_fn watcher, void *watcherCtx,
              data_completion_t completion, const void *data)
{
    int rc = fake_queue(zh, K_DATA, path, (void *)completion, data);
    if (rc == ZOK)
        fake_watch_add(zh, path, watcher, watcherCtx);
    return rc;
}

int zoo_aget_children2(zhandle_t *zh, const char *path, int watch,
                       strings_stat_completion_t completion, const void *data)
{
    return fake_queue(zh, K_CHILDREN, path, (void *)completion, data);
}

int zoo_awget_children2(zhandle_t *zh, const char *path, watcher_fn watcher, void *watcherCtx,
                        strings_stat_completion_t completion, const void *data)
{
    int rc = fake_queue(zh, K_CHILDREN, path, (void *)completion, data);
    if (rc == ZOK)
        fake_watch_add(zh, path, watcher, watcherCtx);
    return rc;
}

int zoo_async(zhandle_t *zh, const char *path, string_completion_t completion, const void *data)
{
    return fake_queue(zh, K_STRING, path, (void *)completion, data);
}

int zoo_add_auth(zhandle_t *zh, const char *scheme, const char *cert, int certLen,
                 void_completion_t completion, const void *data)
{
    return ZOK;
}

const clientid_t *zoo_client_id(zhandle_t *zh) { return &zh->id; }
const void *zoo_get_context(zhandle_t *zh) { return zh->context; }
int zoo_recv_timeout(zhandle_t *zh) { return zh->recv_timeout; }
void zoo_set_debug_level(ZooLogLevel logLevel) {}
int zoo_state(zhandle_t *zh) { return zh->state; }

const char *zerror(int c)
{
    static char buf[32];
    snprintf(buf, sizeof buf, "zk error %d", c);
    return buf;
}

/* ---- for the fuzz target ---- */

/* Runs op's completion with rc; payload is the node data (get), the
 * children separated by ',' (children) or ignored; czxid goes in the Stat. */
static void fake_complete(fake_op *op, int rc, long long czxid, const char *payload, size_t len)
{
    struct Stat stat;
    memset(&stat, 0, sizeof stat);
    stat.czxid = czxid;
    stat.mzxid = czxid;
    switch (op->kind) {
    case K_VOID:
        ((void_completion_t)op->completion)(rc, op->data);
        break;
    case K_STAT:
        ((stat_completion_t)op->completion)(rc, rc == ZOK ? &stat : NULL, op->data);
        break;
    case K_DATA:
        ((data_completion_t)op->completion)(rc, rc == ZOK ? payload : NULL,
                                            rc == ZOK ? (int)len : -1, rc == ZOK ? &stat : NULL,
                                            op->data);
        break;
    case K_CHILDREN: {
        struct String_vector names = {0, NULL};
        char *copy = strndup(payload, len);
        char *names_buf[64];
        if (rc == ZOK && len > 0) {
            for (char *save = NULL, *t = strtok_r(copy, ",", &save); t && names.count < 64;
                 t = strtok_r(NULL, ",", &save)) {
                if (t[0] == '$' && t[1] >= '0' && t[1] <= '7' &&
                    (unsigned)(t[1] - '0') < fake_nmade)
                    t = fake_made[t[1] - '0'];
                names_buf[names.count++] = t;
            }
            names.data = names_buf;
        }
        ((strings_stat_completion_t)op->completion)(rc, rc == ZOK ? &names : NULL,
                                                    rc == ZOK ? &stat : NULL, op->data);
        free(copy);
        break;
    }
    case K_STRING:
        ((string_completion_t)op->completion)(rc, rc == ZOK ? op->path : NULL, op->data);
        break;
    case K_CREATED: {
        /* the sequential node the server made: the path and a 10-digit suffix */
        char *made = malloc(strlen(op->path) + 16);
        sprintf(made, "%s%010lld", op->path, (fake_seq++ % 10000000000LL));
        /* a create that failed (connection loss) may have been made
         * anyway: the backend then looks for it among the children */
        if (fake_nmade < 8) {
            const char *slash = strrchr(made, '/');
            snprintf(fake_made[fake_nmade++], sizeof fake_made[0], "%s", slash ? slash + 1 : made);
        }
        ((string_stat_completion_t)op->completion)(rc, rc == ZOK ? made : NULL,
                                                   rc == ZOK ? &stat : NULL, op->data);
        free(made);
        break;
    }
    }
    free(op->path);
    free(op);
}

static unsigned fake_count(void)
{
    unsigned n = 0;
    for (fake_op *op = fake_ops; op; op = op->next)
        n++;
    return n;
}

/* Takes the i-th (modulo) pending call off the queue, or NULL. */
static fake_op *fake_take(unsigned i)
{
    unsigned n = fake_count();
    if (n == 0)
        return NULL;
    i %= n;
    fake_op **p = &fake_ops;
    while (i--)
        p = &(*p)->next;
    fake_op *op = *p;
    *p = op->next;
    return op;
}

/* Fires the i-th (modulo) watch with event `type`; watches fire once. */
static void fake_fire_watch(unsigned i, int type)
{
    unsigned n = 0;
    for (fake_watch *w = fake_watches; w; w = w->next)
        n++;
    if (n == 0)
        return;
    i %= n;
    fake_watch **p = &fake_watches;
    while (i--)
        p = &(*p)->next;
    fake_watch *w = *p;
    *p = w->next;
    w->fn(w->zh, type, w->zh->state, w->path, w->ctx);
    free(w->path);
    free(w);
}

/* The newest session changes state, and its watcher hears of it. */
static void fake_session(int state, int negotiated_ms)
{
    zhandle_t *zh = fake_current;
    if (!zh)
        return;
    zh->state = state;
    if (negotiated_ms > 0)
        zh->recv_timeout = negotiated_ms;
    zh->watcher(zh, ZOO_SESSION_EVENT, state, NULL, zh->context);
}
