/*
 * hiccup: how much of the time this machine itself takes the CPUs away, and what that alone
 * does to an open-loop p99 (issue 13). scripts/load-test.sh builds it with the system C compiler
 * into target/hiccup; it needs only libc, pthreads and Linux.
 *
 *   hiccup -d SECONDS -c CPU[,CPU...] [-u UTILISATION]
 *   hiccup -t        (checks the merge and the floor arithmetic on fixed gaps; exit 0 if right)
 *
 * One thread per CPU, pinned, spins on clock_gettime(CLOCK_MONOTONIC) and records every gap of
 * more than GAP_NS between two readings: time in which that thread did not run although it never
 * blocked (the vCPU was preempted by the host, an interrupt or another task ran). Run it on the
 * CPUs of a load test with nothing else on them, just before or after a run.
 *
 * The floor: a request on the loopback path needs both CPUs (the generator's and the server's),
 * so a stall on either delays it. The gaps of all threads are merged into one set of intervals;
 * a request that arrives at a uniformly random time waits until the interval it falls in ends,
 * so P(delay > x) = sum over intervals of max(0, length - x) / duration. floor_p99_us is the x
 * where that is 1 %: the p99 that a server costing nothing would show, from the machine alone.
 * A server busy a share u of the time (-u, 0 <= u < 1) also has to work off what queued during
 * a stall: an arrival t into a stall of length L waits L - (1 - u) t, so each stall delays
 * requests for L / (1 - u) and P(delay > x) = sum max(0, L - x) / ((1 - u) duration). At 50 % of
 * the server's own maximum, -u 0.5.
 *
 * Prints one line: `HICCUP duration_us=N stalled_us=N gaps_1ms=N max_gap_us=N floor_p99_us=N
 * floor_p999_us=N`, and per CPU `cpuN_gaps_1ms=N cpuN_stalled_1ms_us=N` (gaps of 1 ms or more).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define GAP_NS 20000u
#define MAX_CPUS 64

struct gap {
    uint64_t start, end;
};

struct spinner {
    int cpu;
    uint64_t end_ns;
    struct gap *gaps;
    size_t n, cap;
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "hiccup: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void *spin(void *arg) {
    struct spinner *s = arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(s->cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) die("sched_setaffinity");
    uint64_t prev = now_ns();
    while (prev < s->end_ns) {
        uint64_t t = now_ns();
        if (t - prev > GAP_NS) {
            if (s->n == s->cap) {
                s->cap = s->cap ? 2 * s->cap : 4096;
                s->gaps = realloc(s->gaps, s->cap * sizeof *s->gaps);
                if (!s->gaps) die("realloc");
            }
            s->gaps[s->n++] = (struct gap){prev, t};
        }
        prev = t;
    }
    return NULL;
}

static int by_start(const void *a, const void *b) {
    const struct gap *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* Merges overlapping intervals in place (sorted by start); returns how many are left. */
static size_t merge(struct gap *g, size_t n) {
    if (n == 0) return 0;
    qsort(g, n, sizeof *g, by_start);
    size_t out = 0;
    for (size_t i = 1; i < n; i++) {
        if (g[i].start <= g[out].end) {
            if (g[i].end > g[out].end) g[out].end = g[i].end;
        } else {
            g[++out] = g[i];
        }
    }
    return out + 1;
}

/* The smallest x (ns) with sum(max(0, len - x)) <= share * duration: the delay quantile
 * (share is 1 - q, times 1 - u for a busy server). */
static uint64_t floor_quantile(const struct gap *g, size_t n, uint64_t duration, double share) {
    uint64_t lo = 0, hi = 0;
    for (size_t i = 0; i < n; i++)
        if (g[i].end - g[i].start > hi) hi = g[i].end - g[i].start;
    double budget = share * (double)duration;
    while (lo < hi) {
        uint64_t x = lo + (hi - lo) / 2;
        double over = 0;
        for (size_t i = 0; i < n; i++) {
            uint64_t len = g[i].end - g[i].start;
            if (len > x) over += (double)(len - x);
        }
        if (over <= budget) hi = x;
        else lo = x + 1;
    }
    return lo;
}

/* -t: known answers. Gaps [0,5] and [3,8] ms merge into one of 8 ms, [20,30] stays apart; in a
 * second, P(delay > x) = ((8 - x) + (10 - x)) / 1000 for x < 8, so the p99 (1 %) is 4 ms, and
 * at u = 0.5 (0.5 %) it is 6.5 ms: (8 - 6.5) + (10 - 6.5) = 5 ms. */
static int self_test(void) {
    const uint64_t ms = 1000000;
    struct gap g[] = {{20 * ms, 30 * ms}, {0, 5 * ms}, {3 * ms, 8 * ms}};
    size_t m = merge(g, 3);
    int ok = m == 2 && g[0].start == 0 && g[0].end == 8 * ms && g[1].start == 20 * ms &&
             floor_quantile(g, m, 1000 * ms, 0.01) == 4 * ms &&
             floor_quantile(g, m, 1000 * ms, 0.005) == 6500000 &&
             floor_quantile(g, m, 1000 * ms, 0.5) == 0 && merge(g, 0) == 0;
    printf("hiccup self-test: %s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}

static int parse_cpus(const char *list, struct spinner *s) {
    int n = 0;
    for (const char *p = list; *p && n < MAX_CPUS;) {
        char *endp;
        long cpu = strtol(p, &endp, 10);
        if (endp == p || cpu < 0 || cpu >= CPU_SETSIZE) return -1;
        s[n++].cpu = (int)cpu;
        p = *endp == ',' ? endp + 1 : endp;
        if (*endp && *endp != ',') return -1;
    }
    return n;
}

int main(int argc, char **argv) {
    double seconds = 0, util = 0;
    const char *cpus = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "d:c:u:t")) != -1) {
        if (opt == 't') return self_test();
        if (opt == 'd') seconds = atof(optarg);
        else if (opt == 'c') cpus = optarg;
        else if (opt == 'u') util = atof(optarg);
        else seconds = -1;
    }
    static struct spinner s[MAX_CPUS];
    int n = cpus ? parse_cpus(cpus, s) : -1;
    if (seconds <= 0 || n <= 0 || util < 0 || util >= 1) {
        fprintf(stderr, "usage: hiccup -d SECONDS -c CPU[,CPU...] [-u UTILISATION, 0 <= u < 1]\n");
        exit(2);
    }
    uint64_t t0 = now_ns(), end = t0 + (uint64_t)(seconds * 1e9);
    pthread_t th[MAX_CPUS];
    for (int i = 0; i < n; i++) {
        s[i].end_ns = end;
        if (pthread_create(&th[i], NULL, spin, &s[i]) != 0) die("pthread_create");
    }
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        total += s[i].n;
    }
    struct gap *all = malloc((total ? total : 1) * sizeof *all);
    if (!all) die("malloc");
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        memcpy(all + k, s[i].gaps, s[i].n * sizeof *all);
        k += s[i].n;
    }
    size_t m = merge(all, k);
    uint64_t duration = now_ns() - t0, stalled = 0, longest = 0, long_gaps = 0;
    for (size_t i = 0; i < m; i++) {
        uint64_t len = all[i].end - all[i].start;
        stalled += len;
        if (len > longest) longest = len;
        if (len >= 1000000) long_gaps++;
    }
    printf("HICCUP duration_us=%llu stalled_us=%llu gaps_1ms=%llu max_gap_us=%llu "
           "floor_p99_us=%llu floor_p999_us=%llu",
           (unsigned long long)(duration / 1000), (unsigned long long)(stalled / 1000),
           (unsigned long long)long_gaps, (unsigned long long)(longest / 1000),
           (unsigned long long)(floor_quantile(all, m, duration, 0.01 * (1 - util)) / 1000),
           (unsigned long long)(floor_quantile(all, m, duration, 0.001 * (1 - util)) / 1000));
    for (int i = 0; i < n; i++) {
        uint64_t cnt = 0, sum = 0;
        for (size_t j = 0; j < s[i].n; j++) {
            uint64_t len = s[i].gaps[j].end - s[i].gaps[j].start;
            if (len >= 1000000) cnt++, sum += len;
        }
        printf(" cpu%d_gaps_1ms=%llu cpu%d_stalled_1ms_us=%llu", s[i].cpu,
               (unsigned long long)cnt, s[i].cpu, (unsigned long long)(sum / 1000));
    }
    printf("\n");
    return 0;
}
