/*
 * pload: the HTTP/1.1 load generator of `make load-test` for the two runs where one wrk thread,
 * not the server, sets the figure (issue 13). scripts/load-test.sh builds it with the system C
 * compiler into target/pload; it needs only libc and Linux (epoll, epoll_pwait2).
 *
 *   pload -p PORT -c CONNS -d SECONDS -u PATH_PREFIX [-P DEPTH] [-R RATE [-S]]
 *
 * One thread, one epoll set, connections to 127.0.0.1:PORT only. Requests are
 * `GET <PATH_PREFIX><file_id> HTTP/1.1` with a Host header (wrk.format's shape), built once at
 * start, cycling 1024 file ids from 1000000 upwards.
 *
 * - Closed loop, pipelined (no -R): each connection writes DEPTH requests in one send, reads
 *   until all DEPTH answers are in, and writes the next batch. What wrk with
 *   scripts/wrk/pipeline.lua does, without Lua and per-response callbacks, so a far higher rate
 *   fits on one CPU. Latency is per batch.
 * - Open loop (-R RATE): RATE requests per second in all, spread evenly over the connections,
 *   each connection on a fixed schedule with its own phase and one request outstanding (wrk2's
 *   model). A request's latency runs from the time it was *scheduled*, not from when it could be
 *   sent, so a stall is charged to every request it delays (no coordinated omission).
 * - Spin (-S, open loop only): never sleep; poll epoll with a zero timeout and send each request
 *   the moment it is due. The generator then takes all of its CPU by construction, but no
 *   request waits for the generator's own timer interrupt or wake-up (in a VM, a VM exit each),
 *   and no answer has to wake it: what it measures is the server and the loopback path. Its
 *   cpu_us is then meaningless as a load figure; `idle_polls` counts the empty polls, the
 *   generator's spare capacity (0 means it was saturated).
 *
 * Prints one line: `PLOAD requests=N duration_us=N non2xx=N errors=N p50_us=N p99_us=N
 * p999_us=N max_us=N cpu_us=N idle_polls=N stalls=N` (latencies as the upper bound of a histogram
 * bucket, 0.2 % wide; cpu_us is this process's own user+system time; stalls counts episodes in
 * which answers came 1 ms or more late, each once however many requests it delayed).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define IDS 1024
#define RBUF (256 * 1024)
#define HBUCKETS (1024 + 40 * 512)

struct conn {
    int fd;
    size_t rlen;            /* bytes in rbuf not yet parsed */
    const char *wptr;       /* unsent part of the current write */
    size_t wleft;
    int awaited;            /* answers still owed for what was sent */
    uint64_t started_ns;    /* batch sent (closed loop) or request scheduled (open loop) */
    uint64_t phase_ns;      /* open loop: this connection's schedule offset */
    uint64_t next_k;        /* open loop: index of the next request to send */
    unsigned next_id;
    char *rbuf;
};

static struct {
    int port, conns, depth;
    double seconds, rate;
    int spin;               /* -S: poll epoll with a zero timeout instead of sleeping */
    char **req;             /* IDS single requests */
    size_t *req_len;
    char **batch;           /* closed loop: IDS / depth batches of depth requests */
    size_t *batch_len;
    uint64_t interval_ns;   /* open loop: per-connection interval */
    uint64_t t0, end;
    uint64_t requests, non2xx, errors, idle_polls;
    uint64_t stalls, last_late_ns; /* episodes of answers >= 1 ms late (see on_readable) */
    uint64_t hist[HBUCKETS];
} g;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "pload: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* Log-linear histogram: exact below 1024 ns, then 512 sub-buckets per power of two. */
static unsigned bucket_of(uint64_t v) {
    if (v < 1024) return (unsigned)v;
    unsigned e = 63 - (unsigned)__builtin_clzll(v);
    if (e > 49) return HBUCKETS - 1;
    return 1024 + (e - 10) * 512 + (unsigned)((v >> (e - 9)) & 511);
}

static uint64_t bucket_top(unsigned b) {
    if (b < 1024) return b;
    unsigned e = (b - 1024) / 512 + 10, sub = (b - 1024) % 512;
    return ((uint64_t)(512 + sub + 1) << (e - 9)) - 1;
}

static uint64_t quantile_us(double q) {
    uint64_t total = 0, seen = 0;
    for (unsigned b = 0; b < HBUCKETS; b++) total += g.hist[b];
    if (!total) return 0;
    for (unsigned b = 0; b < HBUCKETS; b++) {
        seen += g.hist[b];
        if ((double)seen >= q * (double)total) return (bucket_top(b) + 999) / 1000;
    }
    return 0;
}

static void build_requests(const char *prefix) {
    g.req = calloc(IDS, sizeof *g.req);
    g.req_len = calloc(IDS, sizeof *g.req_len);
    for (unsigned i = 0; i < IDS; i++) {
        int n = asprintf(&g.req[i], "GET %s%u HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n", prefix,
                         1000000 + i, g.port);
        if (n < 0) die("asprintf");
        g.req_len[i] = (size_t)n;
    }
    unsigned batches = IDS / (unsigned)g.depth;
    g.batch = calloc(batches, sizeof *g.batch);
    g.batch_len = calloc(batches, sizeof *g.batch_len);
    for (unsigned b = 0; b < batches; b++) {
        size_t len = 0;
        for (int i = 0; i < g.depth; i++) len += g.req_len[b * g.depth + i];
        g.batch[b] = malloc(len);
        for (int i = 0; i < g.depth; i++) {
            memcpy(g.batch[b] + g.batch_len[b], g.req[b * g.depth + i], g.req_len[b * g.depth + i]);
            g.batch_len[b] += g.req_len[b * g.depth + i];
        }
    }
}

static int open_conn(int ep, struct conn *c) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0) return -1;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
    c->rlen = 0, c->wleft = 0, c->awaited = 0;
    return 0;
}

/* Sends what is left of the current write; arms EPOLLOUT while the socket is full. */
static int flush_write(int ep, struct conn *c) {
    while (c->wleft) {
        ssize_t n = send(c->fd, c->wptr, c->wleft, MSG_NOSIGNAL);
        if (n < 0 && errno == EAGAIN) {
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            return 0;
        }
        if (n <= 0) return -1;
        c->wptr += n, c->wleft -= (size_t)n;
    }
    return 0;
}

/* Starts the next write of the connection: a batch (closed loop) or one request. */
static int start_write(int ep, struct conn *c, uint64_t started) {
    if (g.rate > 0) {
        c->wptr = g.req[c->next_id], c->wleft = g.req_len[c->next_id];
        c->next_id = (c->next_id + 1) % IDS, c->awaited = 1;
    } else {
        unsigned b = c->next_id;
        c->wptr = g.batch[b], c->wleft = g.batch_len[b];
        c->next_id = (b + 1) % (IDS / (unsigned)g.depth), c->awaited = g.depth;
    }
    c->started_ns = started;
    return flush_write(ep, c);
}

/* Length of the first complete response in p[0..n), 0 if incomplete, -1 if malformed. */
static long parse_response(const char *p, size_t n, int *status) {
    const char *end = memmem(p, n, "\r\n\r\n", 4);
    if (!end) return n > 16384 ? -1 : 0;
    if (n < 12 || memcmp(p, "HTTP/1.", 7) != 0) return -1;
    *status = atoi(p + 9);
    size_t body = 0;
    for (const char *line = memchr(p, '\n', (size_t)(end - p)); line && line < end;
         line = memchr(line + 1, '\n', (size_t)(end - line))) {
        if (strncasecmp(line + 1, "content-length:", 15) == 0) body = strtoul(line + 16, NULL, 10);
    }
    size_t total = (size_t)(end - p) + 4 + body;
    return total <= n ? (long)total : 0;
}

/* A stall episode: an answer 1 ms or more after its start whose start lies over 1 ms past the
 * latest start of a late answer seen so far. One stall delays every request scheduled during
 * it, on every connection; this counts the stall once, however many requests it delayed. */
static void note_late(uint64_t started, uint64_t latency) {
    if (latency < 1000000) return;
    if (started > g.last_late_ns + 1000000) g.stalls++;
    if (started > g.last_late_ns) g.last_late_ns = started;
}

static uint64_t due_ns(const struct conn *c, uint64_t k) {
    return g.t0 + c->phase_ns + k * g.interval_ns;
}

/* Reads and counts answers; starts the next write once the batch or request is answered. */
static int on_readable(int ep, struct conn *c) {
    ssize_t n = recv(c->fd, c->rbuf + c->rlen, RBUF - c->rlen, 0);
    if (n < 0 && errno == EAGAIN) return 0;
    if (n <= 0) return -1;
    c->rlen += (size_t)n;
    size_t off = 0;
    for (;;) {
        int status = 0;
        long len = parse_response(c->rbuf + off, c->rlen - off, &status);
        if (len < 0) return -1;
        if (len == 0) break;
        off += (size_t)len;
        if (c->awaited <= 0) return -1; /* an answer nobody asked for */
        uint64_t t = now_ns();
        if (t < g.end) {
            g.requests++;
            if (status < 200 || status > 299) g.non2xx++;
        }
        if (--c->awaited == 0) {
            if (t < g.end) {
                g.hist[bucket_of(t - c->started_ns)]++;
                note_late(c->started_ns, t - c->started_ns);
            }
            if (g.rate == 0 && start_write(ep, c, now_ns()) < 0) return -1;
            if (g.rate > 0 && due_ns(c, c->next_k) <= t && start_write(ep, c, due_ns(c, c->next_k++)) < 0)
                return -1;
        }
    }
    memmove(c->rbuf, c->rbuf + off, c->rlen - off);
    c->rlen -= off;
    return 0;
}

static void reconnect(int ep, struct conn *c) {
    g.errors++;
    close(c->fd);
    if (open_conn(ep, c) < 0) { g.errors++; return; }
    if (g.rate == 0) start_write(ep, c, now_ns());
}

/* Open loop: sends every idle connection's due request; returns ns until the next one is due. */
static uint64_t send_due(int ep, struct conn *cs, uint64_t t) {
    uint64_t wait = 1000000;
    for (int i = 0; i < g.conns; i++) {
        struct conn *c = &cs[i];
        if (c->awaited) continue;
        uint64_t due = due_ns(c, c->next_k);
        if (due <= t) {
            if (start_write(ep, c, due) < 0) reconnect(ep, c);
            c->next_k++;
        } else if (due - t < wait) {
            wait = due - t;
        }
    }
    return wait;
}

static void parse_args(int argc, char **argv, const char **prefix) {
    int opt;
    g.depth = 1;
    while ((opt = getopt(argc, argv, "p:c:d:u:P:R:S")) != -1) {
        if (opt == 'p') g.port = atoi(optarg);
        else if (opt == 'c') g.conns = atoi(optarg);
        else if (opt == 'd') g.seconds = atof(optarg);
        else if (opt == 'u') *prefix = optarg;
        else if (opt == 'P') g.depth = atoi(optarg);
        else if (opt == 'R') g.rate = atof(optarg);
        else if (opt == 'S') g.spin = 1;
        else exit(2);
    }
    if (!g.port || g.conns <= 0 || g.seconds <= 0 || !*prefix || g.depth <= 0 ||
        IDS % g.depth != 0 || (g.rate > 0 && g.depth != 1) || (g.spin && g.rate <= 0)) {
        fprintf(stderr, "usage: pload -p PORT -c CONNS -d SECONDS -u PATH_PREFIX "
                        "[-P DEPTH dividing 1024] [-R RATE, depth 1 [-S: spin]]\n");
        exit(2);
    }
}

int main(int argc, char **argv) {
    const char *prefix = NULL;
    parse_args(argc, argv, &prefix);
    build_requests(prefix);
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    struct conn *cs = calloc((size_t)g.conns, sizeof *cs);
    if (g.rate > 0) g.interval_ns = (uint64_t)(1e9 * g.conns / g.rate);
    for (int i = 0; i < g.conns; i++) {
        cs[i].rbuf = malloc(RBUF);
        cs[i].next_id = (unsigned)i % (IDS / (unsigned)g.depth);
        cs[i].phase_ns = g.interval_ns * (uint64_t)i / (uint64_t)g.conns;
        if (open_conn(ep, &cs[i]) < 0) die("connect");
    }
    g.t0 = now_ns() + 1000000;
    g.end = g.t0 + (uint64_t)(g.seconds * 1e9);
    if (g.rate == 0)
        for (int i = 0; i < g.conns; i++)
            if (start_write(ep, &cs[i], now_ns()) < 0) reconnect(ep, &cs[i]);
    struct epoll_event evs[256];
    for (uint64_t t = now_ns(); t < g.end; t = now_ns()) {
        uint64_t wait = g.rate > 0 ? send_due(ep, cs, t) : 100000000;
        if (g.spin) wait = 0;
        struct timespec ts = {.tv_sec = (time_t)(wait / 1000000000u), .tv_nsec = (long)(wait % 1000000000u)};
        int n = epoll_pwait2(ep, evs, 256, &ts, NULL);
        if (n < 0 && errno != EINTR) die("epoll_pwait2");
        if (n == 0 && g.spin) g.idle_polls++;
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            int bad = 0;
            if (evs[i].events & EPOLLOUT) {
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                bad = flush_write(ep, c) < 0;
            }
            if (!bad && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) bad = on_readable(ep, c) < 0;
            if (bad) reconnect(ep, c);
        }
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    uint64_t cpu_us = (uint64_t)ru.ru_utime.tv_sec * 1000000 + (uint64_t)ru.ru_utime.tv_usec +
                      (uint64_t)ru.ru_stime.tv_sec * 1000000 + (uint64_t)ru.ru_stime.tv_usec;
    printf("PLOAD requests=%llu duration_us=%llu non2xx=%llu errors=%llu p50_us=%llu "
           "p99_us=%llu p999_us=%llu max_us=%llu cpu_us=%llu idle_polls=%llu stalls=%llu\n",
           (unsigned long long)g.requests, (unsigned long long)((g.end - g.t0) / 1000),
           (unsigned long long)g.non2xx, (unsigned long long)g.errors,
           (unsigned long long)quantile_us(0.5), (unsigned long long)quantile_us(0.99),
           (unsigned long long)quantile_us(0.999), (unsigned long long)quantile_us(1.0),
           (unsigned long long)cpu_us, (unsigned long long)g.idle_polls, (unsigned long long)g.stalls);
    return 0;
}
