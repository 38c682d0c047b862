/*
 * floor204: bare "204 No Content" servers that show what the kernel costs per request, with no
 * HTTP parsing, no WAL records and no metrics: the floor under the collector's front end and
 * under nginx's `return 204` (issue 13, `make front-floor`, scripts/front_floor.py). Built with
 * the system C compiler and liburing (Debian's liburing-dev).
 *
 *   floor204 -p PORT -m epoll|uring|multishot [-d] [-w FILE]
 *
 * One thread, 127.0.0.1:PORT only. A request is counted at each "\r\n\r\n" (state kept across
 * reads); each read's requests are answered with one send of as many fixed 204s.
 *
 * - epoll: nginx's shape. Level-triggered epoll_wait, then one read and one write per ready
 *   connection: two syscalls per request plus the wait.
 * - uring: the collector's shape under monoio 0.2.4. One io_uring, COOP_TASKRUN|TASKRUN_FLAG;
 *   each connection has one single-shot IORING_OP_RECV into its own buffer in flight, and its
 *   IORING_OP_SEND is queued when the recv completes; the next recv goes in when the send
 *   completes. Everything is submitted in one io_uring_enter per loop turn.
 * - multishot: one IORING_OP_RECV with IORING_RECV_MULTISHOT per connection, reading into a
 *   provided buffer ring (IOSQE_BUFFER_SELECT), re-armed only when the kernel ends it; sends as
 *   in `uring`, with later answers queued behind the send in flight.
 * - -d: IORING_SETUP_SINGLE_ISSUER|IORING_SETUP_DEFER_TASKRUN instead of COOP_TASKRUN (task work
 *   runs only inside io_uring_enter, never by interrupting the thread).
 * - -w FILE (uring modes): the collector's ack rule. The requests of a loop turn are appended to
 *   FILE with one IORING_OP_WRITE, and their answers are sent only when that write completes;
 *   one write in flight at a time, the next turn's requests wait for the next one.
 *
 * Runs until SIGINT or SIGTERM, then prints `FLOOR requests=N` and exits.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CONNS 16384
#define RBUF 4096
#define OBUF (64 * 1024)
#define NBUFS 4096 /* provided buffers, RBUF each */
#define BGID 7
#define WLOG (4 * 1024 * 1024)

static const char ANSWER[] = "HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n";
#define ANSWER_LEN (sizeof ANSWER - 1)

enum op { OP_ACCEPT = 1, OP_RECV, OP_SEND, OP_WRITE };

struct conn {
    int fd;
    int match;       /* bytes of "\r\n\r\n" matched at the end of the last read */
    int sending;     /* a send is in flight */
    int waiting;     /* on the current WAL turn's list */
    size_t olen;     /* answers in obuf; the first `inflight` bytes are being sent */
    size_t inflight;
    char rbuf[RBUF]; /* mode uring only */
    char obuf[OBUF];
};

static volatile sig_atomic_t stop;
static unsigned long long requests;
static struct conn *conns[MAX_CONNS];
static struct io_uring ring;
static struct io_uring_buf_ring *bufs;
static char *bufmem;
static int multishot, wal_fd = -1;
static char *wlog[2]; /* the open turn's and the one being written */
static size_t wlog_len, wlog_off;
static int wlog_cur;
static int wal_busy, wait_list[MAX_CONNS], wait_n, next_list[MAX_CONNS], next_n;

static void on_signal(int sig) { (void)sig; stop = 1; }

static void die(const char *what, int err) {
    fprintf(stderr, "floor204: %s: %s\n", what, strerror(err));
    exit(1);
}

static int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0) die("socket", errno);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 4096)) die("bind/listen", errno);
    return fd;
}

/* Counts the requests in `p[0..n)` and queues one answer for each. */
static void take(struct conn *c, const char *p, size_t n) {
    static const char end[] = "\r\n\r\n";
    for (size_t i = 0; i < n; i++) {
        if (p[i] == end[c->match]) c->match++;
        else c->match = p[i] == '\r';
        if (c->match == 4) {
            c->match = 0;
            requests++;
            if (c->olen + ANSWER_LEN <= OBUF) {
                memcpy(c->obuf + c->olen, ANSWER, ANSWER_LEN);
                c->olen += ANSWER_LEN;
            }
        }
    }
    if (wal_fd >= 0 && wlog_len + n <= WLOG) {
        memcpy(wlog[wlog_cur] + wlog_len, p, n);
        wlog_len += n;
    }
}

static struct conn *new_conn(int fd) {
    if (fd < 0 || fd >= MAX_CONNS) {
        if (fd >= 0) close(fd);
        return NULL;
    }
    struct conn *c = conns[fd] ? conns[fd] : malloc(sizeof *c);
    if (!c) die("malloc", ENOMEM);
    memset(c, 0, offsetof(struct conn, rbuf));
    c->fd = fd;
    conns[fd] = c;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return c;
}

/* ---- epoll ---- */

static void run_epoll(int lfd) {
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd}, evs[64];
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    char buf[RBUF];
    while (!stop) {
        int n = epoll_wait(ep, evs, 64, 100);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                struct conn *c = new_conn(accept4(lfd, NULL, NULL, SOCK_NONBLOCK));
                if (!c) continue;
                ev.data.fd = c->fd;
                epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
                continue;
            }
            struct conn *c = conns[fd];
            ssize_t got = read(fd, buf, sizeof buf);
            if (got <= 0) {
                if (got < 0 && errno == EAGAIN) continue;
                close(fd);
                continue;
            }
            take(c, buf, (size_t)got);
            if (c->olen && write(fd, c->obuf, c->olen) < 0) close(fd);
            c->olen = 0;
        }
    }
}

/* ---- io_uring ---- */

static struct io_uring_sqe *sqe(void) {
    struct io_uring_sqe *s = io_uring_get_sqe(&ring);
    if (!s) {
        io_uring_submit(&ring);
        s = io_uring_get_sqe(&ring);
    }
    if (!s) die("io_uring_get_sqe", EBUSY);
    return s;
}

static void tag(struct io_uring_sqe *s, enum op op, int fd) {
    io_uring_sqe_set_data64(s, ((uint64_t)fd << 8) | op);
}

static void arm_recv(struct conn *c) {
    struct io_uring_sqe *s = sqe();
    if (multishot) {
        io_uring_prep_recv_multishot(s, c->fd, NULL, 0, 0);
        s->flags |= IOSQE_BUFFER_SELECT;
        s->buf_group = BGID;
    } else {
        io_uring_prep_recv(s, c->fd, c->rbuf, RBUF, 0);
    }
    tag(s, OP_RECV, c->fd);
}

static void send_answers(struct conn *c) {
    if (c->sending || !c->olen) return;
    c->sending = 1;
    c->inflight = c->olen;
    struct io_uring_sqe *s = sqe();
    io_uring_prep_send(s, c->fd, c->obuf, c->inflight, 0);
    tag(s, OP_SEND, c->fd);
}

/* A connection whose read produced answers: send now, or after the turn's WAL write. */
static void answer(struct conn *c) {
    if (wal_fd < 0) {
        send_answers(c);
    } else if (!c->waiting && c->olen) {
        c->waiting = 1;
        next_list[next_n++] = c->fd;
    }
}

static void start_wal_write(void) {
    if (wal_busy || !next_n) return;
    memcpy(wait_list, next_list, next_n * sizeof *next_list);
    wait_n = next_n;
    next_n = 0;
    struct io_uring_sqe *s = sqe();
    io_uring_prep_write(s, wal_fd, wlog[wlog_cur], wlog_len, wlog_off);
    tag(s, OP_WRITE, 0);
    wlog_off += wlog_len;
    wlog_len = 0;
    wlog_cur ^= 1; /* the next turn fills the other buffer while this one is written */
    wal_busy = 1;
}

static void on_write(int res) {
    if (res < 0) die("WAL write", -res);
    wal_busy = 0;
    for (int i = 0; i < wait_n; i++) {
        struct conn *c = conns[wait_list[i]];
        c->waiting = 0;
        send_answers(c);
    }
    wait_n = 0;
}

static void on_recv(struct conn *c, struct io_uring_cqe *cqe) {
    int res = cqe->res;
    if (multishot && res == -ENOBUFS) {
        arm_recv(c);
        return;
    }
    if (res <= 0) {
        close(c->fd);
        return;
    }
    if (multishot) {
        unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        take(c, bufmem + (size_t)bid * RBUF, (size_t)res);
        io_uring_buf_ring_add(bufs, bufmem + (size_t)bid * RBUF, RBUF, bid,
                              io_uring_buf_ring_mask(NBUFS), 0);
        io_uring_buf_ring_advance(bufs, 1);
        if (!(cqe->flags & IORING_CQE_F_MORE)) arm_recv(c);
    } else {
        take(c, c->rbuf, (size_t)res);
    }
    answer(c);
}

static void on_send(struct conn *c, int res) {
    c->sending = 0;
    if (res < 0 || (size_t)res != c->inflight) { /* a short send on loopback: give up */
        close(c->fd);
        return;
    }
    memmove(c->obuf, c->obuf + c->inflight, c->olen - c->inflight);
    c->olen -= c->inflight;
    c->inflight = 0;
    if (c->olen) send_answers(c);
    else if (!multishot) arm_recv(c);
}

static void setup_ring(int defer) {
    struct io_uring_params p = {0};
    p.flags = defer ? IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN
                    : IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
    int err = io_uring_queue_init_params(4096, &ring, &p);
    if (err) die("io_uring_queue_init_params", -err);
    if (!multishot) return;
    bufmem = aligned_alloc(4096, (size_t)NBUFS * RBUF);
    /* liburing 2.3 has no io_uring_setup_buf_ring: map the ring and register it by hand. */
    size_t ring_bytes = NBUFS * sizeof(struct io_uring_buf);
    bufs = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (!bufmem || bufs == MAP_FAILED) die("buffer ring memory", ENOMEM);
    io_uring_buf_ring_init(bufs);
    struct io_uring_buf_reg reg = {.ring_addr = (uint64_t)(uintptr_t)bufs,
                                   .ring_entries = NBUFS, .bgid = BGID};
    err = io_uring_register_buf_ring(&ring, &reg, 0);
    if (err) die("io_uring_register_buf_ring", -err);
    for (unsigned i = 0; i < NBUFS; i++)
        io_uring_buf_ring_add(bufs, bufmem + (size_t)i * RBUF, RBUF, i,
                              io_uring_buf_ring_mask(NBUFS), i);
    io_uring_buf_ring_advance(bufs, NBUFS);
}

static void run_uring(int lfd, int defer) {
    setup_ring(defer);
    struct io_uring_sqe *s = sqe();
    io_uring_prep_multishot_accept(s, lfd, NULL, NULL, 0);
    tag(s, OP_ACCEPT, lfd);
    struct __kernel_timespec tick = {.tv_nsec = 100 * 1000 * 1000};
    while (!stop) {
        struct io_uring_cqe *cqe;
        int err = io_uring_submit_and_wait_timeout(&ring, &cqe, 1, &tick, NULL);
        if (err < 0 && err != -ETIME && err != -EINTR) die("io_uring_submit_and_wait", -err);
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            seen++;
            int fd = (int)(cqe->user_data >> 8);
            switch (cqe->user_data & 0xff) {
            case OP_ACCEPT: {
                struct conn *c = new_conn(cqe->res);
                if (c) arm_recv(c);
                if (!(cqe->flags & IORING_CQE_F_MORE)) die("multishot accept ended", -cqe->res);
                break;
            }
            case OP_RECV: on_recv(conns[fd], cqe); break;
            case OP_SEND: on_send(conns[fd], cqe->res); break;
            case OP_WRITE: on_write(cqe->res); break;
            }
        }
        io_uring_cq_advance(&ring, seen);
        if (wal_fd >= 0) start_wal_write();
    }
}

int main(int argc, char **argv) {
    int port = 0, defer = 0, opt;
    const char *mode = "epoll", *wal = NULL;
    while ((opt = getopt(argc, argv, "p:m:dw:")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'm': mode = optarg; break;
        case 'd': defer = 1; break;
        case 'w': wal = optarg; break;
        default: port = 0;
        }
    }
    int uring = !strcmp(mode, "uring"), ms = !strcmp(mode, "multishot");
    if (!port || (!uring && !ms && strcmp(mode, "epoll")) || (wal && !uring && !ms)) {
        fprintf(stderr, "usage: floor204 -p PORT -m epoll|uring|multishot [-d] [-w FILE]\n");
        return 2;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    if (wal) {
        wal_fd = open(wal, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        wlog[0] = malloc(WLOG);
        wlog[1] = malloc(WLOG);
        if (wal_fd < 0 || !wlog[0] || !wlog[1]) die(wal, errno);
    }
    multishot = ms;
    int lfd = listen_on(port);
    if (uring || ms) run_uring(lfd, defer);
    else run_epoll(lfd);
    printf("FLOOR requests=%llu\n", requests);
    return 0;
}
