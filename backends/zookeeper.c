/* zk://host:port[,host:port...][/chroot] — ZooKeeper through the official
 * C client (libzookeeper_mt).
 *
 * The client runs its own I/O and completion threads. They never touch the
 * engine: every completion and watch event is copied into a message, queued
 * under a mutex and signalled through one eventfd that is an event on the
 * loop; the loop thread drains the queue and does all the reporting.
 *
 * One session per store object, shared by all its elections. A candidate
 * is an ephemeral sequential node <key>/_c_<uuid>-<seq> holding its value;
 * the lowest sequence leads, its czxid is the term, and a waiting candidate
 * watches only its predecessor, so a leader leaving wakes one client, not
 * all of them. (A waiter therefore reports the leader it saw when it
 * joined or when its predecessor left; a follower watches the whole queue
 * and always knows the current one.) The uuid makes the name "protected"
 * (as in Curator): when a create's reply is lost with the connection, the
 * candidate finds its own node among the children instead of creating a
 * second one that nobody would ever delete.
 *
 * The session is the leadership. A leader's holding is valid from the send
 * time of the last request the server answered: a sync every third of the
 * session timeout, or more often for a short renew_deadline, or at once
 * for a new leader whose list was long on its way (a sync,
 * because it goes through the quorum leader: a server cut off from the
 * quorum cannot answer it from a stale view, as it could a read). So a
 * leader that stops hearing from ZooKeeper steps down at its local
 * deadline, before the server can expire the session and let another
 * candidate in. On expiry every election loses, a new session is
 * made and the candidates join again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <event2/event.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <unistd.h>
#include <zookeeper/zookeeper.h>

#include "../runtime/log.h"
#include "store.h"

/* ZooKeeper's own limit on a znode (jute.maxbuffer); anything larger is
 * not a value one of us wrote. */
#define ZK_MAX_VALUE (1024 * 1024)
#define ZK_SEQ_DIGITS 10

typedef struct zk_store zk_store;
typedef struct zk_conn zk_conn;
typedef struct zk_elec zk_elec;
typedef struct zk_msg zk_msg;

enum zk_op {
    OP_PARENT,      /* create one component of <key>; failures only logged */
    OP_CREATE,      /* our ephemeral sequential node */
    OP_FIND_SYNC,   /* catch the server up before looking for our node */
    OP_FIND,        /* children of <key>: which one is ours? */
    OP_FIND_STAT,   /* the czxid of the node found */
    OP_CHECK,       /* children of <key>: are we lowest? */
    OP_WATCH_PRED,  /* exists watch on the predecessor */
    OP_LEADER_DATA, /* value and czxid of the lowest node */
    OP_WATCH_OWN,   /* leader: exists watch on its own node */
    OP_DELETE,      /* give our node up */
    OP_ORPHAN,      /* remove a duplicate of ours; the result is ignored */
    OP_PING,        /* sync: the session is alive, through the quorum leader */
    OP_F_CHILDREN,  /* follower: children of <key>, watched */
    OP_F_DATA,      /* follower: data of the lowest, watched */
    OP_F_DIR,       /* follower: exists watch on a <key> not made yet */
};

enum zk_msg_kind { MSG_REPLY, MSG_WATCH, MSG_SESSION };

/* A request on its way (owned by the library until its completion runs),
 * or an event copied out of a library thread. */
struct zk_msg {
    zk_msg *prev, *next; /* conn->requests while the library holds it */
    zk_msg *queued;      /* the store's queue, toward the loop */
    enum zk_msg_kind kind;
    zk_store *store;
    uint64_t gen;  /* the session it belongs to: stale once that one is over */
    zk_elec *elec; /* pinned while the request is out; NULL for the store's */
    enum zk_op op;
    unsigned epoch; /* elec->epoch at send: later steps make it stale */
    double sent_at;
    int rc;
    char *path; /* the request's; a create's reply: the created node */
    char *data;
    int len;
    struct Stat stat;
    char **children;
    int nchildren;
    int type, state; /* watch and session events */
    uint64_t token;  /* watch: the id of the elec that set it */
};

/* One zhandle_t, i.e. one ZooKeeper session. */
struct zk_conn {
    zk_store *store;
    zhandle_t *zh;
    uint64_t gen;
    zk_msg requests; /* sentinel: requests the library holds (store->lock) */
};

enum zk_phase {
    PH_PENDING,   /* waiting for a connected session */
    PH_TURN,      /* waiting for a create to go out: CREATES_IN_FLIGHT are */
    PH_CREATING,  /* our create is in flight */
    PH_FINDING,   /* the create's outcome is unknown: looking for our node */
    PH_QUEUED,    /* our node is known: checking, waiting or leading */
    PH_FOLLOWING, /* a follower */
    PH_DONE,
};

/* One campaign or follow of one election. When the engine lets go (cancel)
 * it lives on without `e` until it has removed the node it made. */
struct zk_elec {
    zk_elec *prev, *next;
    zk_store *store;
    ls_election *e; /* NULL once the engine let go: then it only cleans up */
    uint64_t id;    /* the context of its watches */
    unsigned refs;  /* the store's list + requests out + pins */
    unsigned epoch;
    enum zk_phase phase;
    bool candidate;
    bool leader;
    bool parents_made;
    bool holding_loop;
    double ttl;
    double renew_deadline; /* the engine's, for this election */
    char *dir;             /* "/service/swarm/leader" */
    char prefix[64];       /* "_c_<uuid>-" */
    char *node;            /* our child's name once known */
    uint64_t czxid;        /* our node's: the term while we lead */
    zk_elec *turn_next;    /* in the store's turns (holding a reference) */
    bool in_turns;
    double proved_at;    /* while leader: the latest send time of an answer
                            that proved its holding */
    struct event *timer; /* gives up waiting for a session; reports a deferred
                            failure; bounds the loop hold while cleaning up */
    char *failure;       /* reported when the timer fires */
};

struct zk_store {
    ls_store *owner;
    char *hosts; /* "h:p,h:p/chroot" as zookeeper_init wants it */
    char *auth_scheme;
    char *auth_credentials;
    double timeout;
    int session_ms;    /* asked of the server: a candidate's ttl, or the option */
    int option_ms;     /* option session_timeout, or 0 */
    double negotiated; /* seconds, as the server granted it */
    zk_conn *conn;
    uint64_t gens; /* sessions made so far */
    bool connected;
    bool ping_out;
    unsigned creates_out;        /* of this session, unanswered */
    zk_elec *turns, *turns_last; /* in PH_TURN (or were), oldest first */
    bool session_for_followers;  /* its timeout was not a candidate's ttl */
    unsigned dispatching;        /* inside on_wake: freeing the store waits */
    bool closed;                 /* the engine closed the store */
    bool lose_create_reply;      /* test hook */
    double age_children_reply;   /* test hook: seconds */
    uint64_t next_id;
    zk_elec *elecs;
    struct event *ping_timer;
    double ping_at; /* when ping_timer fires, while pending */
    struct ACL acl_entries[2];
    struct ACL_vector acl;

    pthread_mutex_t lock; /* guards the queue and every conn's requests */
    zk_msg *queue_head, *queue_tail;
    bool wake_pending;
    int wake_fd;
    struct event *wake_ev;
};

static const char *const zk_options[] = {"auth.scheme", "auth.credentials", "session_timeout",
                                         NULL};

/* ---- library threads: copy, queue, wake the loop ---- */

static void deliver(zk_msg *m)
{
    zk_store *s = m->store;
    bool wake;
    pthread_mutex_lock(&s->lock);
    if (m->prev) {
        m->prev->next = m->next;
        m->next->prev = m->prev;
        m->prev = m->next = NULL;
    }
    if (s->queue_tail)
        s->queue_tail->queued = m;
    else
        s->queue_head = m;
    s->queue_tail = m;
    wake = !s->wake_pending;
    s->wake_pending = true;
    pthread_mutex_unlock(&s->lock);
    if (wake) {
        uint64_t one = 1;
        if (write(s->wake_fd, &one, sizeof one) < 0)
            ls_log(LS_ERROR, "zookeeper: cannot wake the loop: %s", strerror(errno));
    }
}

static void on_void(int rc, const void *data)
{
    zk_msg *m = (zk_msg *)data;
    m->rc = rc;
    deliver(m);
}

static void on_stat(int rc, const struct Stat *stat, const void *data)
{
    zk_msg *m = (zk_msg *)data;
    m->rc = rc;
    if (rc == ZOK && stat)
        m->stat = *stat;
    deliver(m);
}

static void on_data(int rc, const char *value, int len, const struct Stat *stat, const void *data)
{
    zk_msg *m = (zk_msg *)data;
    m->rc = rc;
    if (rc == ZOK) {
        if (stat)
            m->stat = *stat;
        m->len = value ? len : -1; /* -1: a node with no data at all, 0: "" */
        if (value && len > 0) {
            m->data = malloc((size_t)len);
            memcpy(m->data, value, (size_t)len);
        }
    }
    deliver(m);
}

static void on_children(int rc, const struct String_vector *names, const struct Stat *stat,
                        const void *data)
{
    zk_msg *m = (zk_msg *)data;
    m->rc = rc;
    if (rc == ZOK && names && names->count > 0) {
        m->children = calloc((size_t)names->count, sizeof *m->children);
        for (int i = 0; i < names->count; i++)
            m->children[i] = strdup(names->data[i]);
        m->nchildren = names->count;
    }
    deliver(m);
}

static void on_created(int rc, const char *path, const struct Stat *stat, const void *data)
{
    zk_msg *m = (zk_msg *)data;
    m->rc = rc;
    if (rc == ZOK && path) {
        free(m->path);
        m->path = strdup(path);
        if (stat)
            m->stat = *stat;
    }
    deliver(m);
}

static void on_string(int rc, const char *value, const void *data)
{
    zk_msg *m = (zk_msg *)data;
    m->rc = rc;
    deliver(m);
}

/* The watcher of every node watch; its context is the setter's id, never a
 * pointer, so an event for an election long gone is only a number. */
static void on_node_event(zhandle_t *zh, int type, int state, const char *path, void *ctx)
{
    if (type == ZOO_SESSION_EVENT)
        return; /* the session watcher gets these too */
    zk_msg *m = calloc(1, sizeof *m);
    zk_conn *c = (zk_conn *)zoo_get_context(zh);
    m->kind = MSG_WATCH;
    m->store = c->store;
    m->gen = c->gen;
    m->type = type;
    m->state = state;
    m->token = (uint64_t)(uintptr_t)ctx;
    m->path = strdup(path ? path : "");
    deliver(m);
}

static void on_session_event(zhandle_t *zh, int type, int state, const char *path, void *ctx)
{
    if (type != ZOO_SESSION_EVENT)
        return;
    zk_conn *c = ctx;
    zk_msg *m = calloc(1, sizeof *m);
    m->kind = MSG_SESSION;
    m->store = c->store;
    m->gen = c->gen;
    m->state = state;
    deliver(m);
}

/* The client's own log, from any of its threads: debug lines of ours. */
static void on_client_log(const char *message)
{
    size_t n = strlen(message);
    while (n > 0 && (message[n - 1] == '\n' || message[n - 1] == '\r'))
        n--;
    ls_log(LS_DEBUG, "zookeeper client: %.*s", (int)n, message);
}

/* ---- messages and elections (loop thread) ---- */

static void elec_unref(zk_elec *el)
{
    if (--el->refs > 0)
        return;
    if (el->timer)
        event_free(el->timer);
    free(el->failure);
    free(el->dir);
    free(el->node);
    free(el);
}

/* The oldest of the store's turns, taken off them: the caller unrefs it. */
static zk_elec *turns_pop(zk_store *s)
{
    zk_elec *el = s->turns;
    s->turns = el->turn_next;
    if (!s->turns)
        s->turns_last = NULL;
    el->turn_next = NULL;
    el->in_turns = false;
    return el;
}

static void msg_free(zk_msg *m)
{
    if (m->elec)
        elec_unref(m->elec);
    for (int i = 0; i < m->nchildren; i++)
        free(m->children[i]);
    free(m->children);
    free(m->path);
    free(m->data);
    free(m);
}

/* A request about to be handed to the library, linked so that closing the
 * session can free it if its completion never runs. */
static zk_msg *req_new(zk_store *s, zk_elec *el, enum zk_op op, const char *path)
{
    zk_msg *m = calloc(1, sizeof *m);
    m->kind = MSG_REPLY;
    m->store = s;
    m->gen = s->conn->gen;
    m->op = op;
    m->sent_at = ls_now();
    m->path = path ? strdup(path) : NULL;
    if (el) {
        m->elec = el;
        m->epoch = el->epoch;
        el->refs++;
    }
    pthread_mutex_lock(&s->lock);
    m->next = &s->conn->requests;
    m->prev = s->conn->requests.prev;
    m->prev->next = m;
    s->conn->requests.prev = m;
    pthread_mutex_unlock(&s->lock);
    return m;
}

/* The library refused a request at once: its failure comes back through
 * the queue like any reply, so every outcome takes one path, later. */
static void req_sent(zk_msg *m, int rc)
{
    if (rc == ZOK)
        return;
    m->rc = rc;
    deliver(m);
}

static char *child_path(const char *dir, const char *name)
{
    char *p;
    if (asprintf(&p, "%s/%s", dir, name) < 0)
        abort();
    return p;
}

/* The elections the store tracks, pinned: reports may run Lua, which may
 * stop or start elections while we walk them. */
static zk_elec **elecs_pin(zk_store *s, size_t *n)
{
    size_t count = 0;
    for (zk_elec *el = s->elecs; el; el = el->next)
        count++;
    zk_elec **all = calloc(count + 1, sizeof *all);
    count = 0;
    for (zk_elec *el = s->elecs; el; el = el->next) {
        el->refs++;
        all[count++] = el;
    }
    *n = count;
    return all;
}

static void elecs_unpin(zk_elec **all, size_t n)
{
    for (size_t i = 0; i < n; i++)
        elec_unref(all[i]);
    free(all);
}

/* el is finished: off the store's list, and its hold on the loop gone. */
static void elec_finish(zk_elec *el)
{
    if (el->phase == PH_DONE)
        return;
    el->phase = PH_DONE;
    if (el->timer)
        evtimer_del(el->timer);
    if (el->holding_loop) {
        el->holding_loop = false;
        ls_loop_release();
    }
    zk_store *s = el->store;
    if (el->prev)
        el->prev->next = el->next;
    else
        s->elecs = el->next;
    if (el->next)
        el->next->prev = el->prev;
    el->prev = el->next = NULL;
    elec_unref(el);
}

static void timer_arm(struct event *ev, double seconds)
{
    if (seconds < 0)
        seconds = 0;
    struct timeval tv = {(time_t)seconds, (suseconds_t)((seconds - (time_t)seconds) * 1e6)};
    evtimer_add(ev, &tv);
}

static bool transient(int rc)
{
    return rc == ZCONNECTIONLOSS || rc == ZOPERATIONTIMEOUT || rc == ZSESSIONEXPIRED ||
           rc == ZCLOSING || rc == ZINVALIDSTATE || rc == ZSESSIONMOVED;
}

/* The sequence number of a child named "...-0000000042", or -1. */
static long long child_seq(const char *name)
{
    size_t n = strlen(name);
    if (n < ZK_SEQ_DIGITS)
        return -1;
    long long seq = 0;
    for (size_t i = n - ZK_SEQ_DIGITS; i < n; i++) {
        if (name[i] < '0' || name[i] > '9')
            return -1;
        seq = seq * 10 + (name[i] - '0');
    }
    return seq;
}

static const char *utf8_problem(const unsigned char *p, int len)
{
    if (len < 0)
        return "it has no data";
    if (len > ZK_MAX_VALUE)
        return "it is larger than 1 MiB";
    for (int i = 0; i < len;) {
        unsigned char c = p[i];
        int extra;
        unsigned min;
        unsigned cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            extra = 1, min = 0x80, cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            extra = 2, min = 0x800, cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            extra = 3, min = 0x10000, cp = c & 0x07;
        } else {
            return "it is not UTF-8";
        }
        if (i + extra >= len)
            return "it is not UTF-8"; /* cut short */
        for (int k = 1; k <= extra; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return "it is not UTF-8";
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return "it is not UTF-8";
        i += extra + 1;
    }
    return NULL;
}

/* A leader whose holding a sync's answer proves. */
static bool synced(const zk_elec *el) { return el->e && el->leader && el->phase == PH_QUEUED; }

/* How long an answer proves el's holding: the engine's renew_deadline,
 * which is meant against a session of ttl seconds. The server may have
 * granted a shorter one: scale it down alike, so the deadline always falls
 * inside the session whatever renew_deadline is. */
static double valid_window(const zk_elec *el)
{
    double granted = el->store->negotiated;
    if (granted > 0 && granted < el->ttl)
        return el->renew_deadline * granted / el->ttl;
    return el->renew_deadline;
}

/* Valid-from as the engine's deadline needs it: the engine steps down at
 * valid_from + renew_deadline, which must be sent_at + valid_window. */
static double valid_from(const zk_elec *el, double sent_at)
{
    return sent_at - (el->renew_deadline - valid_window(el));
}

/* ---- the session ---- */

static int conn_open(zk_store *s, char *err, size_t errlen)
{
    zk_conn *c = calloc(1, sizeof *c);
    c->store = s;
    c->gen = ++s->gens;
    c->requests.next = c->requests.prev = &c->requests;
    c->zh = zookeeper_init2(s->hosts, on_session_event, s->session_ms, NULL, c, 0, on_client_log);
    if (!c->zh) {
        /* the chroot was checked at open: the hosts are what it refused */
        snprintf(err, errlen,
                 "cannot start a ZooKeeper client: cannot resolve or parse hosts '%.*s'",
                 (int)strcspn(s->hosts, "/"), s->hosts);
        free(c);
        return -1;
    }
    if (s->auth_scheme)
        zoo_add_auth(c->zh, s->auth_scheme, s->auth_credentials, (int)strlen(s->auth_credentials),
                     NULL, NULL);
    s->conn = c;
    s->connected = false;
    s->negotiated = 0;
    s->ping_out = false;
    s->creates_out = 0;
    return 0;
}

/* Ends the current session; its ephemeral nodes go with it. Synchronous:
 * zookeeper_close flushes the close request and joins the client's threads
 * (milliseconds on a live connection, at once on a dead one). No thread of
 * the client may outlive this, or the module could be unloaded under it. */
static void conn_close(zk_store *s)
{
    zk_conn *c = s->conn;
    if (!c)
        return;
    s->conn = NULL;
    s->connected = false;
    s->ping_out = false;
    evtimer_del(s->ping_timer);
    zookeeper_close(c->zh);
    /* requests whose completion never ran are ours now */
    pthread_mutex_lock(&s->lock);
    zk_msg *m = c->requests.next;
    c->requests.next = c->requests.prev = &c->requests;
    pthread_mutex_unlock(&s->lock);
    while (m != &c->requests) {
        zk_msg *next = m->next;
        m->prev = m->next = NULL;
        msg_free(m);
        m = next;
    }
    free(c);
}

static void store_free(zk_store *s)
{
    while (s->elecs)
        elec_finish(s->elecs);
    while (s->turns)
        elec_unref(turns_pop(s));
    zk_msg *m = s->queue_head;
    while (m) {
        zk_msg *next = m->queued;
        msg_free(m);
        m = next;
    }
    event_free(s->wake_ev);
    event_free(s->ping_timer);
    close(s->wake_fd);
    pthread_mutex_destroy(&s->lock);
    free(s->hosts);
    free(s->auth_scheme);
    free(s->auth_credentials);
    free(s);
}

static void store_free_if_done(zk_store *s)
{
    if (s->closed && s->dispatching == 0)
        store_free(s);
}

/* ---- candidates ---- */

static void start_create(zk_elec *el);
static void check(zk_elec *el);
static void follow_read(zk_elec *el);
static void ping_schedule(zk_store *s);
static void ping_retry(zk_store *s);
static void resume(zk_elec *el);

/* Fails el after the current call stack: the engine must not be re-entered
 * from inside campaign/follow. */
static void elec_fail_soon(zk_elec *el, const char *message)
{
    free(el->failure);
    el->failure = strdup(message);
    el->phase = PH_PENDING;
    timer_arm(el->timer, 0);
}

static void send_delete(zk_elec *el)
{
    zk_store *s = el->store;
    if (!s->connected)
        return; /* the reconnect resumes it */
    char *path = child_path(el->dir, el->node);
    zk_msg *m = req_new(s, el, OP_DELETE, path);
    req_sent(m, zoo_adelete(s->conn->zh, path, -1, on_void, m));
    free(path);
}

static void find(zk_elec *el)
{
    zk_store *s = el->store;
    el->phase = PH_FINDING;
    if (!s->connected)
        return;
    /* The server we reach now may lag behind the one that took our create:
     * sync first, so its children include our node if it was made. */
    zk_msg *m = req_new(s, el, OP_FIND_SYNC, el->dir);
    req_sent(m, zoo_async(s->conn->zh, el->dir, on_string, m));
    m = req_new(s, el, OP_FIND, el->dir);
    req_sent(m, zoo_aget_children2(s->conn->zh, el->dir, 0, on_children, m));
}

/* The engine let go of el: from now on it only removes what it made, so
 * the next candidate takes over at once instead of after a timeout. */
static void elec_detach(zk_elec *el)
{
    zk_store *s = el->store;
    el->e = NULL;
    el->leader = false;
    el->epoch++;
    evtimer_del(el->timer);
    bool made_something = el->candidate && (el->phase == PH_CREATING || el->phase == PH_FINDING ||
                                            el->phase == PH_QUEUED);
    if (!made_something || !s->conn) {
        elec_finish(el);
        return;
    }
    /* Hold the loop while the delete is out, but not for ever: with no
     * server to talk to, the node goes when the session does. The cleanup
     * itself goes on after the hold is let go (at the next reconnect). */
    el->holding_loop = true;
    ls_loop_hold();
    timer_arm(el->timer, s->timeout);
    if (el->node)
        send_delete(el);
    else if (el->phase == PH_FINDING)
        find(el);
    /* PH_CREATING: the create's reply says what to delete */
}

static void elec_fail(zk_elec *el, const char *message)
{
    ls_election *e = el->e;
    ls_election_view(e)->backend_data = NULL;
    elec_detach(el);
    ls_election_failed(e, message);
}

static void new_prefix(zk_elec *el)
{
    unsigned char b[16];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) {
        for (size_t i = 0; i < sizeof b; i++)
            b[i] = (unsigned char)random();
    }
    b[6] = (b[6] & 0x0f) | 0x40; /* a version 4 uuid */
    b[8] = (b[8] & 0x3f) | 0x80;
    snprintf(el->prefix, sizeof el->prefix,
             "_c_%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x-", b[0], b[1],
             b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
             b[15]);
}

static void wait_for_session(zk_elec *el)
{
    el->phase = PH_PENDING;
    timer_arm(el->timer, el->store->timeout);
}

/* Creates one session has in flight at most. The server answers a session's
 * requests in order: a list sent behind thousands of creates (elections
 * started at once) came back seconds later, too late to prove the hold of
 * the leader it elected (README, ZooKeeper). */
#define CREATES_IN_FLIGHT 64

static void start_create(zk_elec *el)
{
    zk_store *s = el->store;
    free(el->node);
    el->node = NULL;
    el->leader = false;
    el->epoch++;
    if (!s->connected) {
        wait_for_session(el);
        return;
    }
    if (s->creates_out >= CREATES_IN_FLIGHT) {
        el->phase = PH_TURN;
        if (!el->in_turns) {
            el->in_turns = true;
            el->refs++;
            if (s->turns_last)
                s->turns_last->turn_next = el;
            else
                s->turns = el;
            s->turns_last = el;
        }
        return;
    }
    s->creates_out++;
    el->phase = PH_CREATING;
    new_prefix(el);
    if (!el->parents_made) {
        /* every component of <key>, persistent; "exists" is the usual answer */
        for (char *slash = strchr(el->dir + 1, '/');; slash = strchr(slash + 1, '/')) {
            if (slash)
                *slash = '\0';
            zk_msg *m = req_new(s, el, OP_PARENT, el->dir);
            req_sent(m, zoo_acreate(s->conn->zh, el->dir, NULL, -1, &s->acl, 0, on_string, m));
            if (!slash)
                break;
            *slash = '/';
        }
    }
    struct ls_election_view *v = ls_election_view(el->e);
    char *path = child_path(el->dir, el->prefix);
    zk_msg *m = req_new(s, el, OP_CREATE, path);
    req_sent(m, zoo_acreate2(s->conn->zh, path, v->value, (int)v->value_len, &s->acl,
                             ZOO_EPHEMERAL_SEQUENTIAL, on_created, m));
    free(path);
}

/* Sends the creates of elections waiting in PH_TURN, the longest waiting
 * first, while fewer than CREATES_IN_FLIGHT are out. Those that left
 * PH_TURN meanwhile are dropped; without a session the rest wait for one
 * instead. */
static void give_turns(zk_store *s)
{
    while (s->turns && (!s->connected || s->creates_out < CREATES_IN_FLIGHT)) {
        zk_elec *el = turns_pop(s);
        if (el->phase == PH_TURN)
            start_create(el);
        elec_unref(el);
    }
}

static void check(zk_elec *el)
{
    zk_store *s = el->store;
    el->epoch++;
    el->phase = PH_QUEUED;
    if (!s->connected)
        return;
    zk_msg *m = req_new(s, el, OP_CHECK, el->dir);
    req_sent(m, zoo_aget_children2(s->conn->zh, el->dir, 0, on_children, m));
}

static void watch_own(zk_elec *el)
{
    zk_store *s = el->store;
    char *path = child_path(el->dir, el->node);
    zk_msg *m = req_new(s, el, OP_WATCH_OWN, path);
    req_sent(m,
             zoo_awexists(s->conn->zh, path, on_node_event, (void *)(uintptr_t)el->id, on_stat, m));
    free(path);
}

/* Our node is gone while the session lives: deleted behind our back. */
static void node_gone(zk_elec *el)
{
    bool was_leader = el->leader;
    el->leader = false;
    if (was_leader) {
        ls_election_lost(el->e, "deleted");
        if (!el->e)
            return;
    }
    start_create(el);
}

static void report_value(zk_elec *el, const zk_msg *m)
{
    const char *problem = utf8_problem((const unsigned char *)m->data, m->len);
    if (problem) {
        /* whoever led before does not any more: unknown, not them */
        ls_election_leader(el->e, NULL, 0, 0);
        if (!el->e)
            return;
        char message[600];
        snprintf(message, sizeof message, "ignoring leader node %s: %s", m->path, problem);
        ls_election_error(el->e, message);
        return;
    }
    ls_election_leader(el->e, m->data ? m->data : "", (size_t)m->len, (uint64_t)m->stat.czxid);
}

static void on_checked(zk_elec *el, zk_msg *m)
{
    zk_store *s = el->store;
    if (m->rc == ZNONODE) {
        node_gone(el); /* <key> itself was removed */
        return;
    }
    if (m->rc != ZOK) {
        char message[300];
        snprintf(message, sizeof message, "listing %s: %s", el->dir, zerror(m->rc));
        elec_fail(el, message);
        return;
    }
    if (s->age_children_reply > 0) {
        /* test hook: as if the list had waited behind thousands of others */
        m->sent_at -= s->age_children_reply;
        s->age_children_reply = 0;
    }
    long long mine = -1;
    const char *lowest = NULL, *pred = NULL;
    long long lowest_seq = -1, pred_seq = -1;
    for (int i = 0; i < m->nchildren; i++) {
        if (!strcmp(m->children[i], el->node))
            mine = child_seq(el->node);
    }
    for (int i = 0; i < m->nchildren; i++) {
        const char *name = m->children[i];
        long long seq = child_seq(name);
        if (seq < 0)
            continue;
        if (strcmp(name, el->node) && !strncmp(name, el->prefix, strlen(el->prefix))) {
            /* a second node of ours: a create we thought lost landed after all */
            char *path = child_path(el->dir, name);
            zk_msg *o = req_new(s, NULL, OP_ORPHAN, path);
            req_sent(o, zoo_adelete(s->conn->zh, path, -1, on_void, o));
            free(path);
            continue;
        }
        if (lowest_seq < 0 || seq < lowest_seq)
            lowest_seq = seq, lowest = name;
        if (mine >= 0 && seq < mine && seq > pred_seq)
            pred_seq = seq, pred = name;
    }
    if (mine < 0) {
        node_gone(el);
        return;
    }
    if (!pred) {
        double from = valid_from(el, m->sent_at);
        el->proved_at = fmax(el->proved_at, m->sent_at); /* a sync may have proved more */
        if (el->leader) {
            ls_election_renewed(el->e, from);
            return;
        }
        el->leader = true;
        watch_own(el);
        ping_schedule(s);
        ls_election_acquired(el->e, el->czxid, from);
        return;
    }
    if (el->leader) {
        el->leader = false;
        ls_election_lost(el->e, "deleted");
        if (!el->e)
            return;
    }
    /* Wait for the predecessor only: its deletion wakes us and nobody else. */
    char *path = child_path(el->dir, pred);
    zk_msg *w = req_new(s, el, OP_WATCH_PRED, path);
    req_sent(w,
             zoo_awexists(s->conn->zh, path, on_node_event, (void *)(uintptr_t)el->id, on_stat, w));
    free(path);
    path = child_path(el->dir, lowest);
    zk_msg *d = req_new(s, el, OP_LEADER_DATA, path);
    req_sent(d, zoo_aget(s->conn->zh, path, 0, on_data, d));
    free(path);
}

static void on_found(zk_elec *el, zk_msg *m)
{
    zk_store *s = el->store;
    const char *found = NULL;
    for (int i = 0; m->rc == ZOK && i < m->nchildren; i++) {
        if (!strncmp(m->children[i], el->prefix, strlen(el->prefix)))
            found = m->children[i];
    }
    if (!el->e) { /* cleaning up */
        if (el->node)
            return; /* found by the listing sent before the cancel: its delete is out */
        if (found) {
            el->node = strdup(found);
            send_delete(el);
        } else if (!transient(m->rc)) {
            elec_finish(el);
        }
        return;
    }
    if (transient(m->rc))
        return;
    if (!found) {
        /* the create never happened: make it now, under a new name */
        start_create(el);
        return;
    }
    free(el->node); /* a redone step may have found it already */
    el->node = strdup(found);
    char *path = child_path(el->dir, found);
    zk_msg *st = req_new(s, el, OP_FIND_STAT, path);
    req_sent(st, zoo_aexists(s->conn->zh, path, 0, on_stat, st));
    free(path);
}

static void on_create_reply(zk_elec *el, zk_msg *m)
{
    zk_store *s = el->store;
    if (el->phase != PH_CREATING)
        return;
    if (m->rc == ZOK && s->lose_create_reply) {
        /* test hook: the node exists, but we act as if the reply were lost */
        s->lose_create_reply = false;
        m->rc = ZCONNECTIONLOSS;
    }
    if (m->rc == ZOK) {
        const char *slash = strrchr(m->path, '/');
        el->node = strdup(slash ? slash + 1 : m->path);
        el->czxid = (uint64_t)m->stat.czxid;
        el->parents_made = true;
        if (!el->e)
            send_delete(el);
        else
            check(el);
        return;
    }
    if (m->rc == ZCONNECTIONLOSS || m->rc == ZOPERATIONTIMEOUT) {
        find(el); /* runs now if still connected, else after the reconnect */
        return;
    }
    if (!el->e) {
        elec_finish(el);
        return;
    }
    if (transient(m->rc))
        return; /* the session event that follows decides */
    char message[400];
    if (m->rc == ZNOAUTH)
        snprintf(message, sizeof message,
                 "not allowed to create %s (check auth.scheme/auth.credentials)", m->path);
    else if (m->rc == ZNONODE)
        snprintf(message, sizeof message, "cannot create %s: its parent could not be made",
                 m->path);
    else
        snprintf(message, sizeof message, "cannot create %s: %s", m->path, zerror(m->rc));
    elec_fail(el, message);
}

/* ---- followers ---- */

static void follow_read(zk_elec *el)
{
    zk_store *s = el->store;
    el->epoch++;
    el->phase = PH_FOLLOWING;
    if (!s->connected)
        return;
    zk_msg *m = req_new(s, el, OP_F_CHILDREN, el->dir);
    req_sent(m, zoo_awget_children2(s->conn->zh, el->dir, on_node_event, (void *)(uintptr_t)el->id,
                                    on_children, m));
}

static void on_follow_children(zk_elec *el, zk_msg *m)
{
    zk_store *s = el->store;
    void *token = (void *)(uintptr_t)el->id;
    if (m->rc == ZNONODE) {
        ls_election_leader(el->e, NULL, 0, 0);
        if (!el->e)
            return;
        zk_msg *d = req_new(s, el, OP_F_DIR, el->dir);
        req_sent(d, zoo_awexists(s->conn->zh, el->dir, on_node_event, token, on_stat, d));
        return;
    }
    if (m->rc != ZOK) {
        if (!transient(m->rc)) {
            char message[300];
            snprintf(message, sizeof message, "listing %s: %s", el->dir, zerror(m->rc));
            elec_fail(el, message);
        }
        return;
    }
    const char *lowest = NULL;
    long long lowest_seq = -1;
    for (int i = 0; i < m->nchildren; i++) {
        long long seq = child_seq(m->children[i]);
        if (seq >= 0 && (lowest_seq < 0 || seq < lowest_seq))
            lowest_seq = seq, lowest = m->children[i];
    }
    if (!lowest) {
        ls_election_leader(el->e, NULL, 0, 0);
        return;
    }
    char *path = child_path(el->dir, lowest);
    zk_msg *d = req_new(s, el, OP_F_DATA, path);
    req_sent(d, zoo_awget(s->conn->zh, path, on_node_event, token, on_data, d));
    free(path);
}

/* ---- replies, events, the session (loop thread) ---- */

static void on_reply(zk_store *s, zk_msg *m)
{
    zk_elec *el = m->elec;
    if (!s->conn || m->gen != s->conn->gen)
        return; /* from a session that is over: nothing of it is ours any more */
    if (m->op == OP_CREATE && s->creates_out > 0)
        s->creates_out--; /* give_turns sends the next, after this batch */
    if (m->op == OP_PING) {
        s->ping_out = false;
        if (m->rc != ZOK) {
            if (!transient(m->rc))
                ls_log(LS_WARN, "zookeeper: sync failed: %s", zerror(m->rc));
            ping_retry(s);
            return;
        }
        size_t n;
        zk_elec **all = elecs_pin(s, &n);
        for (size_t i = 0; i < n; i++) {
            if (synced(all[i])) {
                all[i]->proved_at = fmax(all[i]->proved_at, m->sent_at);
                ls_election_renewed(all[i]->e, valid_from(all[i], m->sent_at));
            }
        }
        elecs_unpin(all, n);
        ping_schedule(s);
        return;
    }
    if (m->op == OP_PARENT) {
        if (m->rc != ZOK && m->rc != ZNODEEXISTS && !transient(m->rc))
            ls_log(LS_DEBUG, "zookeeper: creating %s: %s", m->path, zerror(m->rc));
        return;
    }
    if (!el || el->phase == PH_DONE || m->op == OP_ORPHAN || m->op == OP_FIND_SYNC)
        return;
    if (m->op == OP_CREATE) {
        on_create_reply(el, m);
        return;
    }
    bool lost_connection = m->rc == ZCONNECTIONLOSS || m->rc == ZOPERATIONTIMEOUT;
    if (lost_connection && s->connected) {
        /* the connection came back before this reply got here: redo */
        resume(el);
        return;
    }
    if (!el->e) { /* cleaning up: only the steps that find and delete count */
        if (m->op == OP_FIND && el->phase == PH_FINDING)
            on_found(el, m);
        else if (m->op == OP_DELETE && !transient(m->rc))
            elec_finish(el);
        return;
    }
    if (m->epoch != el->epoch)
        return; /* a later step superseded it */
    switch (m->op) {
    case OP_FIND:
        on_found(el, m);
        break;
    case OP_FIND_STAT:
        if (m->rc == ZOK) {
            el->czxid = (uint64_t)m->stat.czxid;
            check(el);
        } else if (m->rc == ZNONODE) {
            start_create(el);
        }
        break;
    case OP_CHECK:
        if (!transient(m->rc))
            on_checked(el, m);
        break;
    case OP_WATCH_PRED:
        if (m->rc == ZNONODE)
            check(el); /* gone before the watch was set */
        break;
    case OP_LEADER_DATA:
        if (m->rc == ZOK)
            report_value(el, m);
        break;
    case OP_WATCH_OWN:
        if (m->rc == ZNONODE)
            node_gone(el);
        break;
    case OP_F_CHILDREN:
        on_follow_children(el, m);
        break;
    case OP_F_DATA:
        if (m->rc == ZOK)
            report_value(el, m);
        else if (m->rc == ZNONODE)
            follow_read(el);
        break;
    case OP_F_DIR:
        if (m->rc == ZOK)
            follow_read(el); /* made between the listing and the watch */
        break;
    default:
        break;
    }
}

static void on_watch(zk_store *s, zk_msg *m)
{
    zk_elec *el = s->elecs;
    while (el && el->id != m->token)
        el = el->next;
    if (!el || !el->e)
        return;
    if (!el->candidate) {
        follow_read(el);
        return;
    }
    if (el->phase != PH_QUEUED || !el->node)
        return;
    char *own = child_path(el->dir, el->node);
    bool about_own = !strcmp(m->path, own);
    free(own);
    if (about_own && el->leader) {
        if (m->type == ZOO_DELETED_EVENT)
            node_gone(el);
        else
            watch_own(el); /* watches fire once: set it again */
        return;
    }
    if (!about_own)
        check(el); /* the predecessor went (or changed): are we next? */
}

/* Connected: every election goes on from where it stood. */
static void resume(zk_elec *el)
{
    if (el->phase == PH_DONE)
        return;
    if (!el->e) {
        if (el->node)
            send_delete(el);
        else if (el->phase == PH_FINDING)
            find(el);
        return;
    }
    if (el->failure)
        return; /* its timer reports the failure */
    evtimer_del(el->timer);
    switch (el->phase) {
    case PH_PENDING:
        if (el->candidate)
            start_create(el);
        else
            follow_read(el);
        break;
    case PH_FINDING:
        find(el);
        break;
    case PH_QUEUED:
        check(el);
        break;
    case PH_FOLLOWING:
        follow_read(el);
        break;
    default:
        break;
    }
}

/* The session is gone (expired) or refused (authentication): every election
 * loses what it held. Expiry: join again on a new session. */
static void session_lost(zk_store *s, const char *why, bool fatal)
{
    conn_close(s);
    bool rejoin = false;
    size_t n;
    zk_elec **all = elecs_pin(s, &n);
    for (size_t i = 0; i < n; i++) {
        zk_elec *el = all[i];
        if (el->phase == PH_DONE)
            continue;
        if (!el->e) {
            elec_finish(el); /* its node went with the session */
            continue;
        }
        if (fatal) {
            elec_fail(el, why);
            continue;
        }
        bool was_leader = el->leader;
        el->leader = false;
        el->epoch++;
        free(el->node);
        el->node = NULL;
        wait_for_session(el);
        if (was_leader)
            ls_election_lost(el->e, "session");
        if (el->e)
            ls_election_error(el->e, why);
        if (el->e)
            rejoin = true;
    }
    elecs_unpin(all, n);
    if (rejoin && !s->conn) {
        char err[300];
        if (conn_open(s, err, sizeof err) < 0)
            ls_log(LS_ERROR, "zookeeper: %s", err);
    }
}

static void on_session(zk_store *s, int state)
{
    if (state == ZOO_CONNECTED_STATE) {
        bool first = s->negotiated == 0;
        s->connected = true;
        s->negotiated = zoo_recv_timeout(s->conn->zh) / 1000.0;
        if (first) {
            char granted[32];
            snprintf(granted, sizeof granted, "%.3f", s->negotiated);
            ls_log_event(LS_INFO, "zookeeper session", "store", s->owner->config.redacted,
                         "timeout", granted, NULL);
            if (!s->session_for_followers && zoo_recv_timeout(s->conn->zh) != s->session_ms)
                ls_log(LS_WARN,
                       "zookeeper: asked for a %.3f s session, the server granted %.3f s: "
                       "deadlines and handovers follow the granted one",
                       s->session_ms / 1000.0, s->negotiated);
        }
        size_t n;
        zk_elec **all = elecs_pin(s, &n);
        for (size_t i = 0; i < n && s->connected; i++)
            resume(all[i]);
        elecs_unpin(all, n);
        ping_schedule(s);
    } else if (state == ZOO_EXPIRED_SESSION_STATE) {
        ls_log_event(LS_WARN, "zookeeper session expired", "store", s->owner->config.redacted,
                     NULL);
        session_lost(s, "ZooKeeper session expired: joining again with a new session", false);
    } else if (state == ZOO_AUTH_FAILED_STATE) {
        session_lost(s, "ZooKeeper refused the credentials (auth.scheme/auth.credentials)", true);
    } else if (s->connected) {
        /* connecting again: the session may live on; leaders keep leading
         * until their deadline, which only an answer from the server moves */
        s->connected = false;
        size_t n;
        zk_elec **all = elecs_pin(s, &n);
        for (size_t i = 0; i < n; i++) {
            if (all[i]->e && all[i]->phase != PH_DONE)
                ls_election_error(all[i]->e, "connection to ZooKeeper lost: reconnecting");
        }
        elecs_unpin(all, n);
    }
}

static void dispatch(zk_store *s, zk_msg *m)
{
    bool current = s->conn && m->gen == s->conn->gen && !s->closed;
    switch (m->kind) {
    case MSG_SESSION:
        if (current)
            on_session(s, m->state);
        break;
    case MSG_WATCH:
        if (current)
            on_watch(s, m);
        break;
    case MSG_REPLY:
        if (!s->closed)
            on_reply(s, m);
        break;
    }
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    zk_store *s = arg;
    uint64_t count;
    if (read(s->wake_fd, &count, sizeof count) < 0 && errno != EAGAIN)
        ls_log(LS_ERROR, "zookeeper: reading the wake-up fd: %s", strerror(errno));
    pthread_mutex_lock(&s->lock);
    zk_msg *m = s->queue_head;
    s->queue_head = s->queue_tail = NULL;
    s->wake_pending = false;
    pthread_mutex_unlock(&s->lock);
    s->dispatching++;
    while (m) {
        zk_msg *next = m->queued;
        dispatch(s, m);
        msg_free(m);
        m = next;
    }
    if (!s->closed)
        give_turns(s);
    s->dispatching--;
    store_free_if_done(s);
}

/* ---- renewal: one sync per session, whatever the number of leaders ---- */

/* How often el's holding must be proved: a third of the session (or ttl,
 * if shorter), and at most half its valid window, so two syncs fall within
 * it (the two bounds agree at the default renew_deadline). */
static double ping_period(const zk_elec *el)
{
    double span = el->store->negotiated < el->ttl ? el->store->negotiated : el->ttl;
    return fmin(span / 3, valid_window(el) / 2);
}

/* False if no election leads (as synced() says). Else when the next sync
 * is due: a period after the oldest leader's proof. A new leader's proof
 * may be old already: under load the list that elected it waited long for
 * its answer, and its deadline is near. */
static bool ping_due(zk_store *s, double *due)
{
    bool found = false;
    for (zk_elec *el = s->elecs; el; el = el->next) {
        if (!synced(el))
            continue;
        double at = el->proved_at + ping_period(el);
        if (!found || at < *due)
            *due = at;
        found = true;
    }
    return found;
}

/* Arms the sync timer for when the next sync is due, or at once if that is
 * past. While a sync is out its answer schedules the next: one sent sooner
 * would only queue behind it. */
static void ping_schedule(zk_store *s)
{
    double due = 0;
    if (!s->connected || !ping_due(s, &due)) {
        evtimer_del(s->ping_timer);
        return;
    }
    if (s->ping_out)
        return;
    double now = ls_now();
    if (due < now)
        due = now;
    if (!evtimer_pending(s->ping_timer, NULL) || due < s->ping_at) {
        s->ping_at = due;
        timer_arm(s->ping_timer, due - now);
    }
}

/* After a sync failed: the next a shortest period later, not at once (the
 * leaders' proofs did not move, so their syncs are still due). A lost
 * connection schedules again when it comes back. */
static void ping_retry(zk_store *s)
{
    double period = 0;
    for (zk_elec *el = s->elecs; el; el = el->next) {
        if (synced(el) && (period == 0 || ping_period(el) < period))
            period = ping_period(el);
    }
    if (!s->connected || period == 0)
        return;
    s->ping_at = ls_now() + period;
    timer_arm(s->ping_timer, period);
}

static void on_ping_timer(evutil_socket_t fd, short what, void *arg)
{
    zk_store *s = arg;
    double due;
    if (!s->connected || s->ping_out || !ping_due(s, &due))
        return;
    /* a sync goes through the quorum leader: a server cut off from the
     * quorum cannot answer it from a stale view */
    zk_msg *m = req_new(s, NULL, OP_PING, "/");
    s->ping_out = true;
    req_sent(m, zoo_async(s->conn->zh, "/", on_string, m));
}

/* ---- the vtable ---- */

static void on_elec_timer(evutil_socket_t fd, short what, void *arg)
{
    zk_elec *el = arg;
    if (!el->e && el->holding_loop) {
        el->holding_loop = false;
        ls_loop_release();
        return;
    }
    if (!el->e || el->phase != PH_PENDING)
        return;
    el->refs++;
    char message[400];
    if (el->failure)
        snprintf(message, sizeof message, "%s", el->failure);
    else
        snprintf(message, sizeof message, "no ZooKeeper session: cannot reach '%s' within %g s",
                 el->store->owner->config.redacted, el->store->timeout);
    elec_fail(el, message);
    elec_unref(el);
}

/* Why the client would refuse `path` (from the URL: it starts with '/') as
 * a chroot, or NULL. */
static const char *chroot_problem(const char *path)
{
    if (path[strlen(path) - 1] == '/')
        return "it ends with '/'";
    for (const char *p = path; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return "it holds a control character";
        if (*p != '/')
            continue;
        size_t n = strcspn(p + 1, "/");
        if (n == 0)
            return "it has an empty component";
        if ((n == 1 && p[1] == '.') || (n == 2 && p[1] == '.' && p[2] == '.'))
            return "it has a '.' or '..' component";
    }
    return NULL;
}

static int zk_open(ls_store *store, const ls_store_config *cfg, char *err, size_t errlen)
{
    if (ls_config_check(cfg, zk_options, err, errlen) < 0)
        return -1;
    const char *scheme = ls_config_get(cfg, "auth.scheme");
    const char *credentials = ls_config_get(cfg, "auth.credentials");
    if (!credentials && cfg->userinfo)
        credentials = cfg->userinfo; /* zk://user:pass@host */
    if (credentials && !scheme)
        scheme = "digest";
    if (scheme && !credentials) {
        snprintf(err, errlen, "zk store: auth.scheme '%s' needs auth.credentials", scheme);
        return -1;
    }
    if (scheme && !strcmp(scheme, "digest") && !strchr(credentials, ':')) {
        snprintf(err, errlen, "zk store: digest auth.credentials must be 'user:password'");
        return -1;
    }
    double session = 0;
    if (ls_config_seconds(cfg, "session_timeout", &session, err, errlen) < 0)
        return -1;
    const char *session_text = ls_config_get(cfg, "session_timeout");
    if (session_text && !(session > 0 && session <= 3600)) {
        /* 0 would read as "not set", and more than ~24 days overflows the
         * client's int of milliseconds */
        snprintf(err, errlen,
                 "zk store option 'session_timeout' must be in (0, 3600] seconds, got '%s'",
                 session_text);
        return -1;
    }
    if (cfg->nhosts == 0) {
        snprintf(err, errlen, "zk store '%s' names no host", cfg->redacted);
        return -1;
    }
    bool chroot = cfg->path && strcmp(cfg->path, "") && strcmp(cfg->path, "/");
    const char *bad_chroot = chroot ? chroot_problem(cfg->path) : NULL;
    if (bad_chroot) {
        /* the client would refuse it on every connect, as "Invalid argument" */
        snprintf(err, errlen, "zk store '%s': chroot '%s' is not a ZooKeeper path: %s",
                 cfg->redacted, cfg->path, bad_chroot);
        return -1;
    }

    zk_store *s = calloc(1, sizeof *s);
    s->owner = store;
    s->timeout = cfg->timeout;
    s->option_ms = (int)ceil(session * 1000);
    size_t len = 1;
    for (size_t i = 0; i < cfg->nhosts; i++)
        len += strlen(cfg->hosts[i]) + 1;
    if (cfg->path)
        len += strlen(cfg->path);
    s->hosts = calloc(1, len);
    for (size_t i = 0; i < cfg->nhosts; i++) {
        if (i)
            strcat(s->hosts, ",");
        strcat(s->hosts, cfg->hosts[i]);
    }
    if (chroot)
        strcat(s->hosts, cfg->path); /* the client's chroot suffix */
    if (scheme) {
        s->auth_scheme = strdup(scheme);
        s->auth_credentials = strdup(credentials);
        /* created nodes: everything for whoever holds these credentials,
         * reading for everybody */
        s->acl_entries[0] = (struct ACL){ZOO_PERM_ALL, ZOO_AUTH_IDS};
        s->acl_entries[1] = (struct ACL){ZOO_PERM_READ, ZOO_ANYONE_ID_UNSAFE};
        s->acl = (struct ACL_vector){2, s->acl_entries};
    } else {
        s->acl = ZOO_OPEN_ACL_UNSAFE;
    }
    pthread_mutex_init(&s->lock, NULL);
    s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->wake_fd < 0) {
        snprintf(err, errlen, "zk store: eventfd: %s", strerror(errno));
        pthread_mutex_destroy(&s->lock);
        free(s->hosts);
        free(s->auth_scheme);
        free(s->auth_credentials);
        free(s);
        return -1;
    }
    s->wake_ev = event_new(ls_loop_base(), s->wake_fd, EV_READ | EV_PERSIST, on_wake, s);
    event_add(s->wake_ev, NULL);
    s->ping_timer = evtimer_new(ls_loop_base(), on_ping_timer, s);

    static bool client_log_set;
    if (!client_log_set) {
        client_log_set = true;
        zoo_set_debug_level(ZOO_LOG_LEVEL_INFO); /* into on_client_log, at our debug */
    }
    store->impl = s;
    return 0;
}

static zk_elec *elec_new(zk_store *s, ls_election *e)
{
    struct ls_election_view *v = ls_election_view(e);
    zk_elec *el = calloc(1, sizeof *el);
    el->store = s;
    el->e = e;
    el->id = ++s->next_id;
    el->refs = 1;
    el->candidate = v->candidate;
    el->ttl = v->ttl;
    el->renew_deadline = v->renew_deadline;
    el->timer = evtimer_new(ls_loop_base(), on_elec_timer, el);
    const char *key = v->key;
    while (*key == '/')
        key++;
    size_t n = strlen(key);
    while (n > 0 && key[n - 1] == '/')
        n--;
    if (asprintf(&el->dir, "/%.*s", (int)n, key) < 0)
        abort();
    el->next = s->elecs;
    if (s->elecs)
        s->elecs->prev = el;
    s->elecs = el;
    v->backend_data = el;
    return el;
}

/* The session was made with a follower's timeout and the first candidate
 * arrives: make it again with the candidate's. Only followers (and nodes
 * being cleaned up, which the old session takes along) are affected. */
static void session_reopen(zk_store *s)
{
    conn_close(s);
    s->session_for_followers = false;
    for (zk_elec *el = s->elecs, *next; el; el = next) {
        next = el->next;
        if (!el->e) {
            elec_finish(el);
        } else if (el->phase != PH_DONE) {
            el->epoch++;
            wait_for_session(el);
        }
    }
}

/* Starts el: at once if connected, on the connect otherwise. */
static void elec_start(zk_store *s, zk_elec *el)
{
    struct ls_election_view *v = ls_election_view(el->e);
    if (strlen(el->dir) < 2 || strstr(el->dir, "//")) {
        char message[300];
        snprintf(message, sizeof message, "key '%s' is not a ZooKeeper path", v->key);
        elec_fail_soon(el, message);
        return;
    }
    if (el->candidate && v->value_len > ZK_MAX_VALUE - 1024) {
        /* the server would drop the connection on every attempt */
        elec_fail_soon(el, "value too large for ZooKeeper (1 MiB per node)");
        return;
    }
    if (el->candidate && s->conn && s->session_for_followers)
        session_reopen(s);
    if (!s->conn) {
        /* The session timeout is the first candidate's ttl: what a crashed
         * leader costs. Followers alone take theirs until a candidate comes. */
        s->session_for_followers = !s->option_ms && !el->candidate;
        s->session_ms = s->option_ms ? s->option_ms : (int)(v->ttl * 1000);
        char err[300];
        if (conn_open(s, err, sizeof err) < 0) {
            elec_fail_soon(el, err);
            return;
        }
    }
    if (!s->connected)
        wait_for_session(el);
    else if (el->candidate)
        start_create(el);
    else
        follow_read(el);
}

static void zk_campaign(ls_store *store, ls_election *e)
{
    zk_store *s = store->impl;
    elec_start(s, elec_new(s, e));
}

static void zk_follow(ls_store *store, ls_election *e)
{
    zk_store *s = store->impl;
    elec_start(s, elec_new(s, e));
}

static void zk_cancel(ls_store *store, ls_election *e)
{
    struct ls_election_view *v = ls_election_view(e);
    zk_elec *el = v->backend_data;
    v->backend_data = NULL;
    if (el && el->e == e)
        elec_detach(el);
}

static void zk_close(ls_store *store)
{
    zk_store *s = store->impl;
    store->impl = NULL;
    s->closed = true;
    /* closing the session removes whatever nodes are still being cleaned up */
    while (s->elecs)
        elec_finish(s->elecs);
    evtimer_del(s->ping_timer);
    conn_close(s);
    store_free_if_done(s);
}

/* ---- test hooks ---- */

static void on_expirer_event(zhandle_t *zh, int type, int state, const char *path, void *ctx) {}

/* The way ZooKeeper's own tests expire a session: a second client joins it
 * with its id and password, then closes it. Blocks the loop while that
 * client connects: a test hook only. */
static int expire_session(zk_store *s, char *err, size_t errlen)
{
    clientid_t id = *zoo_client_id(s->conn->zh);
    zhandle_t *zh =
        zookeeper_init2(s->hosts, on_expirer_event, s->session_ms, &id, NULL, 0, on_client_log);
    if (!zh) {
        snprintf(err, errlen, "expire_session: %s", strerror(errno));
        return -1;
    }
    for (int i = 0; i < 500 && zoo_state(zh) != ZOO_CONNECTED_STATE; i++)
        usleep(10000);
    bool joined = zoo_state(zh) == ZOO_CONNECTED_STATE;
    zookeeper_close(zh);
    if (!joined) {
        snprintf(err, errlen, "expire_session: could not join the session within 5 s");
        return -1;
    }
    return 0;
}

static int zk_inject(ls_store *store, const char *fault, const char *arg, double value, char *err,
                     size_t errlen)
{
    zk_store *s = store->impl;
    if (!strcmp(fault, "lose_create_reply")) {
        s->lose_create_reply = true;
        return 0;
    }
    if (!strcmp(fault, "age_children_reply")) {
        s->age_children_reply = value;
        return 0;
    }
    if (!strcmp(fault, "expire_session")) {
        if (!s->connected) {
            snprintf(err, errlen, "expire_session: the store has no connected session");
            return -1;
        }
        return expire_session(s, err, errlen);
    }
    snprintf(err, errlen,
             "unknown zk fault '%s' (known: lose_create_reply, age_children_reply, expire_session)",
             fault);
    return -1;
}

const ls_backend ls_backend_zookeeper = {
    .scheme = "zk",
    .min_ttl = 1,
    .max_ttl = 3600,
    .open = zk_open,
    .campaign = zk_campaign,
    .follow = zk_follow,
    .cancel = zk_cancel,
    .close = zk_close,
    .inject = zk_inject,
};
