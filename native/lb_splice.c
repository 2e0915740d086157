// lb_splice: relays connected TCP socket pairs with splice(2), the bytes never entering user space.
//
// Shape (one instance per Node environment, so per worker thread; Node-API instance data):
// - JS hands over two connected sockets (their fds are dup()ed here; JS then closes its own copies).
// - One thread per instance runs an epoll loop (edge-triggered) and does all the splicing. libuv's
//   uv_poll_t would need uv.h, which the Node-API headers package does not ship; a thread of our own
//   keeps the build to Node-API alone and takes the byte moving off the JS thread.
// - Per direction: splice(in -> pipe) then splice(pipe -> out), SPLICE_F_NONBLOCK | SPLICE_F_MOVE.
//   The pipe is the only buffer, so a slow reader stops the reads from the sender (backpressure).
//   Pipes come from a pool and are held only while bytes are in them: an idle connection holds none.
// - Byte counts live in a Float64Array the JS side reads at any time (two doubles per connection, in
//   slabs of SLAB_SLOTS connections); the thread stores them with relaxed atomic stores.
// - Completions go back through one threadsafe function, batched: the JS callback gets
//   (slot, sent, rcvd, endCode, errno) once per connection.
//
// Semantics follow the JS relay (src/proxy/relay.ts): EOF on one side becomes shutdown(SHUT_WR) on the
// other (half-close per direction), the connection ends when both directions have ended; a reset on
// one side is passed on as a reset (SO_LINGER 0, then close) on the other; the first cause recorded is
// the one reported; idle timeout and abort close both sides.

#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

// End codes: the index into the JS side's list of reasons (keep in step with src/proxy/splice.ts).
enum { END_NONE = 0, END_CLIENT_CLOSE, END_BACKEND_CLOSE, END_RESET, END_IDLE, END_ABORTED, END_ERROR, END_CONNECT_FAILED };
// Not ends (the slot lives on): a connection made by connect() or connectAccepted() reached its
// backend; an accepted connection's connect failed (JS picks the next backend or closes it); a
// listener accepted a connection (it waits, pending, for JS to choose its backend); a listener stopped
// accepting for a moment (out of descriptors or memory).
#define EV_CONNECTED 100
#define EV_CONNECT_FAILED 101
#define EV_ACCEPTED 102
#define EV_ACCEPT_PAUSED 103
// accept_proxy: what a pending client sent so far, peeked (peek()), for JS's PROXY header parser.
#define EV_PEEKED 104
// Most bytes peek() looks at: JS asks for its parser's longest header (2064 bytes for PROXY v2).
#define PEEK_MAX 4096

#define SLAB_SLOTS 4096 // connections per counters slab (2 doubles each: 64 KiB)
#define BUDGET 16       // splice rounds per direction before other connections get a turn
#define MAX_EVENTS 256
// Connections accepted from one listener per wake-up (HAProxy's tune.maxaccept): the listening socket
// is level-triggered, so what is left is taken on the next turn, after the other listeners' and the
// connections' events: one busy listener cannot starve the rest.
#define MAX_ACCEPT 64
// How long a listener that hit EMFILE/ENFILE (or ENOBUFS/ENOMEM) stops accepting: the pending clients
// wait in the backlog instead of the thread spinning on a listener it cannot accept from.
#define ACCEPT_PAUSE_MS 100
// epoll data: a conn_t pointer with its side in bit 0, a listener with bit 1 set, 0 for the eventfd.
#define TAG_LISTENER 2
// While a connection waits for JS (pending), the thread looks for commands at least this often: a
// connect command comes without a wake-up (the backend socket's own readiness is the wake-up), and its
// connect timeout starts when the thread takes it.
#define PENDING_POLL_MS 10
#define SPLICE_FLAGS (SPLICE_F_NONBLOCK | SPLICE_F_MOVE)

typedef struct {
  int r, w;
  int cap; // bytes the pipe holds (F_GETPIPE_SZ): F_SETPIPE_SZ may have been refused
} pipe_t;

typedef struct {
  pipe_t p;       // p.r < 0: no pipe held
  size_t inpipe;  // bytes spliced in and not yet out
  uint64_t moved; // bytes read from this direction's input
  double *count;  // where JS reads `moved`
  bool eof;       // read EOF from the input
  bool shut;      // shutdown(SHUT_WR) done on the output
} dir_t;

struct idle_class;

typedef struct conn {
  atomic_int refs; // the thread's, the JS side's, and one per pending abort command
  uint32_t slot;
  int fd[2];         // 0 = client, 1 = backend
  bool rd[2], wr[2]; // readiness seen by the edge-triggered epoll and not yet used up
  dir_t d[2];        // d[0]: client -> backend, d[1]: backend -> client
  int reason, err;
  bool dead, ready;
  bool connecting;    // connect(): the backend side is not connected yet; nothing is relayed
  bool accepted;      // accepted here: a failed connect leaves it pending (JS fails over), not ended
  bool pending;       // accepted, no backend yet (fd[1] < 0): waits for connectAccepted() or abort()
  bool waiting;       // in JS's queue (wait()): while pending, a client that closes having sent nothing has left
  bool peeking;       // JS reads its PROXY header (peek()): each time more came, the bytes are posted
  bool rdhup;         // the client's FIN was seen while pending (no more bytes will come)
  uint32_t peek_max, peeked; // peek(): bytes looked at most, and posted so far
  uint8_t *pre;       // send_proxy: bytes for the backend before any of the client's (the PROXY header)
  uint32_t pre_len, pre_off;
  bool parked;        // JS thread only: wait() was called, so its connect command must wake the thread
  bool counted;       // holds a place under the connection limit (given back at its end)
  uint32_t lid;       // the listener that accepted it
  uint32_t early;     // events of a backend socket JS added before the thread took its command
  atomic_bool want_cmd; // the thread keeps such events and may sleep: the command must wake it
  struct sockaddr_storage peer;
  int64_t connect_ms; // its deadline's class (0 = none); idle_ms takes over once connected
  int64_t last;    // ms of the last byte moved (idle timeout)
  int64_t idle_ms; // 0 = no idle timeout
  struct idle_class *idle;
  struct conn *iprev, *inext; // in its idle class, oldest activity first
  struct conn *aprev, *anext; // every live connection of the thread
  struct conn *rnext;         // ready list: its budget ran out with work left
  struct conn *dnext;         // ended this turn
} conn_t;

// Connections with the same idle timeout, ordered by last activity: the head expires first.
typedef struct idle_class {
  int64_t ms;
  conn_t *head, *tail;
} idle_class_t;

// A listening socket owned by the addon (created on the JS thread, polled and closed by the thread).
typedef struct lsn {
  int fd;
  uint32_t id;         // JS's name for it
  bool paused;         // out of epoll until resume_at (accept ran out of descriptors or memory)
  bool closed;         // unlistened this turn: its events left in the batch are skipped; freed at the end
  uint32_t peek_max;   // accept_proxy: its clients are peeked at from their accept on (0: not)
  int64_t resume_at;
  struct lsn *next;    // the thread's list (pause and resume, the final close)
  struct lsn *jnext;   // the JS thread's list (unlisten by id)
} lsn_t;

enum { CMD_ADD, CMD_ABORT, CMD_CONNECT, CMD_LISTEN, CMD_UNLISTEN, CMD_WAIT, CMD_PEEK, CMD_SKIP, CMD_LISTEN_PEEK };
typedef struct cmd {
  int op;
  conn_t *c;
  lsn_t *l;
  // CMD_CONNECT: the backend socket (connecting, already in the epoll set), the timeouts, and the bytes
  // to write to it first (malloc'ed; owned by the command, then by the connection).
  int fd;
  int64_t connect_ms, idle_ms;
  uint8_t *pre;
  uint32_t pre_len;
  uint32_t n; // CMD_PEEK, CMD_LISTEN_PEEK: bytes to look at most; CMD_SKIP: bytes to drop
  struct cmd *next;
} cmd_t;

typedef struct {
  conn_t *c; // NULL for EV_ACCEPT_PAUSED
  uint32_t lid;
  int reason, err;
  double sent, rcvd;
  uint8_t *data; // EV_PEEKED: the bytes (malloc'ed, freed once delivered)
  uint32_t len;
} done_t;

typedef struct inst {
  napi_env env;
  napi_threadsafe_function tsfn;
  napi_ref on_end;
  napi_ref on_accept; // NULL until a listener is made (init's fourth argument)
  lsn_t *jlisteners;  // JS thread: the open listeners
  uint32_t nlisteners;
  int pipe_bytes; // wanted pipe size, 0 = kernel default
  int pool_max;   // idle pipes kept

  // JS thread only.
  napi_ref *slab_refs;
  double **slabs;
  uint32_t nslabs, next_slot;
  uint32_t *free_slots;
  uint32_t nfree, cap_free;
  conn_t **by_slot;
  uint32_t active;
  double connects; // connect() calls that reached the thread
  bool tsfn_refd, started;
  pthread_t thread;

  // Shared, under mu.
  pthread_mutex_t mu;
  cmd_t *cmd_head, *cmd_tail;
  bool stop;
  bool evfd_armed; // an eventfd wake-up is on its way to the thread: another is not needed
  bool js_armed;   // a threadsafe-function call is on its way to JS: another is not needed
  done_t *done;
  size_t ndone, cap_done;
  atomic_bool cmds_waiting; // set with a command (under mu), cleared when the thread takes them

  // Thread only.
  int ep, evfd;
  int64_t now;
  pipe_t *pool;
  int npool;
  idle_class_t **classes;
  int nclasses;
  conn_t *all, *ready, *dead;
  lsn_t *listeners, *closed_listeners;
  conn_t **later; // references dropped at the end of the turn (events for them may remain in it)
  size_t nlater, cap_later;
  // Accepted connections waiting for JS to choose (POLLED): while there are any, the thread polls for
  // commands (see PENDING_POLL_MS). Not counted: those in JS's queue (a waiter may wait for minutes, and
  // its connect command, when it is served, wakes the thread) and those whose PROXY header JS is reading
  // (a slow client may take accept_proxy_timeout; the command that ends the reading wakes the thread).
  uint32_t npending;
  bool at_limit; // at [global] maxconn: the listeners are out of the epoll set (limit_stop)

  // The connection limit (attachLimit), or NULL: no limit. Set by JS before its first listen().
  _Atomic int32_t *lim;
  napi_ref lim_ref; // keeps the shared memory it points into alive
  uint32_t region;  // this worker's index into the limit's per-worker counts
  struct inst *lim_next; // in g_limited while at_limit

  // Read from JS, written by the thread.
  atomic_long pipes_created, pipes_in_use, pipes_pooled, conns_live, pipe_cap_last, splice_calls;
  uint64_t splices; // thread only; published to splice_calls once per loop turn
} inst_t;

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void store_count(double *at, uint64_t v) {
  double d = (double)v;
  __atomic_store(at, &d, __ATOMIC_RELAXED);
}

// ---------------------------------------------------------------------------------------------------
// Pipe pool (thread only)

static bool pipe_take(inst_t *I, pipe_t *p) {
  if (I->npool > 0) {
    *p = I->pool[--I->npool];
    atomic_fetch_sub(&I->pipes_pooled, 1);
  } else {
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) return false;
    // A refusal (the user's pipe-page budget spent, size above pipe-max-size) leaves the default size.
    if (I->pipe_bytes > 0) (void)fcntl(fds[1], F_SETPIPE_SZ, I->pipe_bytes);
    int cap = fcntl(fds[1], F_GETPIPE_SZ);
    p->r = fds[0];
    p->w = fds[1];
    p->cap = cap > 0 ? cap : 65536;
    atomic_fetch_add(&I->pipes_created, 1);
    atomic_store(&I->pipe_cap_last, p->cap);
  }
  atomic_fetch_add(&I->pipes_in_use, 1);
  return true;
}

// An empty pipe goes back to the pool; one still holding bytes (a connection cut short) is closed.
static void pipe_give(inst_t *I, pipe_t *p, bool empty) {
  if (p->r < 0) return;
  atomic_fetch_sub(&I->pipes_in_use, 1);
  if (empty && I->npool < I->pool_max) {
    I->pool[I->npool++] = *p;
    atomic_fetch_add(&I->pipes_pooled, 1);
  } else {
    close(p->r);
    close(p->w);
  }
  p->r = p->w = -1;
}

// ---------------------------------------------------------------------------------------------------
// Idle timeout classes (thread only)

static void idle_unlink(conn_t *c) {
  idle_class_t *k = c->idle;
  if (!k) return;
  if (c->iprev) c->iprev->inext = c->inext;
  else k->head = c->inext;
  if (c->inext) c->inext->iprev = c->iprev;
  else k->tail = c->iprev;
  c->iprev = c->inext = NULL;
}

static void idle_append(conn_t *c) {
  idle_class_t *k = c->idle;
  c->iprev = k->tail;
  c->inext = NULL;
  if (k->tail) k->tail->inext = c;
  else k->head = c;
  k->tail = c;
}

static void touch(inst_t *I, conn_t *c) {
  c->last = I->now;
  if (c->idle && c->idle->tail != c) {
    idle_unlink(c);
    idle_append(c);
  }
}

// Few distinct timeouts exist (one per listener), so a list scan finds the class; classes are kept.
static idle_class_t *idle_class_for(inst_t *I, int64_t ms) {
  for (int i = 0; i < I->nclasses; i++)
    if (I->classes[i]->ms == ms) return I->classes[i];
  idle_class_t **grown = realloc(I->classes, (size_t)(I->nclasses + 1) * sizeof *grown);
  idle_class_t *k = calloc(1, sizeof *k);
  if (grown) I->classes = grown;
  if (!grown || !k) {
    free(k);
    return NULL;
  }
  k->ms = ms;
  I->classes[I->nclasses++] = k;
  return k;
}

// ---------------------------------------------------------------------------------------------------
// Ending a connection (thread only)

// Queues an event for JS; `wake`: call JS now (else it goes with the next wake-up, or a flush()).
static void post_raw(inst_t *I, done_t d, bool wake) {
  pthread_mutex_lock(&I->mu);
  if (I->ndone == I->cap_done) {
    size_t cap = I->cap_done ? I->cap_done * 2 : 64;
    done_t *grown = realloc(I->done, cap * sizeof *grown);
    if (!grown) abort(); // out of memory on a 64-byte-per-connection list: nothing sensible remains
    I->done = grown;
    I->cap_done = cap;
  }
  I->done[I->ndone++] = d;
  bool call = wake && !I->js_armed;
  if (call) I->js_armed = true;
  pthread_mutex_unlock(&I->mu);
  if (call) napi_call_threadsafe_function(I->tsfn, NULL, napi_tsfn_nonblocking);
}

static void post_event(inst_t *I, conn_t *c, int code) {
  // An accepted connection's EV_CONNECTED does not wake JS: what it tells (the connect time, that the
  // backend took it) goes with the next event, at the latest its end, or a flush() before counters are
  // read. One JS wake-up per connection saved; the slot was taken before the connect started.
  bool wake = !(code == EV_CONNECTED && c->accepted);
  post_raw(I, (done_t){c, c->lid, code, c->err, (double)c->d[0].moved, (double)c->d[1].moved, NULL, 0}, wake);
}

static void unref_later(inst_t *I, conn_t *c) {
  if (I->nlater == I->cap_later) {
    size_t cap = I->cap_later ? I->cap_later * 2 : 16;
    conn_t **grown = realloc(I->later, cap * sizeof *grown);
    if (!grown) abort(); // out of memory for a pointer list: nothing sensible remains
    I->later = grown;
    I->cap_later = cap;
  }
  I->later[I->nlater++] = c;
}

static void post_done(inst_t *I, conn_t *c) { post_event(I, c, c->reason); }

static void reset_close(int fd) {
  struct linger lg = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(fd);
}

// rst[i]: close side i with a reset instead of an orderly close.
static void limit_give(inst_t *I);

// A pending connection the thread polls for commands for (see npending).
#define POLLED(c) ((c)->pending && !(c)->waiting && !(c)->peeking)

// After a change of `c`'s pending/waiting/peeking that left POLLED(c) as `was` before it.
static void polled_changed(inst_t *I, conn_t *c, bool was) {
  bool now = POLLED(c);
  if (now != was) I->npending += now ? 1u : (uint32_t)-1;
}

static void conn_end(inst_t *I, conn_t *c, int reason, int err, bool rst0, bool rst1) {
  if (c->dead) return;
  // Atomic, and before its descriptors close: JS's localAddress() reads it after getsockname() to tell
  // whether the descriptor it asked about may already have been closed (and its number reused).
  __atomic_store_n(&c->dead, true, __ATOMIC_SEQ_CST);
  if (POLLED(c)) I->npending--;
  free(c->pre);
  c->pre = NULL;
  if (c->reason == END_NONE) {
    c->reason = reason;
    c->err = err;
  }
  idle_unlink(c);
  if (c->aprev) c->aprev->anext = c->anext;
  else I->all = c->anext;
  if (c->anext) c->anext->aprev = c->aprev;
  for (int i = 0; i < 2; i++) {
    if (c->fd[i] < 0) continue; // an accepted connection without a backend
    // JS may not have closed its copy of a relay()/connect() client yet; an accepted connection's
    // descriptors are the only ones, and closing them is enough.
    if (!c->accepted) epoll_ctl(I->ep, EPOLL_CTL_DEL, c->fd[i], NULL);
    if (i == 0 ? rst0 : rst1) reset_close(c->fd[i]);
    else close(c->fd[i]);
    pipe_give(I, &c->d[i].p, c->d[i].inpipe == 0);
  }
  atomic_fetch_sub(&I->conns_live, 1);
  if (c->counted) limit_give(I); // its descriptors are closed: the place is free
  post_done(I, c);
  // Events for it may still sit in this turn's batch: the thread's reference goes at the end of the turn.
  c->dnext = I->dead;
  I->dead = c;
}

static bool is_reset_errno(int e) {
  return e == ECONNRESET || e == EPIPE || e == ETIMEDOUT || e == ECONNABORTED || e == EHOSTUNREACH ||
         e == ENETUNREACH || e == ENETDOWN || e == EHOSTDOWN || e == ECONNREFUSED;
}

// A socket error on side `side`: that side closes, the other is reset (as relay.ts's reset()).
// Anything else (a pipe that cannot be had, an unexpected errno) resets both and is reported as 'error'.
static void conn_fail(inst_t *I, conn_t *c, int side, int err) {
  if (is_reset_errno(err)) conn_end(I, c, END_RESET, err, side != 0, side != 1);
  else conn_end(I, c, END_ERROR, err, true, true);
}

// ---------------------------------------------------------------------------------------------------
// Moving bytes (thread only)

// send_proxy: writes the bytes that go to the backend before any of the client's. 1 once all are out,
// 0 while the backend cannot take them yet (its EPOLLOUT brings the rest), -1 if the connection ended.
// They are a header of at most a few hundred bytes on a socket just connected, so in practice the first
// send() takes them whole.
static int preface_send(inst_t *I, conn_t *c) {
  while (c->pre_off < c->pre_len) {
    if (!c->wr[1]) return 0;
    ssize_t n = send(c->fd[1], c->pre + c->pre_off, c->pre_len - c->pre_off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c->pre_off += (uint32_t)n;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      c->wr[1] = false;
    } else if (!(n < 0 && errno == EINTR)) {
      conn_fail(I, c, 1, n < 0 ? errno : EIO);
      return -1;
    }
  }
  free(c->pre);
  c->pre = NULL;
  return 1;
}

// Runs one direction until it would block or its budget is spent. Returns -1 if the connection
// ended, 1 if the budget ran out with work left, 0 otherwise.
static int pump(inst_t *I, conn_t *c, int di) {
  if (di == 0 && c->pre) {
    // Nothing of the client's moves before the preface is out (the client is not even read: its
    // bytes wait in its socket, so what came with its own PROXY header follows ours, in order).
    int r = preface_send(I, c);
    if (r <= 0) return r;
  }
  dir_t *d = &c->d[di];
  int in = di, out = 1 - di;
  int round;
  for (round = 0; round < BUDGET; round++) {
    bool progress = false;
    if (d->inpipe > 0 && c->wr[out]) {
      ssize_t n = splice(d->p.r, NULL, c->fd[out], NULL, d->inpipe, SPLICE_FLAGS);
      I->splices++;
      if (n > 0) {
        d->inpipe -= (size_t)n;
        progress = true;
        touch(I, c);
      } else if (n < 0 && errno == EAGAIN) {
        c->wr[out] = false;
      } else if (!(n < 0 && errno == EINTR)) {
        conn_fail(I, c, out, n < 0 ? errno : EIO);
        return -1;
      }
    }
    if (d->eof && d->inpipe == 0 && !d->shut) {
      d->shut = true;
      if (shutdown(c->fd[out], SHUT_WR) < 0 && errno != ENOTCONN) {
        conn_fail(I, c, out, errno);
        return -1;
      }
    }
    int room = d->p.r >= 0 ? d->p.cap - (int)d->inpipe : 1;
    if (!d->eof && c->rd[in] && room > 0) {
      if (d->p.r < 0) {
        if (!pipe_take(I, &d->p)) {
          conn_fail(I, c, in, errno);
          return -1;
        }
        room = d->p.cap;
      }
      ssize_t n = splice(c->fd[in], NULL, d->p.w, NULL, (size_t)room, SPLICE_FLAGS);
      I->splices++;
      if (n > 0) {
        d->inpipe += (size_t)n;
        d->moved += (uint64_t)n;
        store_count(d->count, d->moved);
        progress = true;
        touch(I, c);
      } else if (n == 0) {
        d->eof = true;
        if (c->reason == END_NONE) c->reason = di == 0 ? END_CLIENT_CLOSE : END_BACKEND_CLOSE;
        progress = true;
      } else if (errno == EAGAIN) {
        // Ambiguous: the socket is empty, or the pipe is out of slots (a pipe has a fixed number of
        // buffers and a socket's small segments can use them up before its byte size is reached).
        // Only an empty pipe tells the socket is empty; otherwise drain first and read again.
        if (d->inpipe == 0) c->rd[in] = false;
      } else if (errno != EINTR) {
        conn_fail(I, c, in, errno);
        return -1;
      }
    }
    if (!progress) break;
  }
  if (d->inpipe == 0) pipe_give(I, &d->p, true);
  return round == BUDGET ? 1 : 0;
}

static void service(inst_t *I, conn_t *c) {
  int more = 0;
  for (int di = 0; di < 2; di++) {
    int r = pump(I, c, di);
    if (r < 0) return;
    more |= r;
  }
  if (c->d[0].shut && c->d[1].shut) {
    // Both directions ended: an orderly close of both (no unread bytes remain, so no RST is sent).
    conn_end(I, c, END_NONE, 0, false, false);
    return;
  }
  if (more && !c->ready) {
    c->ready = true;
    c->rnext = I->ready;
    I->ready = c;
  }
}

static void conn_unref(conn_t *c) {
  if (atomic_fetch_sub(&c->refs, 1) == 1) free(c);
}

// ---------------------------------------------------------------------------------------------------
// The thread

static void link_conn(inst_t *I, conn_t *c) {
  c->aprev = NULL;
  c->anext = I->all;
  if (I->all) I->all->aprev = c;
  I->all = c;
  atomic_fetch_add(&I->conns_live, 1);
  c->last = I->now;
}

// Puts `c` in the timeout class of its stage: while connecting, the connect timeout runs as an "idle"
// class of its own (the same ordered lists and the same wake-up; expire_idle() tells the two apart).
static bool set_timeout_class(inst_t *I, conn_t *c) {
  idle_unlink(c);
  c->idle = NULL;
  c->last = I->now;
  int64_t ms = c->connecting ? c->connect_ms : c->pending ? 0 : c->idle_ms;
  if (ms <= 0) return true;
  c->idle = idle_class_for(I, ms);
  if (!c->idle) return false;
  idle_append(c);
  return true;
}

static bool watch_side(inst_t *I, conn_t *c, int side) {
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.u64 = (uintptr_t)c | (uintptr_t)side};
  return epoll_ctl(I->ep, EPOLL_CTL_ADD, c->fd[side], &ev) == 0;
}

static void add_conn(inst_t *I, conn_t *c) {
  link_conn(I, c);
  if (!set_timeout_class(I, c)) {
    conn_end(I, c, END_ERROR, ENOMEM, true, true);
    return;
  }
  for (int i = 0; i < 2; i++) {
    if (!watch_side(I, c, i)) {
      conn_end(I, c, END_ERROR, errno, true, true);
      return;
    }
  }
}

// Enters or leaves the pending state, keeping npending (the connections the thread polls for) right.
static void pending_set(inst_t *I, conn_t *c, bool on) {
  bool was = POLLED(c);
  c->pending = on;
  polled_changed(I, c, was);
}

// An accepted connection's connect failed (at once, refused, timed out): its backend socket goes, and
// it is pending again, for JS to try the next backend or close it.
static void connect_retry(inst_t *I, conn_t *c, int err) {
  epoll_ctl(I->ep, EPOLL_CTL_DEL, c->fd[1], NULL);
  close(c->fd[1]);
  c->fd[1] = -1;
  c->rd[1] = c->wr[1] = false;
  c->connecting = false;
  free(c->pre); // the next backend's connect brings its own (its send_proxy may differ)
  c->pre = NULL;
  pending_set(I, c, true);
  (void)set_timeout_class(I, c); // no timeout while pending: cannot fail
  c->err = err;
  post_event(I, c, EV_CONNECT_FAILED);
  c->err = 0;
}

// A backend connect failed: an accepted connection fails over in JS, a connect()ed one ends.
static void connect_failed(inst_t *I, conn_t *c, int err) {
  if (c->accepted) connect_retry(I, c, err);
  else conn_end(I, c, END_CONNECT_FAILED, err, false, false);
}

static bool connect_event(inst_t *I, conn_t *c, int side, uint32_t e);

// A waiting client's side closed (or may have: readiness was seen before wait()): it has left if nothing
// it sent is waiting to be read (it gave up; closing its socket sent a FIN), and stays if its request is
// there (it half-closed after sending it, and is served as any other client, as in relay.ts). MSG_PEEK
// reads nothing: the bytes stay for the backend.
static void waiter_check(inst_t *I, conn_t *c) {
  if (c->dead || !c->pending || !c->waiting) return;
  char b;
  ssize_t n = recv(c->fd[0], &b, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n == 0) conn_end(I, c, END_CLIENT_CLOSE, 0, false, false);
  else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) conn_end(I, c, END_RESET, errno, false, false);
}

// accept_proxy: what the client sent so far, looked at without being consumed (MSG_PEEK: what follows
// its header stays in the socket and is spliced to the backend like any byte after it), posted to JS
// when more came than last time, or when the client half-closed (no more will come). The client's
// socket is edge-triggered: each arrival of bytes is an event, so nothing is looked at twice for nothing.
static void peek_check(inst_t *I, conn_t *c) {
  if (c->dead || !c->pending || !c->peeking) return;
  uint8_t buf[PEEK_MAX];
  ssize_t n = recv(c->fd[0], buf, c->peek_max, MSG_PEEK | MSG_DONTWAIT);
  if (n < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) conn_end(I, c, END_RESET, errno, false, false);
    return;
  }
  if (n == 0) {
    conn_end(I, c, END_CLIENT_CLOSE, 0, false, false); // closed having sent nothing (more)
    return;
  }
  if ((uint32_t)n == c->peeked && !c->rdhup) return;
  uint8_t *copy = malloc((size_t)n);
  if (!copy) {
    conn_end(I, c, END_ERROR, ENOMEM, true, false);
    return;
  }
  memcpy(copy, buf, (size_t)n);
  c->peeked = (uint32_t)n;
  if (c->rdhup) {
    bool was = POLLED(c);
    c->peeking = false; // JS hears that no more will come: it decides with what it has
    polled_changed(I, c, was);
  }
  post_raw(I, (done_t){c, c->lid, EV_PEEKED, c->rdhup ? 1 : 0, 0, 0, copy, (uint32_t)n}, true);
}

// The PROXY header JS read (its first `n` bytes, peeked before) is dropped from the client's socket;
// the connection is an ordinary pending one again, whose connect command follows.
static void peek_skip(inst_t *I, conn_t *c, uint32_t n) {
  if (c->dead) return;
  bool was = POLLED(c);
  c->peeking = false;
  polled_changed(I, c, was);
  uint8_t junk[PEEK_MAX];
  for (int tries = 0; n > 0 && tries < 8; tries++) {
    ssize_t r = recv(c->fd[0], junk, n < sizeof junk ? n : sizeof junk, MSG_DONTWAIT);
    if (r > 0) n -= (uint32_t)r;
    else if (r < 0 && errno == EINTR) continue;
    else {
      // The bytes were there when peeked, so only a reset takes them away.
      conn_end(I, c, r < 0 && errno != EAGAIN ? END_RESET : END_ERROR, r < 0 ? errno : EIO, false, false);
      return;
    }
  }
  if (n > 0) conn_end(I, c, END_ERROR, EIO, true, false);
}

// CMD_CONNECT: the backend socket of an accepted connection, made and connected on the JS thread (see
// connectAccepted()) and already in the epoll set, which is why the command needs no wake-up of its own.
static void connect_start(inst_t *I, cmd_t *cmd) {
  conn_t *c = cmd->c;
  if (c->dead || !c->pending) {
    close(cmd->fd); // the client left meanwhile (its end is on its way to JS); closing drops it from epoll
    return;
  }
  pending_set(I, c, false);
  c->fd[1] = cmd->fd;
  c->pre = cmd->pre;
  c->pre_len = cmd->pre_len;
  c->pre_off = 0;
  cmd->pre = NULL;
  c->connecting = true;
  c->connect_ms = cmd->connect_ms;
  c->idle_ms = cmd->idle_ms;
  if (!set_timeout_class(I, c)) {
    conn_end(I, c, END_ERROR, ENOMEM, true, true);
    return;
  }
  atomic_store_explicit(&c->want_cmd, false, memory_order_relaxed);
  if (c->early) {
    // Its socket's events came before this command (edge-triggered: they will not come again).
    uint32_t e = c->early;
    c->early = 0;
    if (connect_event(I, c, 1, e)) service(I, c);
  }
}

// ---------------------------------------------------------------------------------------------------
// The connection limit ([global] maxconn), one per lb, shared by all its workers: Int32 fields in lb's
// shared memory (src/shared/state.ts, G_*), changed by JS with Atomics and here with C11 atomics on the
// same words. A thread takes a place before each accept4(); at the limit its listeners leave the epoll
// set (clients wait in the kernel's backlog, as with HAProxy's maxconn) until a place is given back.

#define G_CUR 0
#define G_MAX 1
#define G_REACHED 2
#define G_LIMITED 4
#define G_HELD 8

// Threads at their limit (any lb in this process), for a release to wake. Under g_limited_mu.
static pthread_mutex_t g_limited_mu = PTHREAD_MUTEX_INITIALIZER;
static struct inst *g_limited;

// A place for one more connection, or false at the limit. A compare-and-swap: exact across workers.
static bool limit_take(inst_t *I) {
  _Atomic int32_t *g = I->lim;
  if (!g) return true;
  int32_t cur = atomic_load(&g[G_CUR]);
  for (;;) {
    int32_t max = atomic_load(&g[G_MAX]);
    if (max > 0 && cur >= max) return false;
    if (atomic_compare_exchange_weak(&g[G_CUR], &cur, cur + 1)) break;
  }
  atomic_fetch_add(&g[G_HELD + I->region], 1);
  return true;
}

// Wakes every thread paused at limit `g` (each looks again at the end of its turn: limit_check).
static void limit_wake(_Atomic int32_t *g) {
  pthread_mutex_lock(&g_limited_mu);
  for (inst_t *o = g_limited; o; o = o->lim_next) {
    if (o->lim != g) continue;
    uint64_t one = 1;
    (void)!write(o->evfd, &one, sizeof one);
  }
  pthread_mutex_unlock(&g_limited_mu);
}

static void limit_give(inst_t *I) {
  _Atomic int32_t *g = I->lim;
  atomic_fetch_sub(&g[G_HELD + I->region], 1);
  atomic_fetch_sub(&g[G_CUR], 1);
  // Read after the release: a thread that paused before it is listed, one that pauses after it sees it.
  if (atomic_load(&g[G_LIMITED]) > 0) limit_wake(g);
}

static void limited_unlist(inst_t *I) {
  pthread_mutex_lock(&g_limited_mu);
  for (inst_t **at = &g_limited; *at; at = &(*at)->lim_next) {
    if (*at == I) {
      *at = I->lim_next;
      break;
    }
  }
  pthread_mutex_unlock(&g_limited_mu);
}

// At the limit: this thread's listeners leave the epoll set until a release wakes it.
static void limit_stop(inst_t *I) {
  if (I->at_limit) return;
  I->at_limit = true;
  for (lsn_t *L = I->listeners; L; L = L->next)
    if (!L->paused) epoll_ctl(I->ep, EPOLL_CTL_DEL, L->fd, NULL);
  pthread_mutex_lock(&g_limited_mu);
  I->lim_next = g_limited;
  g_limited = I;
  pthread_mutex_unlock(&g_limited_mu);
  atomic_fetch_add(&I->lim[G_REACHED], 1);
  atomic_fetch_add(&I->lim[G_LIMITED], 1); // after listing, so that a releaser who sees it finds this thread
}

static bool listener_watch(inst_t *I, lsn_t *L);
static void listener_pause(inst_t *I, lsn_t *L, int err);

// End of each turn: below the limit again (a release, or a higher maxconn), the listeners come back.
// It looks after limit_stop counted this thread in G_LIMITED, so a release in between is never missed.
static void limit_check(inst_t *I) {
  if (!I->at_limit) return;
  int32_t max = atomic_load(&I->lim[G_MAX]);
  if (max > 0 && atomic_load(&I->lim[G_CUR]) >= max) return;
  I->at_limit = false;
  atomic_fetch_sub(&I->lim[G_LIMITED], 1);
  limited_unlist(I);
  for (lsn_t *L = I->listeners; L; L = L->next)
    if (!L->paused && !listener_watch(I, L)) listener_pause(I, L, errno);
}

// ---------------------------------------------------------------------------------------------------
// Listening sockets (thread only)

static bool listener_watch(inst_t *I, lsn_t *L) {
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uintptr_t)L | TAG_LISTENER};
  return epoll_ctl(I->ep, EPOLL_CTL_ADD, L->fd, &ev) == 0;
}

static void listener_pause(inst_t *I, lsn_t *L, int err) {
  epoll_ctl(I->ep, EPOLL_CTL_DEL, L->fd, NULL);
  L->paused = true;
  L->resume_at = I->now + ACCEPT_PAUSE_MS;
  post_raw(I, (done_t){NULL, L->id, EV_ACCEPT_PAUSED, err, 0, 0, NULL, 0}, true);
}

static void listeners_resume(inst_t *I) {
  for (lsn_t *L = I->listeners; L; L = L->next) {
    if (L->paused && L->resume_at <= I->now) {
      L->paused = false;
      if (!I->at_limit && !listener_watch(I, L)) listener_pause(I, L, errno); // else limit_check adds it
    }
  }
}

// Accepts up to MAX_ACCEPT clients: each becomes a pending connection, its client side watched (a reset
// while JS chooses is seen), and is posted to JS (EV_ACCEPTED) in the batch of this turn.
static void accept_batch(inst_t *I, lsn_t *L) {
  for (int i = 0; i < MAX_ACCEPT; i++) {
    if (!limit_take(I)) {
      limit_stop(I);
      return;
    }
    struct sockaddr_storage peer;
    socklen_t len = sizeof peer;
    // SOCK_NONBLOCK: no fcntl; TCP_NODELAY and SO_KEEPALIVE come from the listening socket.
    int fd = accept4(L->fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      if (I->lim) limit_give(I); // the place taken for it
      if (err == EINTR || err == ECONNABORTED || err == EPROTO) continue; // that client went before accept
      // Out of descriptors or memory: those clients wait in the backlog (the pause is logged once).
      if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) listener_pause(I, L, err);
      return; // EAGAIN: the backlog is empty (EINVAL: unlistened, closed when its command runs)
    }
    conn_t *c = calloc(1, sizeof *c);
    if (!c) {
      close(fd);
      if (I->lim) limit_give(I);
      listener_pause(I, L, ENOMEM);
      return;
    }
    c->counted = I->lim != NULL;
    c->fd[0] = fd;
    c->fd[1] = -1;
    for (int s = 0; s < 2; s++) c->d[s].p.r = c->d[s].p.w = -1;
    c->accepted = true;
    if (L->peek_max > 0) {
      // accept_proxy: the header is looked at from the first event on, without waiting for JS to ask,
      // so that bytes sent just before a reset (a proxy in front giving up) are seen, as on the Node path.
      c->peeking = true;
      c->peek_max = L->peek_max;
    }
    pending_set(I, c, true);
    c->lid = L->id;
    c->peer = peer;
    atomic_init(&c->refs, 2); // the thread's and JS's (from EV_ACCEPTED on)
    link_conn(I, c);
    post_event(I, c, EV_ACCEPTED); // before anything else of it: JS gives it its slot first
    if (!watch_side(I, c, 0)) conn_end(I, c, END_ERROR, errno, false, false);
  }
}

static void listener_close(inst_t *I, lsn_t *L) {
  for (lsn_t **at = &I->listeners; *at; at = &(*at)->next) {
    if (*at == L) {
      *at = L->next;
      break;
    }
  }
  if (!L->paused) epoll_ctl(I->ep, EPOLL_CTL_DEL, L->fd, NULL);
  close(L->fd); // clients still in its backlog are reset by the kernel, as with any closed listener
  L->closed = true;
  L->next = I->closed_listeners; // its events may remain in this turn's batch
  I->closed_listeners = L;
}

// Runs the commands sent so far. `woken`: the eventfd said so (its count is consumed here).
static void run_commands(inst_t *I, bool *stop, bool woken) {
  if (woken) {
    uint64_t junk;
    (void)!read(I->evfd, &junk, sizeof junk);
  }
  pthread_mutex_lock(&I->mu);
  cmd_t *list = I->cmd_head;
  I->cmd_head = I->cmd_tail = NULL;
  if (woken) I->evfd_armed = false;
  atomic_store_explicit(&I->cmds_waiting, false, memory_order_relaxed);
  *stop = I->stop;
  pthread_mutex_unlock(&I->mu);
  while (list) {
    cmd_t *next = list->next;
    switch (list->op) {
    case CMD_ADD:
      add_conn(I, list->c);
      break;
    case CMD_ABORT:
      conn_end(I, list->c, END_ABORTED, 0, false, false);
      conn_unref(list->c);
      break;
    case CMD_CONNECT:
      connect_start(I, list);
      unref_later(I, list->c); // a dead one's events may be in this turn's batch
      break;
    case CMD_LISTEN:
      list->l->next = I->listeners;
      I->listeners = list->l;
      if (!I->at_limit && !listener_watch(I, list->l)) listener_pause(I, list->l, errno); // else limit_check adds it
      break;
    case CMD_UNLISTEN:
      listener_close(I, list->l);
      break;
    case CMD_LISTEN_PEEK:
      if (!list->l->closed) list->l->peek_max = list->n < PEEK_MAX ? list->n : PEEK_MAX;
      break;
    case CMD_WAIT:
      if (!list->c->dead && !list->c->waiting) {
        bool was = POLLED(list->c);
        list->c->waiting = true; // no polling for it: its connect command wakes the thread
        polled_changed(I, list->c, was);
        if (list->c->rd[0]) waiter_check(I, list->c); // it may have closed before this command came
      }
      conn_unref(list->c); // the thread's own reference outlives this turn
      break;
    case CMD_PEEK:
      if (!list->c->dead && list->c->pending && !list->c->peeking) {
        bool was = POLLED(list->c);
        list->c->peeking = true;
        list->c->peek_max = list->n < PEEK_MAX ? list->n : PEEK_MAX;
        polled_changed(I, list->c, was);
        if (list->c->rd[0]) peek_check(I, list->c); // its bytes (or FIN) came before this command
      }
      conn_unref(list->c);
      break;
    case CMD_SKIP:
      peek_skip(I, list->c, list->n);
      conn_unref(list->c);
      break;
    }
    free(list->pre); // a connect's preface its connection did not take (the client left)
    free(list);
    list = next;
  }
}

static int next_timeout(inst_t *I) {
  if (I->ready) return 0;
  int64_t best = I->npending > 0 ? PENDING_POLL_MS : -1;
  for (lsn_t *L = I->listeners; L; L = L->next) {
    if (!L->paused) continue;
    int64_t left = L->resume_at > I->now ? L->resume_at - I->now : 0;
    if (best < 0 || left < best) best = left;
  }
  for (int i = 0; i < I->nclasses; i++) {
    conn_t *h = I->classes[i]->head;
    if (!h) continue;
    int64_t left = h->last + I->classes[i]->ms - I->now;
    if (left < 0) left = 0;
    if (best < 0 || left < best) best = left;
  }
  return best > INT32_MAX ? INT32_MAX : (int)best;
}

static void expire_idle(inst_t *I) {
  for (int i = 0; i < I->nclasses; i++) {
    idle_class_t *k = I->classes[i];
    // Bounded: each pass removes the head.
    while (k->head && k->head->last + k->ms <= I->now) {
      conn_t *c = k->head;
      if (c->connecting) connect_failed(I, c, ETIMEDOUT);
      else conn_end(I, c, END_IDLE, 0, false, false);
    }
  }
}

static int sock_error(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return errno;
  return err;
}

// An event on a connection whose backend connect is in flight. Returns true once it is connected (the
// caller then relays as usual). The client's own readiness is kept for then; of the client only an
// error counts now (a client that sent its request and half-closed is still served, as in relay.ts).
static bool connect_event(inst_t *I, conn_t *c, int side, uint32_t e) {
  if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) c->rd[side] = true;
  if (e & (EPOLLOUT | EPOLLHUP | EPOLLERR)) c->wr[side] = true;
  if (side == 0) {
    int err = (e & EPOLLERR) ? sock_error(c->fd[0]) : 0;
    if (err != 0) conn_end(I, c, END_RESET, err, false, false); // the backend is not connected: just closed
    return false;
  }
  if (!(e & (EPOLLOUT | EPOLLHUP | EPOLLERR))) return false;
  // Writable without an error flag is a completed connect (no getsockopt needed, as in HAProxy); with
  // one, SO_ERROR says why it failed (a HUP without an error is no connection either).
  int err = 0;
  if (e & (EPOLLERR | EPOLLHUP)) {
    err = sock_error(c->fd[1]);
    if (err == 0) err = ECONNREFUSED;
  }
  if (err != 0) {
    connect_failed(I, c, err);
    return false;
  }
  c->connecting = false;
  if (!set_timeout_class(I, c)) {
    conn_end(I, c, END_ERROR, ENOMEM, true, true);
    return false;
  }
  post_event(I, c, EV_CONNECTED);
  return true;
}

static void *thread_main(void *arg) {
  inst_t *I = arg;
  struct epoll_event evs[MAX_EVENTS];
  bool stop = false;
  while (!stop) {
    int n = epoll_wait(I->ep, evs, MAX_EVENTS, next_timeout(I));
    I->now = now_ms();
    if (atomic_load_explicit(&I->cmds_waiting, memory_order_acquire)) run_commands(I, &stop, false);
    for (int i = 0; i < n; i++) {
      if (evs[i].data.u64 == 0) {
        run_commands(I, &stop, true);
        continue;
      }
      if (evs[i].data.u64 & TAG_LISTENER) {
        lsn_t *L = (lsn_t *)(uintptr_t)(evs[i].data.u64 & ~(uint64_t)TAG_LISTENER);
        if (!L->closed) accept_batch(I, L); // a closed one is freed only at the end of the turn
        continue;
      }
      conn_t *c = (conn_t *)(uintptr_t)(evs[i].data.u64 & ~(uint64_t)1);
      int side = (int)(evs[i].data.u64 & 1);
      if (c->dead) continue;
      uint32_t e = evs[i].events;
      if (c->pending) {
        // Waiting for JS to choose: only the client is there, and only its error counts (as connecting),
        // or, for a client waiting in the queue, its close.
        if (side == 0) {
          if ((e & (EPOLLRDHUP | EPOLLHUP)) && !(e & EPOLLERR)) c->rdhup = true; // a FIN, not a reset
          // A client whose PROXY header is read: what it sent before its FIN or its reset is looked at
          // first, as a read on the Node path gets the bytes before the error (a reset then ends it).
          if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) peek_check(I, c);
          if (!c->dead) (void)connect_event(I, c, side, e);
          if (e & (EPOLLRDHUP | EPOLLHUP)) waiter_check(I, c);
          continue;
        }
        // A backend socket JS added, whose command this turn has not taken yet (JS adds the socket,
        // then queues the command): take the commands; if it is not there yet, keep the event for it.
        if (atomic_load_explicit(&I->cmds_waiting, memory_order_acquire)) run_commands(I, &stop, false);
        if (c->dead) continue;
        if (c->pending) {
          // Kept, and said so before looking once more (JS sets cmds_waiting, then reads want_cmd; the
          // thread sets want_cmd, then reads cmds_waiting: one of the two sees the other), so that the
          // thread either takes the command now or is woken for it.
          c->early |= e;
          atomic_store(&c->want_cmd, true);
          if (atomic_load(&I->cmds_waiting)) run_commands(I, &stop, false);
          continue;
        }
      }
      if (c->connecting) {
        if (connect_event(I, c, side, e)) service(I, c);
        continue;
      }
      if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) c->rd[side] = true;
      if (e & (EPOLLOUT | EPOLLHUP | EPOLLERR)) c->wr[side] = true;
      service(I, c);
      if (!c->dead && (e & EPOLLERR)) {
        // A reset that no pending read or write would notice (that side idle): pass it on now.
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd[side], SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err != 0) conn_fail(I, c, side, err);
      }
    }
    conn_t *ready = I->ready;
    I->ready = NULL;
    while (ready) {
      conn_t *next = ready->rnext;
      ready->ready = false;
      if (!ready->dead) service(I, ready);
      ready = next;
    }
    expire_idle(I);
    listeners_resume(I);
    limit_check(I);
    atomic_store_explicit(&I->splice_calls, (long)I->splices, memory_order_relaxed);
    // A connection that ended after it was put on the ready list leaves the list before its memory
    // may go (JS may drop the last reference as soon as it hears of the end).
    for (conn_t **at = &I->ready; *at;) {
      if ((*at)->dead) *at = (*at)->rnext;
      else at = &(*at)->rnext;
    }
    while (I->dead) {
      conn_t *next = I->dead->dnext;
      conn_unref(I->dead);
      I->dead = next;
    }
    for (size_t k = 0; k < I->nlater; k++) conn_unref(I->later[k]);
    I->nlater = 0;
    while (I->closed_listeners) {
      lsn_t *next = I->closed_listeners->next;
      free(I->closed_listeners);
      I->closed_listeners = next;
    }
  }
  // The environment is going away: close what is left, no completions (nobody would receive them).
  // The JS side's references are dropped by cleanup().
  while (I->listeners) {
    lsn_t *L = I->listeners;
    I->listeners = L->next;
    close(L->fd);
    free(L);
  }
  if (I->at_limit) {
    // Before cleanup() closes the eventfd a releaser would write to.
    I->at_limit = false;
    atomic_fetch_sub(&I->lim[G_LIMITED], 1);
    limited_unlist(I);
  }
  while (I->all) {
    conn_t *c = I->all;
    I->all = c->anext;
    for (int i = 0; i < 2; i++) {
      if (c->fd[i] >= 0) close(c->fd[i]);
      if (c->d[i].p.r >= 0) {
        close(c->d[i].p.r);
        close(c->d[i].p.w);
      }
    }
    free(c->pre);
    c->pre = NULL;
    if (c->counted) limit_give(I);
    conn_unref(c);
  }
  for (int i = 0; i < I->npool; i++) {
    close(I->pool[i].r);
    close(I->pool[i].w);
  }
  I->npool = 0;
  return NULL;
}

static void send_cmd(inst_t *I, cmd_t *cmd) {
  cmd->next = NULL;
  pthread_mutex_lock(&I->mu);
  if (I->cmd_tail) I->cmd_tail->next = cmd;
  else I->cmd_head = cmd;
  I->cmd_tail = cmd;
  atomic_store_explicit(&I->cmds_waiting, true, memory_order_release);
  // One wake-up until the thread takes the list: commands added before it does are seen with it.
  bool wake = !I->evfd_armed;
  I->evfd_armed = true;
  pthread_mutex_unlock(&I->mu);
  if (!wake) return;
  uint64_t one = 1;
  (void)!write(I->evfd, &one, sizeof one);
}

// ---------------------------------------------------------------------------------------------------
// JS side

#define CHECK(call)                                                                                           \
  do {                                                                                                        \
    if ((call) != napi_ok) return throw_last(env, #call);                                                     \
  } while (0)

static napi_value throw_last(napi_env env, const char *what) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) napi_throw_error(env, "LB_SPLICE", what);
  return NULL;
}

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  napi_throw_error(env, "LB_SPLICE", msg);
  return NULL;
}

static inst_t *get_inst(napi_env env) {
  void *p = NULL;
  napi_get_instance_data(env, &p);
  return p;
}

// The instance, or NULL with an exception pending when init() was not called.
static inst_t *inited(napi_env env) {
  inst_t *I = get_inst(env);
  if (!I) napi_throw_error(env, "LB_SPLICE", "init first");
  return I;
}

// The start of an entry point that needs init(): its `n` arguments in argv, the instance in I.
// An entry point's `n` arguments (missing ones undefined).
#define ARGS(n)                                                                                               \
  size_t argc = (n);                                                                                          \
  napi_value argv[(n)];                                                                                       \
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL))

#define ENTRY(n)                                                                                              \
  ARGS(n);                                                                                                    \
  inst_t *I = inited(env);                                                                                    \
  if (!I) return NULL

static bool grow_slots(napi_env env, inst_t *I);
static void send_cmd(inst_t *I, cmd_t *cmd);
static conn_t *accepted_at(napi_env env, inst_t *I, uint32_t slot);

// ENTRY for an entry point about the accepted connection whose slot is its first argument: it is `c`.
#define ACCEPTED_ENTRY(n)                                                                                     \
  ENTRY(n);                                                                                                   \
  uint32_t slot;                                                                                              \
  CHECK(napi_get_value_uint32(env, argv[0], &slot));                                                          \
  conn_t *c = accepted_at(env, I, slot);                                                                      \
  if (!c) return NULL

static void call_back(napi_env env, napi_value global, napi_value cb, size_t argc, napi_value *argv) {
  if (napi_call_function(env, global, cb, argc, argv, NULL) == napi_pending_exception) {
    napi_value exc;
    napi_get_and_clear_last_exception(env, &exc);
    napi_fatal_exception(env, exc);
  }
}

// The instance keeps the event loop (the worker) alive while it has a connection or an open listener
// (as a listening net.Server does), and only then.
static void keep_alive(napi_env env, inst_t *I) {
  bool want = I->active > 0 || I->nlisteners > 0;
  if (want == I->tsfn_refd) return;
  if (want) napi_ref_threadsafe_function(env, I->tsfn);
  else napi_unref_threadsafe_function(env, I->tsfn);
  I->tsfn_refd = want;
}

// Takes a slot for `c` (and its counters); false when none can be had (out of memory).
static bool take_slot(napi_env env, inst_t *I, conn_t *c) {
  if (I->nfree == 0 && I->next_slot == I->nslabs * SLAB_SLOTS && !grow_slots(env, I)) return false;
  uint32_t slot = I->nfree > 0 ? I->free_slots[--I->nfree] : I->next_slot++;
  double *count = I->slabs[slot / SLAB_SLOTS] + (size_t)(slot % SLAB_SLOTS) * 2;
  count[0] = count[1] = 0;
  c->slot = slot;
  for (int i = 0; i < 2; i++) c->d[i].count = &count[i];
  I->by_slot[slot] = c;
  I->active++;
  keep_alive(env, I);
  return true;
}

// An IPv4 or IPv6 socket address as text and port ("" and 0 for any other family).
static void sockaddr_text(const struct sockaddr_storage *ss, char ip[INET6_ADDRSTRLEN], uint16_t *port) {
  if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    inet_ntop(AF_INET6, &a->sin6_addr, ip, INET6_ADDRSTRLEN);
    *port = ntohs(a->sin6_port);
  } else if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &a->sin_addr, ip, INET6_ADDRSTRLEN);
    *port = ntohs(a->sin_port);
  }
}

// onAccept(listenerId, slot, address, port, errno, peeking): an accepted client, pending in `slot` until
// JS connects or aborts it (`peeking`: its first bytes are being peeked at, see peek()); or (slot -1,
// errno set) the listener stopped accepting for a moment.
static void deliver_accept(napi_env env, inst_t *I, done_t *d, napi_value cb, napi_value global) {
  napi_value argv[6];
  napi_create_uint32(env, d->lid, &argv[0]);
  if (d->reason == EV_ACCEPT_PAUSED) {
    napi_create_int32(env, -1, &argv[1]);
    napi_get_null(env, &argv[2]);
    napi_create_int32(env, 0, &argv[3]);
    napi_create_int32(env, d->err, &argv[4]);
    napi_get_boolean(env, false, &argv[5]);
    if (cb) call_back(env, global, cb, 6, argv);
    return;
  }
  conn_t *c = d->c;
  if (!cb || !take_slot(env, I, c)) {
    // Nobody to decide for it, or no counters: it is closed (its end is never reported, having no slot).
    cmd_t *cmd = calloc(1, sizeof *cmd);
    c->slot = UINT32_MAX; // its end is dropped in deliver()
    if (cmd) {
      atomic_fetch_add(&c->refs, 1);
      cmd->op = CMD_ABORT;
      cmd->c = c;
      send_cmd(I, cmd);
    }
    return;
  }
  char ip[INET6_ADDRSTRLEN] = "";
  uint16_t port = 0;
  sockaddr_text(&c->peer, ip, &port);
  napi_create_uint32(env, c->slot, &argv[1]);
  napi_create_string_utf8(env, ip, NAPI_AUTO_LENGTH, &argv[2]);
  napi_create_uint32(env, port, &argv[3]);
  napi_create_int32(env, 0, &argv[4]);
  napi_get_boolean(env, c->peek_max > 0, &argv[5]); // set at accept; only peek() changes it, after this
  call_back(env, global, cb, 6, argv);
}

// Completions, on the JS thread: one call of the JS callback per event (an end, EV_CONNECTED or
// EV_CONNECT_FAILED), of the accept callback per accepted client.
static void deliver(napi_env env, inst_t *I) {
  pthread_mutex_lock(&I->mu);
  done_t *list = I->done;
  size_t n = I->ndone;
  I->done = NULL;
  I->ndone = I->cap_done = 0;
  I->js_armed = false;
  pthread_mutex_unlock(&I->mu);
  napi_value cb, global;
  napi_get_reference_value(env, I->on_end, &cb);
  napi_get_global(env, &global);
  napi_value on_accept = NULL;
  if (I->on_accept) napi_get_reference_value(env, I->on_accept, &on_accept);
  for (size_t i = 0; i < n; i++) {
    done_t *d = &list[i];
    if (d->reason == EV_ACCEPTED || d->reason == EV_ACCEPT_PAUSED) {
      deliver_accept(env, I, d, on_accept, global);
      continue;
    }
    conn_t *c = d->c;
    uint32_t slot = c->slot;
    if (slot == UINT32_MAX) {
      if (d->reason < EV_CONNECTED) conn_unref(c); // an accepted client closed for want of a slot
      free(d->data);
      continue;
    }
    if (d->reason < EV_CONNECTED) {
      I->by_slot[slot] = NULL;
      conn_unref(c);
      // The slot is free before JS hears of the end, so a relay started from the callback may reuse it.
      I->free_slots[I->nfree++] = slot;
      I->active--;
    }
    napi_value argv[6];
    napi_create_uint32(env, slot, &argv[0]);
    napi_create_double(env, d->sent, &argv[1]);
    napi_create_double(env, d->rcvd, &argv[2]);
    napi_create_int32(env, d->reason, &argv[3]);
    napi_create_int32(env, d->err, &argv[4]);
    size_t argc = 5;
    if (d->data) {
      // EV_PEEKED: the bytes (errno 1: the client half-closed after them).
      if (napi_create_buffer_copy(env, d->len, d->data, NULL, &argv[5]) == napi_ok) argc = 6;
      free(d->data);
    }
    call_back(env, global, cb, argc, argv);
  }
  free(list);
  keep_alive(env, I);
}

static void call_js(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)js_cb;
  (void)data;
  if (env == NULL) return; // the environment is being torn down
  deliver(env, context);
}

// flush(): delivers what the thread has posted so far, now. Before counters are read: a connection the
// addon connected relays at once, and its EV_CONNECTED may still wait behind the JS thread's other
// work; the thread posts it before it moves a byte, so after flush() JS knows every connection whose
// bytes a client may have seen.
static napi_value js_flush(napi_env env, napi_callback_info info) {
  (void)info;
  inst_t *I = get_inst(env);
  if (I) deliver(env, I);
  return NULL;
}

static void cleanup(void *arg) {
  inst_t *I = arg;
  if (I->started) {
    pthread_mutex_lock(&I->mu);
    I->stop = true;
    pthread_mutex_unlock(&I->mu);
    uint64_t one = 1;
    (void)!write(I->evfd, &one, sizeof one);
    pthread_join(I->thread, NULL);
  }
  // The thread ran every command before it stopped; what is left was never seen by a thread.
  while (I->cmd_head) {
    cmd_t *next = I->cmd_head->next;
    if (I->cmd_head->op == CMD_ADD) {
      close(I->cmd_head->c->fd[0]);
      close(I->cmd_head->c->fd[1]);
    }
    if (I->cmd_head->op == CMD_LISTEN) {
      close(I->cmd_head->l->fd);
      free(I->cmd_head->l);
    }
    if (I->cmd_head->op == CMD_CONNECT) close(I->cmd_head->fd);
    free(I->cmd_head->pre);
    if (I->cmd_head->c) conn_unref(I->cmd_head->c);
    free(I->cmd_head);
    I->cmd_head = next;
  }
  close(I->ep);
  close(I->evfd);
  for (size_t i = 0; i < (size_t)I->nslabs * SLAB_SLOTS; i++)
    if (I->by_slot[i]) conn_unref(I->by_slot[i]);
  for (int i = 0; i < I->nclasses; i++) free(I->classes[i]);
  free(I->by_slot);
  free(I->free_slots);
  free(I->slabs);
  free(I->slab_refs);
  free(I->pool);
  free(I->classes);
  for (size_t i = 0; i < I->ndone; i++) free(I->done[i].data);
  free(I->done);
  pthread_mutex_destroy(&I->mu);
  free(I);
}

// init(onEnd, pipeBytes, poolMax[, onAccept]): once per environment, before the first relay.
static napi_value js_init(napi_env env, napi_callback_info info) {
  ARGS(4);
  if (get_inst(env) != NULL) {
    napi_throw_error(env, "LB_SPLICE", "init called twice");
    return NULL;
  }
  int32_t pipe_bytes = 0, pool_max = 64;
  CHECK(napi_get_value_int32(env, argv[1], &pipe_bytes));
  CHECK(napi_get_value_int32(env, argv[2], &pool_max));
  inst_t *I = calloc(1, sizeof *I);
  if (!I) return throw_errno(env, "calloc", ENOMEM);
  I->env = env;
  I->pipe_bytes = pipe_bytes;
  I->pool_max = pool_max < 0 ? 0 : pool_max;
  I->pool = calloc((size_t)I->pool_max + 1, sizeof *I->pool);
  pthread_mutex_init(&I->mu, NULL);
  I->ep = epoll_create1(EPOLL_CLOEXEC);
  I->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (I->ep < 0 || I->evfd < 0 || !I->pool) {
    int err = errno;
    if (I->ep >= 0) close(I->ep);
    if (I->evfd >= 0) close(I->evfd);
    free(I->pool);
    free(I);
    return throw_errno(env, "epoll/eventfd", err);
  }
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0};
  epoll_ctl(I->ep, EPOLL_CTL_ADD, I->evfd, &ev);
  CHECK(napi_create_reference(env, argv[0], 1, &I->on_end));
  napi_valuetype t = napi_undefined;
  if (argc >= 4) CHECK(napi_typeof(env, argv[3], &t));
  if (t == napi_function) CHECK(napi_create_reference(env, argv[3], 1, &I->on_accept));
  napi_value name;
  CHECK(napi_create_string_utf8(env, "lb_splice", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, NULL, NULL, I, call_js, &I->tsfn));
  CHECK(napi_unref_threadsafe_function(env, I->tsfn));
  CHECK(napi_set_instance_data(env, I, NULL, NULL));
  CHECK(napi_add_env_cleanup_hook(env, cleanup, I));
  return NULL;
}

static bool grow_slots(napi_env env, inst_t *I) {
  uint32_t slab = I->nslabs;
  napi_ref *refs = realloc(I->slab_refs, (slab + 1) * sizeof *refs);
  if (!refs) return false;
  I->slab_refs = refs;
  double **slabs = realloc(I->slabs, (slab + 1) * sizeof *slabs);
  if (!slabs) return false;
  I->slabs = slabs;
  conn_t **by_slot = realloc(I->by_slot, (size_t)(slab + 1) * SLAB_SLOTS * sizeof *by_slot);
  if (!by_slot) return false;
  I->by_slot = by_slot;
  uint32_t *free_slots = realloc(I->free_slots, (size_t)(slab + 1) * SLAB_SLOTS * sizeof *free_slots);
  if (!free_slots) return false;
  I->free_slots = free_slots;
  void *data;
  napi_value ab;
  if (napi_create_arraybuffer(env, SLAB_SLOTS * 2 * sizeof(double), &data, &ab) != napi_ok) return false;
  if (napi_create_reference(env, ab, 1, &I->slab_refs[slab]) != napi_ok) return false;
  I->slabs[slab] = data;
  memset(&I->by_slot[(size_t)slab * SLAB_SLOTS], 0, SLAB_SLOTS * sizeof *by_slot);
  I->nslabs = slab + 1;
  return true;
}

// O_NONBLOCK lives on the shared open file description, which libuv made non-blocking (accept4 with
// SOCK_NONBLOCK, its connect sockets likewise): the copy is non-blocking too, with no fcntl to check.
static int dup_socket(int fd) { return fcntl(fd, F_DUPFD_CLOEXEC, 3); }

static bool ensure_thread(napi_env env, inst_t *I) {
  if (I->started) return true;
  if (pthread_create(&I->thread, NULL, thread_main, I) != 0) {
    throw_errno(env, "pthread_create", errno);
    return false;
  }
  I->started = true;
  return true;
}

// Hands the two descriptors (owned from now on, closed on any failure) to the thread as one connection
// and returns its slot, or NULL with an exception pending.
static napi_value start_conn(napi_env env, inst_t *I, int cfd, int bfd, double idle_ms, bool connecting, double connect_ms) {
  conn_t *c = calloc(1, sizeof *c);
  cmd_t *cmd = calloc(1, sizeof *cmd);
  if (!c || !cmd || !take_slot(env, I, c)) {
    close(cfd);
    close(bfd);
    free(c);
    free(cmd);
    return throw_errno(env, "counters", ENOMEM);
  }
  uint32_t slot = c->slot;
  c->fd[0] = cfd;
  c->fd[1] = bfd;
  for (int i = 0; i < 2; i++) c->d[i].p.r = c->d[i].p.w = -1;
  c->idle_ms = idle_ms > 0 ? (int64_t)idle_ms : 0;
  c->connecting = connecting;
  c->connect_ms = connect_ms > 0 ? (int64_t)connect_ms : 0;
  atomic_init(&c->refs, 2);
  cmd->op = CMD_ADD;
  cmd->c = c;
  send_cmd(I, cmd);
  napi_value out;
  CHECK(napi_create_uint32(env, slot, &out));
  return out;
}

// relay(clientFd, backendFd, idleMs) -> slot. The fds are duplicated; the caller closes its own.
static napi_value js_relay(napi_env env, napi_callback_info info) {
  ENTRY(3);
  int32_t cfd, bfd;
  double idle_ms;
  CHECK(napi_get_value_int32(env, argv[0], &cfd));
  CHECK(napi_get_value_int32(env, argv[1], &bfd));
  CHECK(napi_get_value_double(env, argv[2], &idle_ms));
  if (!ensure_thread(env, I)) return NULL;
  int c = dup_socket(cfd);
  int b = c < 0 ? -1 : dup_socket(bfd);
  if (b < 0) {
    int err = errno;
    if (c >= 0) close(c);
    return throw_errno(env, "dup", err);
  }
  return start_conn(env, I, c, b, idle_ms, false, 0);
}

// A numeric IPv4 or IPv6 address and port; false if `text` is neither.
static bool parse_addr(const char *text, uint32_t port, struct sockaddr_storage *ss, socklen_t *len) {
  memset(ss, 0, sizeof *ss);
  struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
  if (inet_pton(AF_INET, text, &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons((uint16_t)port);
    *len = sizeof *in4;
    return true;
  }
  if (inet_pton(AF_INET6, text, &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
    *len = sizeof *in6;
    return true;
  }
  return false;
}

// A non-blocking TCP socket connecting to `addr`:`port` (numeric), from `src` (numeric) unless NULL, with
// the options a backend net.Socket of lb's had: TCP_NODELAY and SO_KEEPALIVE (net.connect({ noDelay:
// true, keepAlive: true }); a refusal of either is not fatal there either). The descriptor, or -errno.
static int backend_socket(const char *addr, uint32_t port, const char *src) {
  struct sockaddr_storage to, from;
  socklen_t tolen, fromlen;
  if (port > 65535 || !parse_addr(addr, port, &to, &tolen) || (src && !parse_addr(src, 0, &from, &fromlen))) return -EINVAL;
  int b = socket(to.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (b < 0) return -errno;
  int on = 1;
  (void)setsockopt(b, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
  (void)setsockopt(b, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
  if ((src && bind(b, (struct sockaddr *)&from, fromlen) < 0) || (connect(b, (struct sockaddr *)&to, tolen) < 0 && errno != EINPROGRESS)) {
    int err = errno;
    close(b);
    return -err;
  }
  return b;
}

// The (address, port, source, connectMs, idleMs) arguments of connect() and connectAccepted().
typedef struct {
  char addr[INET6_ADDRSTRLEN + 1], src[INET6_ADDRSTRLEN + 1];
  uint32_t port;
  double connect_ms, idle_ms;
} target_t;

static bool read_target(napi_env env, napi_value *argv, target_t *t) {
  size_t alen = 0, slen = 0;
  return napi_get_value_string_utf8(env, argv[0], t->addr, sizeof t->addr, &alen) == napi_ok &&
         napi_get_value_uint32(env, argv[1], &t->port) == napi_ok &&
         napi_get_value_string_utf8(env, argv[2], t->src, sizeof t->src, &slen) == napi_ok &&
         napi_get_value_double(env, argv[3], &t->connect_ms) == napi_ok && napi_get_value_double(env, argv[4], &t->idle_ms) == napi_ok;
}

// connect(clientFd, address, port, source, connectMs, idleMs) -> slot, or -errno when the connect failed
// at once (nothing is kept then). The backend socket is made here, non-blocking, with the options a
// backend net.Socket of lb's had (TCP_NODELAY, SO_KEEPALIVE, bound to `source` unless it is ""); the
// thread finishes the connect (its timeout: connectMs, 0 = none), reports EV_CONNECTED and relays, or
// ends the slot as END_CONNECT_FAILED with the errno (ETIMEDOUT for the timeout), or as END_RESET when
// the client resets first. The client fd is duplicated; the caller keeps its own until EV_CONNECTED
// (on a failed connect it still has the client to try the next backend with).
static napi_value js_connect(napi_env env, napi_callback_info info) {
  ENTRY(6);
  int32_t cfd;
  target_t t;
  CHECK(napi_get_value_int32(env, argv[0], &cfd));
  CHECK(read_target(env, argv + 1, &t) ? napi_ok : napi_invalid_arg);
  if (!ensure_thread(env, I)) return NULL;
  int b = backend_socket(t.addr, t.port, t.src[0] ? t.src : NULL);
  int c = b < 0 ? -1 : dup_socket(cfd);
  int result = b < 0 ? b : c < 0 ? -errno : 0;
  if (result < 0) {
    if (b >= 0) close(b);
    napi_value out;
    CHECK(napi_create_int32(env, result, &out));
    return out;
  }
  I->connects++;
  return start_conn(env, I, c, b, t.idle_ms, true, t.connect_ms);
}

// connectAccepted(slot, address, port, source, connectMs, idleMs[, preface]) -> 0, or -errno when the
// connect failed at once (nothing changed: JS tries the next backend). `preface` (a Buffer: send_proxy's
// header) is written to the backend once connected, before any byte of the client's. The backend socket is made here, with the
// options a backend net.Socket of lb's had (TCP_NODELAY, SO_KEEPALIVE, bound to `source` unless ""), and
// connects; the thread then reports EV_CONNECTED and relays, or EV_CONNECT_FAILED with the errno (the
// connection is pending again), or its end when the client went first.
//
// No eventfd wake-up: the socket goes into the thread's epoll set here, then its command is queued, so
// the connect's completion is what wakes the thread, which takes the command before it looks at that
// socket's events (or keeps them for it, when it is not queued yet).
static napi_value js_connect_accepted(napi_env env, napi_callback_info info) {
  ENTRY(7);
  uint32_t slot;
  target_t t;
  CHECK(napi_get_value_uint32(env, argv[0], &slot));
  CHECK(read_target(env, argv + 1, &t) ? napi_ok : napi_invalid_arg);
  void *pre_data = NULL;
  size_t pre_len = 0;
  bool has_pre = false;
  CHECK(napi_is_buffer(env, argv[6], &has_pre));
  if (has_pre) CHECK(napi_get_buffer_info(env, argv[6], &pre_data, &pre_len));
  conn_t *c = accepted_at(env, I, slot);
  if (!c) return NULL;
  int b = backend_socket(t.addr, t.port, t.src[0] ? t.src : NULL);
  cmd_t *cmd = b >= 0 ? calloc(1, sizeof *cmd) : NULL;
  uint8_t *pre = b >= 0 && pre_len > 0 ? malloc(pre_len) : NULL;
  napi_value out;
  if (b >= 0 && (!cmd || (pre_len > 0 && !pre))) {
    close(b);
    free(cmd);
    free(pre);
    b = -ENOMEM;
  }
  if (b < 0) {
    CHECK(napi_create_int32(env, b, &out));
    return out;
  }
  cmd->op = CMD_CONNECT;
  cmd->c = c;
  cmd->fd = b;
  if (pre) memcpy(pre, pre_data, pre_len);
  cmd->pre = pre;
  cmd->pre_len = (uint32_t)pre_len;
  cmd->connect_ms = t.connect_ms > 0 ? (int64_t)t.connect_ms : 0;
  cmd->idle_ms = t.idle_ms > 0 ? (int64_t)t.idle_ms : 0;
  atomic_fetch_add(&c->refs, 1);
  // Added before its command is queued: once queued, the thread may take it and (the client gone) close
  // the socket at any time. Its events seen before the command are kept for it (connect_start).
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.u64 = (uintptr_t)c | 1};
  int result = epoll_ctl(I->ep, EPOLL_CTL_ADD, b, &ev) < 0 ? -errno : 0;
  bool wake = false;
  pthread_mutex_lock(&I->mu);
  if (result == 0) {
    if (I->cmd_tail) I->cmd_tail->next = cmd;
    else I->cmd_head = cmd;
    I->cmd_tail = cmd;
    atomic_store(&I->cmds_waiting, true);
    // The thread saw the socket's events before this command and may be asleep (see thread_main), or
    // this is a waiter from the queue, for which the thread does not poll (npending): a connect that
    // never completes would otherwise start its timeout only at the next unrelated wake-up.
    wake = (c->parked || atomic_load(&c->want_cmd)) && !I->evfd_armed;
    if (wake) I->evfd_armed = true;
  }
  pthread_mutex_unlock(&I->mu);
  if (wake) {
    uint64_t one = 1;
    (void)!write(I->evfd, &one, sizeof one);
  }
  if (result < 0) {
    close(b);
    free(cmd->pre);
    free(cmd);
    conn_unref(c); // JS still holds its own: never the last
  } else {
    I->connects++;
  }
  CHECK(napi_create_int32(env, result, &out));
  return out;
}

// A TCP socket bound to `addr`:`port` (numeric) as libuv binds one for listen(): SO_REUSEADDR,
// IPV6_V6ONLY as asked, SO_REUSEPORT only when `reuseport` (the workers' sockets; never the supervisor's
// check). With `backlog` > 0 it also listens. The descriptor, the port bound in *bound (the kernel's
// choice for 0); or -errno (-EINVAL: not a numeric address), nothing left open.
static int bound_socket(const char *addr, uint32_t port, bool v6only, bool reuseport, int backlog, int *bound) {
  struct sockaddr_storage ss;
  socklen_t sslen = 0;
  if (port > 65535 || !parse_addr(addr, port, &ss, &sslen)) return -EINVAL;
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int on = 1, v6 = v6only ? 1 : 0;
  struct sockaddr_storage got;
  socklen_t gotlen = sizeof got;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0 ||
      (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) < 0) ||
      (ss.ss_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6, sizeof v6) < 0) ||
      bind(fd, (struct sockaddr *)&ss, sslen) < 0 || (backlog > 0 && listen(fd, backlog) < 0) ||
      getsockname(fd, (struct sockaddr *)&got, &gotlen) < 0) {
    int err = errno;
    close(fd);
    return -err;
  }
  *bound = ntohs(got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port : ((struct sockaddr_in *)&got)->sin_port);
  return fd;
}

// listen(id, address, port, backlog, v6only, reusePort, peekMax) -> the port bound (the kernel's choice
// for 0), or -errno. `peekMax` > 0 (accept_proxy): each client is peeked at from its accept on (see
// peek()); listenPeek() changes it for the clients accepted after. A listening socket of the addon's: its clients are accepted on the thread and reported to
// init's onAccept with `id`. TCP_NODELAY and SO_KEEPALIVE are set on it once: Linux copies both to every
// socket accepted from it. `address` is numeric (JS resolves names as Node's listen() would).
static napi_value js_listen(napi_env env, napi_callback_info info) {
  ENTRY(7);
  uint32_t id, port, peek_max = 0;
  int32_t backlog;
  bool v6only, reuse;
  char addr[INET6_ADDRSTRLEN + 1];
  size_t alen = 0;
  CHECK(napi_get_value_uint32(env, argv[0], &id));
  CHECK(napi_get_value_string_utf8(env, argv[1], addr, sizeof addr, &alen));
  CHECK(napi_get_value_uint32(env, argv[2], &port));
  CHECK(napi_get_value_int32(env, argv[3], &backlog));
  CHECK(napi_get_value_bool(env, argv[4], &v6only));
  CHECK(napi_get_value_bool(env, argv[5], &reuse));
  napi_valuetype t = napi_undefined;
  CHECK(napi_typeof(env, argv[6], &t));
  if (t == napi_number) CHECK(napi_get_value_uint32(env, argv[6], &peek_max));
  if (!ensure_thread(env, I)) return NULL;
  napi_value out;
  int bound = 0;
  int fd = bound_socket(addr, port, v6only, reuse, backlog > 0 ? backlog : 1, &bound);
  int result = fd < 0 ? fd : bound;
  if (fd >= 0) {
    int on = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
  }
  lsn_t *L = result > 0 ? calloc(1, sizeof *L) : NULL;
  cmd_t *cmd = L ? calloc(1, sizeof *cmd) : NULL;
  if (result > 0 && !cmd) result = -ENOMEM;
  if (result <= 0) {
    if (fd >= 0) close(fd);
    free(L);
    CHECK(napi_create_int32(env, result, &out));
    return out;
  }
  L->fd = fd;
  L->id = id;
  L->peek_max = peek_max < PEEK_MAX ? peek_max : PEEK_MAX;
  L->jnext = I->jlisteners;
  I->jlisteners = L;
  I->nlisteners++;
  keep_alive(env, I);
  cmd->op = CMD_LISTEN;
  cmd->l = L;
  send_cmd(I, cmd);
  CHECK(napi_create_int32(env, result, &out));
  return out;
}

// unlisten(id): the listener stops listening now, as Node's server.close() does, and the thread closes it
// on its next turn. Connections it accepted go on. shutdown(SHUT_RD) on a listening socket takes it out of
// LISTEN (new clients are refused, those in its backlog reset) while the descriptor stays valid for the
// thread, which may be in accept4() on it (EINVAL) until it runs the command.
static napi_value js_unlisten(napi_env env, napi_callback_info info) {
  ARGS(1);
  inst_t *I = get_inst(env);
  uint32_t id;
  CHECK(napi_get_value_uint32(env, argv[0], &id));
  if (!I) return NULL;
  for (lsn_t **at = &I->jlisteners; *at; at = &(*at)->jnext) {
    lsn_t *L = *at;
    if (L->id != id) continue;
    cmd_t *cmd = calloc(1, sizeof *cmd);
    if (!cmd) return throw_errno(env, "calloc", ENOMEM);
    *at = L->jnext;
    (void)shutdown(L->fd, SHUT_RD);
    I->nlisteners--;
    keep_alive(env, I);
    cmd->op = CMD_UNLISTEN;
    cmd->l = L; // freed by the thread
    send_cmd(I, cmd);
    break;
  }
  return NULL;
}

// listenPeek(id, peekMax): the clients the listener accepts from now on are peeked at (accept_proxy: a
// reload turned it on) or not (0).
static napi_value js_listen_peek(napi_env env, napi_callback_info info) {
  ENTRY(2);
  uint32_t id, peek_max;
  CHECK(napi_get_value_uint32(env, argv[0], &id));
  CHECK(napi_get_value_uint32(env, argv[1], &peek_max));
  for (lsn_t *L = I->jlisteners; L; L = L->jnext) {
    if (L->id != id) continue;
    cmd_t *cmd = calloc(1, sizeof *cmd);
    if (!cmd) return throw_errno(env, "calloc", ENOMEM);
    cmd->op = CMD_LISTEN_PEEK;
    cmd->l = L; // freed only by CMD_UNLISTEN, which comes after this command
    cmd->n = peek_max;
    send_cmd(I, cmd);
    break;
  }
  return NULL;
}

// A command about connection `c` (which it keeps alive until the thread has taken it), with its count.
static napi_value conn_cmd(napi_env env, inst_t *I, int op, conn_t *c, uint32_t n) {
  cmd_t *cmd = calloc(1, sizeof *cmd);
  if (!cmd) return throw_errno(env, "calloc", ENOMEM);
  cmd->op = op;
  cmd->c = c;
  cmd->n = n;
  atomic_fetch_add(&c->refs, 1);
  send_cmd(I, cmd);
  return NULL;
}

// The accepted connection in `slot`, or NULL with a RangeError pending.
static conn_t *accepted_at(napi_env env, inst_t *I, uint32_t slot) {
  if (slot >= I->nslabs * SLAB_SLOTS || I->by_slot[slot] == NULL || !I->by_slot[slot]->accepted) {
    napi_throw_range_error(env, "LB_SPLICE", "no accepted connection in that slot");
    return NULL;
  }
  return I->by_slot[slot];
}

// abort(slot): ends the connection as 'aborted' unless it already ended.
static napi_value js_abort(napi_env env, napi_callback_info info) {
  ARGS(1);
  inst_t *I = get_inst(env);
  uint32_t slot;
  CHECK(napi_get_value_uint32(env, argv[0], &slot));
  if (!I || slot >= I->nslabs * SLAB_SLOTS || I->by_slot[slot] == NULL) return NULL;
  return conn_cmd(env, I, CMD_ABORT, I->by_slot[slot], 0);
}

// wait(slot): the accepted connection waits in JS's queue for a backend slot. While it is pending, the
// thread ends it as 'client-close' if the client closes having sent nothing (it gave up); a client that
// sent its request and half-closed stays, and a reset ends it whether it waits or not.
static napi_value js_wait(napi_env env, napi_callback_info info) {
  ACCEPTED_ENTRY(1);
  c->parked = true;
  return conn_cmd(env, I, CMD_WAIT, c, 0);
}

// An entry point (slot, n): command `op` about the accepted connection in `slot`, with `n` (at most `max`).
static napi_value slot_cmd(napi_env env, napi_callback_info info, int op, uint32_t max) {
  ACCEPTED_ENTRY(2);
  uint32_t n;
  CHECK(napi_get_value_uint32(env, argv[1], &n));
  if (n > max) {
    napi_throw_range_error(env, "LB_SPLICE", "count out of range");
    return NULL;
  }
  return conn_cmd(env, I, op, c, n);
}

// peek(slot, max): accept_proxy: the pending connection's first bytes (up to `max`) are posted to JS as
// they come (EV_PEEKED, each time with all of them so far), without being consumed, until skip() or
// its end. A client that closes having sent nothing ends as 'client-close'; one that half-closes after
// some bytes has them posted with the FIN flag; a reset ends it.
static napi_value js_peek(napi_env env, napi_callback_info info) { return slot_cmd(env, info, CMD_PEEK, UINT32_MAX); }

// skip(slot, n): the first `n` bytes peeked (the PROXY header) are dropped; the peeking ends. What came
// after them stays in the socket, for the backend.
static napi_value js_skip(napi_env env, napi_callback_info info) { return slot_cmd(env, info, CMD_SKIP, PEEK_MAX); }

// localAddress(slot) -> [address, port]: the address the client connected to (getsockname), for
// send_proxy's header; null once the connection ended. Read on the JS thread from a descriptor the
// thread owns: the thread marks a connection dead before it closes its descriptors, so a `dead` read
// after getsockname() that finds it alive proves the descriptor asked about was still its own.
static napi_value js_local_address(napi_env env, napi_callback_info info) {
  ACCEPTED_ENTRY(1);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  int r = getsockname(c->fd[0], (struct sockaddr *)&ss, &len);
  napi_value out;
  if (r < 0 || __atomic_load_n(&c->dead, __ATOMIC_SEQ_CST)) {
    CHECK(napi_get_null(env, &out));
    return out;
  }
  char ip[INET6_ADDRSTRLEN] = "";
  uint16_t port = 0;
  sockaddr_text(&ss, ip, &port);
  napi_value a, p;
  CHECK(napi_create_array_with_length(env, 2, &out));
  CHECK(napi_create_string_utf8(env, ip, NAPI_AUTO_LENGTH, &a));
  CHECK(napi_create_uint32(env, port, &p));
  CHECK(napi_set_element(env, out, 0, a));
  CHECK(napi_set_element(env, out, 1, p));
  return out;
}

// The Int32 words of a typed array over lb's shared memory (the limit's fields, src/shared/state.ts),
// or NULL with an exception pending. `min` words at least.
static _Atomic int32_t *limit_words(napi_env env, napi_value v, size_t min) {
  napi_typedarray_type type;
  size_t len;
  void *data;
  if (napi_get_typedarray_info(env, v, &type, &len, &data, NULL, NULL) != napi_ok || type != napi_int32_array || len < min) {
    napi_throw_type_error(env, "LB_SPLICE", "expected the connection limit's Int32Array");
    return NULL;
  }
  return (_Atomic int32_t *)data;
}

// attachLimit(int32array, region): this worker's accepts count against the connection limit in
// `int32array` (G_* fields, then one count per worker), as worker `region`. Before the first listen().
static napi_value js_attach_limit(napi_env env, napi_callback_info info) {
  ENTRY(2);
  uint32_t region;
  CHECK(napi_get_value_uint32(env, argv[1], &region));
  _Atomic int32_t *g = limit_words(env, argv[0], G_HELD + (size_t)region + 1);
  if (!g) return NULL;
  if (I->lim || I->nlisteners > 0) {
    napi_throw_error(env, "LB_SPLICE", "attachLimit: once, before the first listen()");
    return NULL;
  }
  CHECK(napi_create_reference(env, argv[0], 1, &I->lim_ref));
  I->region = region;
  I->lim = g; // published to the thread by the first listen command (under mu)
  return NULL;
}

// limitWake(int32array): a place was given back by JS (or maxconn raised): the threads of any worker
// paused at this limit look again. No init() needed: the supervisor calls it too.
static napi_value js_limit_wake(napi_env env, napi_callback_info info) {
  ARGS(1);
  _Atomic int32_t *g = limit_words(env, argv[0], G_HELD);
  if (g) limit_wake(g);
  return NULL;
}

// counters(slab) -> Float64Array of 2 * SLAB_SLOTS: [sent, rcvd] per slot.
static napi_value js_counters(napi_env env, napi_callback_info info) {
  ARGS(1);
  inst_t *I = get_inst(env);
  uint32_t slab;
  CHECK(napi_get_value_uint32(env, argv[0], &slab));
  if (!I || slab >= I->nslabs) {
    napi_throw_range_error(env, "LB_SPLICE", "no such counters slab");
    return NULL;
  }
  napi_value ab, arr;
  CHECK(napi_get_reference_value(env, I->slab_refs[slab], &ab));
  CHECK(napi_create_typedarray(env, napi_float64_array, SLAB_SLOTS * 2, ab, 0, &arr));
  return arr;
}

static napi_value num(napi_env env, napi_value obj, const char *key, double v) {
  napi_value x;
  napi_create_double(env, v, &x);
  napi_set_named_property(env, obj, key, x);
  return obj;
}

// stats() -> pool and connection counts of this environment's instance.
static napi_value js_stats(napi_env env, napi_callback_info info) {
  (void)info;
  inst_t *I = get_inst(env);
  napi_value o;
  CHECK(napi_create_object(env, &o));
  if (!I) return o;
  num(env, o, "pipesCreated", (double)atomic_load(&I->pipes_created));
  num(env, o, "pipesInUse", (double)atomic_load(&I->pipes_in_use));
  num(env, o, "pipesPooled", (double)atomic_load(&I->pipes_pooled));
  num(env, o, "pipeBytes", (double)atomic_load(&I->pipe_cap_last));
  num(env, o, "connections", (double)atomic_load(&I->conns_live));
  num(env, o, "spliceCalls", (double)atomic_load(&I->splice_calls));
  num(env, o, "connects", I->connects);
  num(env, o, "pending", (double)I->active);
  return o;
}

// probe() -> null when splice works here, else why not. A seccomp filter or an old kernel refuses the
// system call; an AF_UNIX pair exercises the same socket <-> pipe paths without touching the network.
static napi_value js_probe(napi_env env, napi_callback_info info) {
  (void)info;
  const char *why = NULL;
  int sv[2] = {-1, -1}, p[2] = {-1, -1};
  char byte = 'x';
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 || pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) why = "socketpair/pipe";
  else if (write(sv[1], &byte, 1) != 1) why = "write";
  else if (splice(sv[0], NULL, p[1], NULL, 1, SPLICE_F_NONBLOCK) != 1) why = "splice(socket -> pipe)";
  else if (splice(p[0], NULL, sv[0], NULL, 1, SPLICE_F_NONBLOCK) != 1) why = "splice(pipe -> socket)";
  else if (read(sv[1], &byte, 1) != 1 || byte != 'x') why = "read back";
  int err = errno;
  for (int i = 0; i < 2; i++) {
    if (sv[i] >= 0) close(sv[i]);
    if (p[i] >= 0) close(p[i]);
  }
  napi_value out;
  if (why == NULL) {
    CHECK(napi_get_null(env, &out));
  } else {
    char msg[160];
    snprintf(msg, sizeof msg, "%s failed: %s", why, strerror(err));
    CHECK(napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &out));
  }
  return out;
}

// bindCheck(address, port, v6only) -> the port bound (the kernel's choice for port 0), or -errno.
//
// The supervisor's check of a new listen address before the workers bind it with SO_REUSEPORT: binds a
// TCP socket as libuv binds one for listen() (SO_REUSEADDR, IPV6_V6ONLY as asked, no SO_REUSEPORT, so
// any other holder of the address makes bind() fail with EADDRINUSE) and closes it WITHOUT listen().
// Node has no bind without listen, and a socket that listened, however briefly, accepts clients into a
// backlog that its close then resets, and refuses those that come after it until the workers listen:
// a port that flickers. A bound socket that never listened is invisible to clients.
// `address` is a numeric IPv4 or IPv6 address (JS resolves names first); a scope id is not handled
// here (-EINVAL: the caller falls back to a listen probe).
static napi_value js_bind_check(napi_env env, napi_callback_info info) {
  ARGS(3);
  char addr[INET6_ADDRSTRLEN + 1];
  size_t len = 0;
  uint32_t port = 0;
  bool v6only = false;
  CHECK(napi_get_value_string_utf8(env, argv[0], addr, sizeof addr, &len));
  CHECK(napi_get_value_uint32(env, argv[1], &port));
  CHECK(napi_get_value_bool(env, argv[2], &v6only));
  int bound = 0;
  int fd = bound_socket(addr, port, v6only, false, 0, &bound); // never listens: see above
  if (fd >= 0) close(fd);
  int result = fd < 0 ? fd : bound;
  napi_value out;
  CHECK(napi_create_int32(env, result, &out));
  return out;
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  napi_property_descriptor props[] = {
      {"init", NULL, js_init, NULL, NULL, NULL, napi_default, NULL},
      {"relay", NULL, js_relay, NULL, NULL, NULL, napi_default, NULL},
      {"connect", NULL, js_connect, NULL, NULL, NULL, napi_default, NULL},
      {"connectAccepted", NULL, js_connect_accepted, NULL, NULL, NULL, napi_default, NULL},
      {"wait", NULL, js_wait, NULL, NULL, NULL, napi_default, NULL},
      {"peek", NULL, js_peek, NULL, NULL, NULL, napi_default, NULL},
      {"skip", NULL, js_skip, NULL, NULL, NULL, napi_default, NULL},
      {"localAddress", NULL, js_local_address, NULL, NULL, NULL, napi_default, NULL},
      {"attachLimit", NULL, js_attach_limit, NULL, NULL, NULL, napi_default, NULL},
      {"limitWake", NULL, js_limit_wake, NULL, NULL, NULL, napi_default, NULL},
      {"listen", NULL, js_listen, NULL, NULL, NULL, napi_default, NULL},
      {"unlisten", NULL, js_unlisten, NULL, NULL, NULL, napi_default, NULL},
      {"listenPeek", NULL, js_listen_peek, NULL, NULL, NULL, napi_default, NULL},
      {"flush", NULL, js_flush, NULL, NULL, NULL, napi_default, NULL},
      {"abort", NULL, js_abort, NULL, NULL, NULL, napi_default, NULL},
      {"counters", NULL, js_counters, NULL, NULL, NULL, napi_default, NULL},
      {"stats", NULL, js_stats, NULL, NULL, NULL, napi_default, NULL},
      {"probe", NULL, js_probe, NULL, NULL, NULL, napi_default, NULL},
      {"bindCheck", NULL, js_bind_check, NULL, NULL, NULL, napi_default, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  napi_value slots;
  napi_create_uint32(env, SLAB_SLOTS, &slots);
  napi_set_named_property(env, exports, "slabSlots", slots);
  return exports;
}
