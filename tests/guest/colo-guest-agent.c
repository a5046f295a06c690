/*
 * colo-guest-agent: the workload of the COLO test guest.
 *
 * Started in the background by the guest's /init.  Reads its parameters from
 * the kernel command line (/proc/cmdline, or the file given with --cmdline):
 *
 *   colo.ip=ADDR/PREFIX      only echoed in the READY line (/init sets it up)
 *   colo.port=N              TCP service port (default 7777)
 *   colo.dirty_mbps=R        memory dirtier rate in MiB/s (default 0: off)
 *   colo.dirty_mb=M          dirtier working set in MiB (default 64)
 *   colo.disk=DEV            disk writer target (default: off)
 *   colo.disk_interval_ms=T  pause between two disk writes (default 5)
 *
 * TCP line protocol (one request line -> one answer line, any number of
 * long-lived concurrent clients):
 *   inc       increment the RAM counter, answer the new value
 *   get       answer the counter
 *   disk      answer the last completed disk writer seq (0: none)
 *   stats     counter=N dirtied_mb=N disk_seq=N ...
 *   ping      pong
 *   poweroff  stop the disk writer, answer "ok disk_seq=N", power the guest
 *             off (only with --allow-poweroff, which /init passes)
 *   other     error unknown request
 *
 * Once listening it prints "COLO-GUEST READY ip=ADDR port=N" on stdout (the
 * console) and creates the --ready-file, if given.  Built with: gcc -O2 -static -Wall -Wextra -Werror -pthread.
 */
#define _GNU_SOURCE
#include "blockfmt.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 1000
#define LINE_MAX_LEN 256
#define OUT_HIGH_WATER (64 * 1024)

struct config {
    char ip[64];
    int port;
    double dirty_mbps;
    uint64_t dirty_mb;
    char disk[256];
    unsigned disk_interval_ms;
    bool allow_poweroff;
};

static struct config cfg = {
    .ip = "0.0.0.0",
    .port = 7777,
    .dirty_mbps = 0,
    .dirty_mb = 64,
    .disk = "",
    .disk_interval_ms = 5,
};

/* Shared between threads: all accesses through __atomic builtins. */
static uint64_t dirtied_pages;
static uint64_t disk_seq;
static uint64_t disk_errors;
static int disk_stop;

/* Only touched by the main (network) thread: requests are serialised. */
static uint64_t counter;
static uint64_t requests;

static struct timespec start_ts;
static pthread_t disk_thread;
static bool disk_thread_started;

static void logmsg(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("colo-guest-agent: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_until_ns(uint64_t t)
{
    struct timespec ts = {
        .tv_sec = (time_t)(t / 1000000000ull),
        .tv_nsec = (long)(t % 1000000000ull),
    };
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

/* ---- kernel command line ------------------------------------------------ */

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-') {
        return false;
    }
    *out = v;
    return true;
}

static void parse_param(const char *tok)
{
    const char *eq = strchr(tok, '=');
    if (strncmp(tok, "colo.", 5) != 0 || !eq) {
        return;
    }
    size_t klen = (size_t)(eq - tok);
    const char *val = eq + 1;
    uint64_t u;
#define KEY(k) (klen == strlen(k) && strncmp(tok, k, klen) == 0)
    if (KEY("colo.ip")) {
        size_t n = strcspn(val, "/");
        if (n >= sizeof(cfg.ip)) {
            n = sizeof(cfg.ip) - 1;
        }
        memcpy(cfg.ip, val, n);
        cfg.ip[n] = '\0';
    } else if (KEY("colo.port")) {
        if (parse_u64(val, &u) && u > 0 && u < 65536) {
            cfg.port = (int)u;
        } else {
            logmsg("ignoring bad %s", tok);
        }
    } else if (KEY("colo.dirty_mbps")) {
        char *end;
        double d = strtod(val, &end);
        if (end != val && !*end && d >= 0) {
            cfg.dirty_mbps = d;
        } else {
            logmsg("ignoring bad %s", tok);
        }
    } else if (KEY("colo.dirty_mb")) {
        if (parse_u64(val, &u) && u > 0 && u < (1ull << 20)) {
            cfg.dirty_mb = u;
        } else {
            logmsg("ignoring bad %s", tok);
        }
    } else if (KEY("colo.disk")) {
        snprintf(cfg.disk, sizeof(cfg.disk), "%s", val);
    } else if (KEY("colo.disk_interval_ms")) {
        if (parse_u64(val, &u) && u <= 60000) {
            cfg.disk_interval_ms = (unsigned)u;
        } else {
            logmsg("ignoring bad %s", tok);
        }
    }
#undef KEY
}

static void parse_cmdline(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        logmsg("cannot read %s: %s (using defaults)", path, strerror(errno));
        return;
    }
    char tok[512];
    while (fscanf(f, "%511s", tok) == 1) {
        parse_param(tok);
    }
    fclose(f);
}

/* ---- memory dirtier ----------------------------------------------------- */

static void *dirtier_main(void *arg)
{
    (void)arg;
    const uint64_t page = 4096;
    uint64_t npages = cfg.dirty_mb * (1024 * 1024 / page);
    volatile uint64_t *mem = mmap(NULL, npages * page, PROT_READ | PROT_WRITE,
                                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        logmsg("dirtier: cannot map %" PRIu64 " MiB: %s", cfg.dirty_mb,
               strerror(errno));
        return NULL;
    }
    const uint64_t words_per_page = page / sizeof(uint64_t);
    /* Populate the working set once so that later writes only dirty. */
    for (uint64_t p = 0; p < npages; p++) {
        mem[p * words_per_page] = 0;
    }

    const double pages_per_ns = cfg.dirty_mbps * 256.0 / 1e9;
    /* Never catch up more than 10 ms worth after a stall (VM paused). */
    uint64_t max_backlog = (uint64_t)(cfg.dirty_mbps * 256.0 / 100.0);
    if (max_backlog < 1) {
        max_backlog = 1;
    }
    uint64_t t0 = now_ns(), next = t0, done = 0, pos = 0, val = 1;
    for (;;) {
        uint64_t target = (uint64_t)((double)(now_ns() - t0) * pages_per_ns);
        if (target > done + max_backlog) {
            done = target - max_backlog;
        }
        uint64_t n = target > done ? target - done : 0;
        for (uint64_t i = 0; i < n; i++) {
            /* A different value each time, spread over the page. */
            mem[pos * words_per_page + (val % words_per_page)] = val;
            val++;
            if (++pos == npages) {
                pos = 0;
            }
        }
        done += n;
        __atomic_fetch_add(&dirtied_pages, n, __ATOMIC_RELAXED);
        next += 1000000; /* 1 ms slices */
        uint64_t now = now_ns();
        if (next < now) {
            next = now;
        }
        sleep_until_ns(next);
    }
    return NULL;
}

/* ---- disk writer -------------------------------------------------------- */

static void *disk_main(void *arg)
{
    (void)arg;
    int fd = -1;
    /* virtio-blk probes asynchronously: wait up to 30 s for the node. */
    for (int i = 0; i < 300 && !__atomic_load_n(&disk_stop, __ATOMIC_ACQUIRE); i++) {
        fd = open(cfg.disk, O_WRONLY | O_DIRECT | O_DSYNC | O_CLOEXEC);
        if (fd >= 0 || (errno != ENOENT && errno != ENXIO && errno != ENODEV)) {
            break;
        }
        usleep(100000);
    }
    if (fd < 0 && errno == EINVAL) {
        /* e.g. a file on tmpfs when testing on the host */
        logmsg("disk: O_DIRECT not supported on %s, using O_DSYNC only", cfg.disk);
        fd = open(cfg.disk, O_WRONLY | O_DSYNC | O_CLOEXEC);
    }
    if (fd < 0) {
        logmsg("disk: cannot open %s: %s (disk writer off)", cfg.disk,
               strerror(errno));
        return NULL;
    }
    struct stat st;
    uint64_t size = 0;
    if (fstat(fd, &st) == 0 && S_ISBLK(st.st_mode)) {
        if (ioctl(fd, BLKGETSIZE64, &size) != 0) {
            size = 0;
        }
    } else if (fstat(fd, &st) == 0) {
        size = (uint64_t)st.st_size;
    }
    uint64_t nblocks = size / BLOCKFMT_SIZE;
    if (nblocks == 0) {
        logmsg("disk: %s is smaller than one block (disk writer off)", cfg.disk);
        close(fd);
        return NULL;
    }
    uint8_t *buf;
    if (posix_memalign((void **)&buf, 4096, BLOCKFMT_SIZE) != 0) {
        logmsg("disk: out of memory");
        close(fd);
        return NULL;
    }
    const uint64_t interval = (uint64_t)cfg.disk_interval_ms * 1000000ull;
    uint64_t seq = 1, next = now_ns();
    while (!__atomic_load_n(&disk_stop, __ATOMIC_ACQUIRE)) {
        blockfmt_fill(buf, seq);
        off_t off = (off_t)(blockfmt_index(seq, nblocks) * BLOCKFMT_SIZE);
        ssize_t r = pwrite(fd, buf, BLOCKFMT_SIZE, off);
        if (r == (ssize_t)BLOCKFMT_SIZE) {
            __atomic_store_n(&disk_seq, seq, __ATOMIC_RELEASE);
            seq++;
        } else {
            uint64_t e = __atomic_add_fetch(&disk_errors, 1, __ATOMIC_RELAXED);
            if (e <= 5) {
                logmsg("disk: write of seq %" PRIu64 " failed: %s", seq,
                       r < 0 ? strerror(errno) : "short write");
            }
            /* retry the same seq after a pause */
            if (interval == 0) {
                usleep(1000);
            }
        }
        if (interval) {
            next += interval;
            uint64_t now = now_ns();
            if (next < now) {
                next = now; /* no burst after a stall */
            }
            sleep_until_ns(next);
        }
    }
    close(fd);
    free(buf);
    return NULL;
}

/* ---- TCP service -------------------------------------------------------- */

struct conn {
    int fd;
    bool closing; /* close once out is flushed */
    size_t inlen;
    char in[LINE_MAX_LEN];
    char *out;
    size_t outlen, outcap;
};

static struct conn *conns[MAX_CONNS];
static int nconns;

static void conn_free(int i)
{
    struct conn *c = conns[i];
    close(c->fd);
    free(c->out);
    free(c);
    conns[i] = conns[--nconns];
}

static void conn_append(struct conn *c, const char *s)
{
    size_t n = strlen(s);
    if (c->outlen + n > c->outcap) {
        size_t cap = c->outcap ? c->outcap : 256;
        while (cap < c->outlen + n) {
            cap *= 2;
        }
        char *p = realloc(c->out, cap);
        if (!p) {
            c->closing = true;
            return;
        }
        c->out = p;
        c->outcap = cap;
    }
    memcpy(c->out + c->outlen, s, n);
    c->outlen += n;
}

/* Returns false if the connection is dead. */
static bool conn_flush(struct conn *c)
{
    while (c->outlen) {
        ssize_t r = send(c->fd, c->out, c->outlen, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return errno == EAGAIN || errno == EWOULDBLOCK;
        }
        memmove(c->out, c->out + r, c->outlen - (size_t)r);
        c->outlen -= (size_t)r;
    }
    return true;
}

/*
 * Enter ACPI S5 at once, as the kernel's power-off ends: PM1a_CNT of the
 * pc machine's PIIX4 power management (I/O 0x600 + 4), SLP_TYP 0 (QEMU's
 * soft-off) with SLP_EN.  The kernel's own path first shuts every device
 * down, and under TCG it sometimes never gets there (about 1 run in 20,
 * with or without COLO: it waits for an RCU grace period that does not
 * come); the tests only need the guest's request to power off.  Returns
 * if the port cannot be had, for reboot() to try.
 */
#define ACPI_PM1A_CNT   0x604
#define ACPI_SLP_EN     (1 << 13)

static void acpi_power_off(void)
{
    if (ioperm(ACPI_PM1A_CNT, 2, 1) < 0) {
        logmsg("ioperm: %s", strerror(errno));
        return;
    }
    outw(ACPI_SLP_EN, ACPI_PM1A_CNT);
}

static void do_poweroff(struct conn *c) __attribute__((noreturn));

static void do_poweroff(struct conn *c)
{
    char line[64];
    /* Stop the disk writer after its current write: disk_seq is final. */
    __atomic_store_n(&disk_stop, 1, __ATOMIC_RELEASE);
    if (disk_thread_started) {
        pthread_join(disk_thread, NULL);
        disk_thread_started = false;
    }
    uint64_t seq = __atomic_load_n(&disk_seq, __ATOMIC_ACQUIRE);
    snprintf(line, sizeof(line), "ok disk_seq=%" PRIu64 "\n", seq);
    conn_append(c, line);
    /* Blocking flush, then wait (bounded) for the client to close. */
    int fl = fcntl(c->fd, F_GETFL);
    fcntl(c->fd, F_SETFL, fl & ~O_NONBLOCK);
    struct timeval tv = { .tv_sec = 2 };
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    conn_flush(c);
    shutdown(c->fd, SHUT_WR);
    char tmp[256];
    while (recv(c->fd, tmp, sizeof(tmp), 0) > 0) {
    }
    /* Leading newline: the console shell's prompt may be on this line. */
    printf("\nCOLO-GUEST POWEROFF disk_seq=%" PRIu64 " counter=%" PRIu64 "\n",
           seq, counter);
    fflush(stdout);
    sync();
    acpi_power_off();
    reboot(RB_POWER_OFF);
    logmsg("poweroff failed: %s", strerror(errno));
    _exit(1);
}

static void handle_line(struct conn *c, char *line)
{
    char buf[256];
    size_t n = strlen(line);
    if (n && line[n - 1] == '\r') {
        line[--n] = '\0';
    }
    requests++;
    if (strcmp(line, "inc") == 0) {
        counter++;
        snprintf(buf, sizeof(buf), "%" PRIu64 "\n", counter);
    } else if (strcmp(line, "get") == 0) {
        snprintf(buf, sizeof(buf), "%" PRIu64 "\n", counter);
    } else if (strcmp(line, "disk") == 0) {
        snprintf(buf, sizeof(buf), "%" PRIu64 "\n",
                 __atomic_load_n(&disk_seq, __ATOMIC_ACQUIRE));
    } else if (strcmp(line, "stats") == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t up_ms = (uint64_t)(ts.tv_sec - start_ts.tv_sec) * 1000 +
                         (uint64_t)((ts.tv_nsec - start_ts.tv_nsec) / 1000000);
        snprintf(buf, sizeof(buf),
                 "counter=%" PRIu64 " dirtied_mb=%" PRIu64 " disk_seq=%" PRIu64
                 " disk_errors=%" PRIu64 " conns=%d requests=%" PRIu64
                 " uptime_ms=%" PRIu64 "\n",
                 counter, __atomic_load_n(&dirtied_pages, __ATOMIC_RELAXED) / 256,
                 __atomic_load_n(&disk_seq, __ATOMIC_ACQUIRE),
                 __atomic_load_n(&disk_errors, __ATOMIC_RELAXED), nconns,
                 requests, up_ms);
    } else if (strcmp(line, "ping") == 0) {
        snprintf(buf, sizeof(buf), "pong\n");
    } else if (strcmp(line, "poweroff") == 0) {
        if (cfg.allow_poweroff) {
            do_poweroff(c);
        }
        snprintf(buf, sizeof(buf), "error poweroff not allowed\n");
    } else {
        snprintf(buf, sizeof(buf), "error unknown request\n");
    }
    conn_append(c, buf);
}

/* Returns false if the connection is dead. */
static bool conn_read(struct conn *c)
{
    for (;;) {
        ssize_t r = recv(c->fd, c->in + c->inlen, sizeof(c->in) - c->inlen,
                         MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return errno == EAGAIN || errno == EWOULDBLOCK;
        }
        if (r == 0) {
            return false;
        }
        c->inlen += (size_t)r;
        char *start = c->in, *nl;
        while ((nl = memchr(start, '\n', c->inlen - (size_t)(start - c->in)))) {
            *nl = '\0';
            handle_line(c, start);
            start = nl + 1;
        }
        c->inlen -= (size_t)(start - c->in);
        memmove(c->in, start, c->inlen);
        if (c->inlen == sizeof(c->in)) {
            conn_append(c, "error line too long\n");
            c->closing = true;
            return true;
        }
        if (c->outlen > OUT_HIGH_WATER) {
            return true; /* let the client read first */
        }
    }
}

static int listen_tcp(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        logmsg("socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {
        .sin_family = AF_INET,
        .sin_port = htons((uint16_t)port),
        .sin_addr.s_addr = htonl(INADDR_ANY),
    };
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        logmsg("bind port %d: %s", port, strerror(errno));
        close(fd);
        return -1;
    }
    if (listen(fd, 64) != 0) {
        logmsg("listen: %s", strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static void serve(int lfd)
{
    struct pollfd pfd[MAX_CONNS + 1];
    for (;;) {
        int n = 0;
        pfd[n++] = (struct pollfd){
            .fd = lfd, .events = nconns < MAX_CONNS ? POLLIN : 0 };
        for (int i = 0; i < nconns; i++) {
            struct conn *c = conns[i];
            short ev = 0;
            if (!c->closing && c->outlen <= OUT_HIGH_WATER) {
                ev |= POLLIN;
            }
            if (c->outlen) {
                ev |= POLLOUT;
            }
            pfd[n++] = (struct pollfd){ .fd = c->fd, .events = ev };
        }
        if (poll(pfd, (nfds_t)n, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            logmsg("poll: %s", strerror(errno));
            exit(1);
        }
        /* Walk backwards: conn_free() moves the last entry into slot i. */
        for (int i = nconns - 1; i >= 0; i--) {
            struct conn *c = conns[i];
            short re = pfd[i + 1].revents;
            bool alive = true;
            if (re & (POLLIN | POLLHUP | POLLERR)) {
                alive = conn_read(c);
            }
            if (alive) {
                alive = conn_flush(c);
            }
            if (!alive || (c->closing && c->outlen == 0)) {
                conn_free(i);
            }
        }
        if (pfd[0].revents & POLLIN) {
            while (nconns < MAX_CONNS) {
                int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
                if (fd < 0) {
                    break;
                }
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
                struct conn *c = calloc(1, sizeof(*c));
                if (!c) {
                    close(fd);
                    break;
                }
                c->fd = fd;
                conns[nconns++] = c;
            }
        }
    }
}

static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [--cmdline FILE] [--allow-poweroff] [--ready-file FILE]\n",
            argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    const char *cmdline = "/proc/cmdline", *ready_file = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--cmdline") == 0 && i + 1 < argc) {
            cmdline = argv[++i];
        } else if (strcmp(argv[i], "--ready-file") == 0 && i + 1 < argc) {
            ready_file = argv[++i];
        } else if (strcmp(argv[i], "--allow-poweroff") == 0) {
            cfg.allow_poweroff = true;
        } else {
            usage(argv[0]);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &start_ts);
    signal(SIGPIPE, SIG_IGN);
    /* Room for MAX_CONNS sockets (the soft limit is often 1024). */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    parse_cmdline(cmdline);

    pthread_t th;
    if (cfg.dirty_mbps > 0) {
        if (pthread_create(&th, NULL, dirtier_main, NULL) != 0) {
            logmsg("cannot start dirtier thread");
            return 1;
        }
        pthread_detach(th);
    }
    if (cfg.disk[0]) {
        if (pthread_create(&disk_thread, NULL, disk_main, NULL) != 0) {
            logmsg("cannot start disk writer thread");
            return 1;
        }
        disk_thread_started = true;
    }

    int lfd = listen_tcp(cfg.port);
    if (lfd < 0) {
        return 1;
    }
    printf("COLO-GUEST READY ip=%s port=%d\n", cfg.ip, cfg.port);
    fflush(stdout);
    if (ready_file) {
        int fd = open(ready_file, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0) {
            close(fd);
        }
    }
    serve(lfd);
    return 0;
}
