/*
 * loadgen: a load generator for the numd counter protocol (and any server that
 * speaks its tokens), built by bench/run with the machine's gcc.
 *
 * One thread, one epoll set, non-blocking sockets, traffic only to 127.0.0.1.
 *
 * Modes
 *   schedule  N counter clients on the real schedule: register with an ID, then a
 *             report every --report-ms, and a request every --req-min-ms..--req-max-ms
 *             (uniform), which is an array of --array-min..--array-max values with
 *             probability --array-share, else "even" or "odd".
 *   flood     --clients connections each register, then keep --window requests in
 *             flight (pipelined: every read of k replies is answered by one write
 *             of k new requests). --count bounds the total number of requests.
 *   fill      one connection sends arrays of 1000 values until --fill-values
 *             values were sent (4 in flight), to grow the server's sorted list.
 *   register  --clients connections each connect, register with the next ID
 *             (cycling over --id-space), wait for the start number, close (RST)
 *             and connect again, for --duration: registrations per second, and
 *             the latency of one cycle (from the connect to the start number).
 *
 * --ports P1,P2,... spreads the clients over several servers (client i connects
 * to the (i mod n)-th port): one run, one set of figures, for several instances.
 *
 * Latency is measured from the *scheduled* send time of a request to the arrival
 * of the last byte of its reply, so a late generator or a full socket buffer
 * counts against the server, never hides it. Every run is bounded: sending stops
 * after --duration, outstanding replies get --grace seconds, and an alarm ends
 * the process if anything hangs. Output: one JSON object on stdout.
 *
 * Build: gcc -O2 -Wall -o loadgen loadgen.c -lm
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { ST_INIT, ST_CONNECTING, ST_REGISTERING, ST_ACTIVE, ST_CLOSED };
enum { K_ID, K_EVEN, K_ODD, K_ARRAY };

typedef struct {
    uint64_t sched_ns; /* when it was meant to be sent */
    uint64_t sent_ns;  /* when it was handed to the kernel (or buffered) */
    uint8_t kind;
} pending_t;

typedef struct {
    int fd;
    int idx;
    int state;
    int registers; /* 1: sends its ID first; 0: beyond the ID space, requests only */
    int heap_pos;
    uint64_t due_ns;         /* next event: connect, report or request */
    uint64_t next_report_ns; /* 0 = none */
    uint64_t next_request_ns;
    uint64_t connect_start_ns;
    int64_t number;
    /* FIFO of requests waiting for their reply */
    pending_t *q;
    int q_cap, q_head, q_len;
    /* bytes not yet accepted by the kernel */
    char *out;
    int out_len, out_cap;
    /* reply token being parsed */
    int tok_len;
    char tok_first;
    int tok_digits_only;
    int64_t tok_value;
    int tok_neg;
    int refill; /* flood: replies received in this read, to be replaced */
} conn_t;

/* ---------------------------------------------------------------- options */
static const char *mode = "schedule";
static int port = 2004;
static int ports[16];
static int n_ports = 0; /* --ports: the clients spread over these, else all on --port */
static int n_clients = 100;
static double duration = 10;
static double ramp = 5000;      /* connects per second */
static int max_connecting = 200; /* connects in progress at once */
static double array_share = 0.02;
static int array_min = 10, array_max = 20;
static int id_space = 10001;
static int window = 64;
static long long count_limit = 0;
static double report_ms = 500, req_min_ms = 3000, req_max_ms = 5000;
static unsigned seed = 1;
static double grace = 3;
static double connect_timeout = 10;
static long long fill_values = 1000000;
static long long array_value_max = 1000000;

/* ---------------------------------------------------------------- state */
static conn_t *conns;
static int epfd;
static int *heap; /* conn indices, min-heap on due_ns */
static int heap_n;
static uint64_t t0;
static uint64_t end_send_ns;
static int sending = 1;
static int connecting_now = 0;
static int *waiting; /* clients whose connect time passed while too many connects were in progress */
static long long wait_head = 0, wait_tail = 0;
static int is_flood = 0;
static int is_register = 0;
static long long next_id = 0; /* register: the ID of the next registration */

static uint64_t last_rx_ns = 0;
static double max_gap_ms = 0;

/* counters */
static long long n_connected = 0, n_connect_fail = 0, n_drops = 0, n_registered = 0;
static long long n_sent_tokens = 0, n_reports = 0, n_requests = 0, n_arrays = 0;
static long long n_replies = 0, n_error_replies = 0, n_bad_replies = 0;
static long long n_bytes_in = 0, n_bytes_out = 0;
static long long max_reply_bytes = 0;
static long long flood_sent = 0;
static uint64_t all_up_ns = 0; /* when the last client registered */
static long long fill_sent_values = 0;
static int fill_inflight = 0;

/* latency samples in microseconds */
typedef struct {
    uint32_t *v;
    size_t n, cap;
} samples_t;
static samples_t lat_req, lat_array, lat_register, lat_connect, lat_steady, send_lag, send_lag_steady;

static void add_sample(samples_t *s, uint64_t ns) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4096;
        if (cap > 200000000) return;
        uint32_t *v = realloc(s->v, cap * sizeof(uint32_t));
        if (!v) return;
        s->v = v;
        s->cap = cap;
    }
    uint64_t us = ns / 1000;
    s->v[s->n++] = us > 0xffffffffu ? 0xffffffffu : (uint32_t)us;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static uint64_t rnd_state;
static uint64_t rnd(void) { /* xorshift64* */
    rnd_state ^= rnd_state >> 12;
    rnd_state ^= rnd_state << 25;
    rnd_state ^= rnd_state >> 27;
    return rnd_state * 2685821657736338717ull;
}
static double rnd01(void) { return (rnd() >> 11) * (1.0 / 9007199254740992.0); }

/* ---------------------------------------------------------------- heap */
static void heap_swap(int a, int b) {
    int ca = heap[a], cb = heap[b];
    heap[a] = cb;
    heap[b] = ca;
    conns[cb].heap_pos = a;
    conns[ca].heap_pos = b;
}
static void heap_up(int i) {
    while (i > 0) {
        int p = (i - 1) / 2;
        if (conns[heap[p]].due_ns <= conns[heap[i]].due_ns) break;
        heap_swap(i, p);
        i = p;
    }
}
static void heap_down(int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < heap_n && conns[heap[l]].due_ns < conns[heap[m]].due_ns) m = l;
        if (r < heap_n && conns[heap[r]].due_ns < conns[heap[m]].due_ns) m = r;
        if (m == i) break;
        heap_swap(i, m);
        i = m;
    }
}
static void heap_push(int c) {
    conns[c].heap_pos = heap_n;
    heap[heap_n++] = c;
    heap_up(heap_n - 1);
}
static void heap_remove(int c) {
    int i = conns[c].heap_pos;
    if (i < 0) return;
    conns[c].heap_pos = -1;
    heap_n--;
    if (i != heap_n) {
        heap[i] = heap[heap_n];
        conns[heap[i]].heap_pos = i;
        heap_up(i);
        heap_down(conns[heap[i]].heap_pos);
    }
}
static void heap_update(int c) {
    if (conns[c].heap_pos < 0) {
        heap_push(c);
    } else {
        heap_up(conns[c].heap_pos);
        heap_down(conns[c].heap_pos);
    }
}

/* ---------------------------------------------------------------- I/O */
static void q_push(conn_t *c, uint64_t sched, uint64_t sent, int kind) {
    if (c->q_len == c->q_cap) {
        int cap = c->q_cap ? c->q_cap * 2 : 8;
        pending_t *q = malloc(cap * sizeof(pending_t));
        for (int i = 0; i < c->q_len; i++) q[i] = c->q[(c->q_head + i) % c->q_cap];
        free(c->q);
        c->q = q;
        c->q_cap = cap;
        c->q_head = 0;
    }
    pending_t *p = &c->q[(c->q_head + c->q_len) % c->q_cap];
    p->sched_ns = sched;
    p->sent_ns = sent;
    p->kind = (uint8_t)kind;
    c->q_len++;
}

static void close_conn(conn_t *c, int dropped) {
    if (c->state == ST_CLOSED) return;
    if (c->state == ST_CONNECTING) connecting_now--;
    if (dropped) n_drops++;
    heap_remove(c->idx);
    if (c->fd >= 0) {
        struct linger lg = {1, 0}; /* RST: no TIME_WAIT left behind for the next run */
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(c->fd);
    }
    c->fd = -1;
    c->state = ST_CLOSED;
}

static void want_out(conn_t *c, int on) {
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.u32 = c->idx};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void send_bytes(conn_t *c, const char *buf, int len) {
    n_bytes_out += len;
    if (c->out_len == 0) {
        ssize_t w = write(c->fd, buf, len);
        if (w == len) return;
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                close_conn(c, 1);
                return;
            }
            w = 0;
        }
        buf += w;
        len -= (int)w;
        want_out(c, 1);
    }
    if (c->out_len + len > c->out_cap) {
        int cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + len) cap *= 2;
        c->out = realloc(c->out, cap);
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, buf, len);
    c->out_len += len;
}

static void flush_out(conn_t *c) {
    if (!c->out_len) return;
    ssize_t w = write(c->fd, c->out, c->out_len);
    if (w < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) close_conn(c, 1);
        return;
    }
    memmove(c->out, c->out + w, c->out_len - w);
    c->out_len -= (int)w;
    if (!c->out_len) want_out(c, 0);
}

static int format_array(char *buf, int n, long long vmax) {
    int len = 0;
    buf[len++] = '[';
    for (int i = 0; i < n; i++) {
        if (i) buf[len++] = ',';
        len += sprintf(buf + len, "%llu", (unsigned long long)(rnd() % (uint64_t)vmax));
    }
    buf[len++] = ']';
    buf[len++] = ' ';
    return len;
}

/* Send one request token of `kind` scheduled at `sched`. */
static void send_request(conn_t *c, int kind, uint64_t sched) {
    static char buf[1000 * 21 + 8];
    int len;
    if (kind == K_EVEN) {
        memcpy(buf, "even ", 5);
        len = 5;
    } else if (kind == K_ODD) {
        memcpy(buf, "odd ", 4);
        len = 4;
    } else {
        int n = array_min + (int)(rnd() % (uint64_t)(array_max - array_min + 1));
        len = format_array(buf, n, array_value_max);
        n_arrays++;
    }
    uint64_t t = now_ns();
    add_sample(&send_lag, t > sched ? t - sched : 0);
    if (all_up_ns && sched >= all_up_ns) add_sample(&send_lag_steady, t > sched ? t - sched : 0);
    q_push(c, sched, t, kind);
    n_requests++;
    n_sent_tokens++;
    send_bytes(c, buf, len);
}

static void send_report(conn_t *c, uint64_t sched) {
    char buf[32];
    c->number += 1;
    int len = sprintf(buf, "%lld ", (long long)c->number);
    uint64_t t = now_ns();
    add_sample(&send_lag, t > sched ? t - sched : 0);
    if (all_up_ns && sched >= all_up_ns) add_sample(&send_lag_steady, t > sched ? t - sched : 0);
    n_reports++;
    n_sent_tokens++;
    send_bytes(c, buf, len);
}

static void flood_top_up(conn_t *c, int k) {
    static char buf[64 * 1024];
    int len = 0;
    uint64_t t = now_ns();
    while (k-- > 0 && sending && (!count_limit || flood_sent < count_limit) && len < (int)sizeof buf - 32) {
        int kind;
        if (array_share > 0 && rnd01() < array_share) {
            kind = K_ARRAY;
            int n = array_min + (int)(rnd() % (uint64_t)(array_max - array_min + 1));
            if (len + n * 21 + 4 > (int)sizeof buf) break;
            len += format_array(buf + len, n, array_value_max);
            n_arrays++;
        } else {
            kind = (flood_sent & 1) ? K_ODD : K_EVEN;
            len += sprintf(buf + len, kind == K_EVEN ? "even " : "odd ");
        }
        q_push(c, t, t, kind);
        flood_sent++;
        n_requests++;
        n_sent_tokens++;
    }
    if (len) send_bytes(c, buf, len);
}

static void fill_top_up(conn_t *c) {
    static char buf[1000 * 21 + 8];
    while (fill_inflight < 4 && fill_sent_values < fill_values) {
        long long n = fill_values - fill_sent_values;
        if (n > 1000) n = 1000;
        int len = format_array(buf, (int)n, array_value_max);
        uint64_t t = now_ns();
        q_push(c, t, t, K_ARRAY);
        fill_sent_values += n;
        fill_inflight++;
        n_arrays++;
        n_requests++;
        n_sent_tokens++;
        send_bytes(c, buf, len);
        if (c->state == ST_CLOSED) return;
    }
}

static void schedule_next(conn_t *c) {
    uint64_t d = c->next_report_ns;
    if (c->next_request_ns && (!d || c->next_request_ns < d)) d = c->next_request_ns;
    if (!d || !sending) {
        heap_remove(c->idx);
        return;
    }
    c->due_ns = d;
    heap_update(c->idx);
}

static void start_active(conn_t *c, uint64_t t) {
    c->state = ST_ACTIVE;
    if (!strcmp(mode, "schedule")) {
        c->next_report_ns = c->registers ? t + (uint64_t)(report_ms * 1e6) : 0;
        c->next_request_ns = t + (uint64_t)((req_min_ms + rnd01() * (req_max_ms - req_min_ms)) * 1e6);
        schedule_next(c);
    } else if (!strcmp(mode, "flood")) {
        flood_top_up(c, window);
    } else {
        fill_top_up(c);
    }
}

static void start_connect(conn_t *c, uint64_t t);

/* A whole reply token arrived on `c`. */
static void on_reply(conn_t *c, uint64_t t, uint64_t prev_rx) {
    if (c->q_len == 0) {
        n_bad_replies++; /* a reply nobody asked for */
        return;
    }
    pending_t p = c->q[c->q_head];
    c->q_head = (c->q_head + 1) % c->q_cap;
    c->q_len--;
    n_replies++;
    if (c->tok_len > max_reply_bytes) max_reply_bytes = c->tok_len;
    int is_error = c->tok_first == 'e';
    if (is_error) n_error_replies++;
    uint64_t lat = t > p.sched_ns ? t - p.sched_ns : 0;
    uint64_t since = prev_rx > p.sent_ns ? prev_rx : p.sent_ns;
    if (t > since) {
        double gap = (t - since) / 1e6;
        if (gap > max_gap_ms) max_gap_ms = gap;
    }
    switch (p.kind) {
    case K_ID:
        if (is_register) {
            /* One whole cycle, from the connect: then close and go again at once. */
            add_sample(&lat_register, t - c->connect_start_ns);
            if (!is_error && c->tok_digits_only) n_registered++;
            else if (!is_error) n_bad_replies++;
            close_conn(c, 0);
            c->tok_len = 0;
            c->out_len = 0;
            if (sending) start_connect(c, t);
            break;
        }
        add_sample(&lat_register, lat);
        if (!is_error && c->tok_digits_only) {
            c->number = c->tok_value;
            n_registered++;
        } else {
            n_bad_replies++;
        }
        start_active(c, t);
        break;
    case K_EVEN:
    case K_ODD:
        add_sample(&lat_req, lat);
        if (all_up_ns && p.sched_ns >= all_up_ns) add_sample(&lat_steady, lat);
        if (!is_error && (!c->tok_digits_only || (c->tok_value & 1) != (p.kind == K_ODD))) n_bad_replies++;
        if (is_flood) c->refill++;
        break;
    case K_ARRAY:
        add_sample(&lat_array, lat);
        if (all_up_ns && p.sched_ns >= all_up_ns) add_sample(&lat_steady, lat);
        if (!is_error && c->tok_first != '[') n_bad_replies++;
        if (is_flood) c->refill++;
        if (!strcmp(mode, "fill")) {
            fill_inflight--;
            fill_top_up(c);
        }
        break;
    }
}

/* ---------------------------------------------------------------- reading */
static long long n_active = 0, n_gone_before_active = 0;
static uint64_t window_start_ns = 0, window_end_ns = 0;
static long long win_sent0, win_replies0, win_sent1, win_replies1;

static void note_all_up(uint64_t t) {
    if (all_up_ns) return;
    all_up_ns = t;
    window_start_ns = t;
    win_sent0 = n_sent_tokens;
    win_replies0 = n_replies;
    end_send_ns = t + (uint64_t)(duration * 1e9);
}

static void check_all_up(uint64_t t) {
    if (!all_up_ns && n_active + n_gone_before_active >= n_clients) note_all_up(t);
}

static void on_readable(conn_t *c) {
    static char buf[256 * 1024];
    for (;;) {
        ssize_t r = read(c->fd, buf, sizeof buf);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            int was_active = c->state == ST_ACTIVE;
            close_conn(c, 1);
            if (!was_active) n_gone_before_active++;
            return;
        }
        if (r < 0) break;
        uint64_t t = now_ns();
        uint64_t prev_rx = last_rx_ns;
        last_rx_ns = t;
        n_bytes_in += r;
        for (ssize_t i = 0; i < r; i++) {
            char ch = buf[i];
            if (ch == ' ') {
                if (c->tok_len) {
                    int was_registering = c->state == ST_REGISTERING;
                    if (c->tok_neg) c->tok_value = -c->tok_value;
                    on_reply(c, t, prev_rx);
                    if (was_registering && c->state == ST_ACTIVE) {
                        n_active++;
                        check_all_up(t);
                    }
                    if (c->state == ST_CLOSED || c->state == ST_CONNECTING) return;
                }
                c->tok_len = 0;
                continue;
            }
            if (c->tok_len == 0) {
                c->tok_first = ch;
                c->tok_digits_only = 1;
                c->tok_value = 0;
                c->tok_neg = ch == '-';
                c->tok_len = 1;
                if (ch == '-') continue;
            } else {
                c->tok_len++;
            }
            if (ch >= '0' && ch <= '9') {
                if (c->tok_value < 100000000000000000ll) c->tok_value = c->tok_value * 10 + (ch - '0');
            } else {
                c->tok_digits_only = 0;
            }
        }
        if (r < (ssize_t)sizeof buf) break;
    }
    if (c->refill && is_flood) {
        int k = c->refill;
        c->refill = 0;
        flood_top_up(c, k);
    }
}

/* ---------------------------------------------------------------- connecting */
static void start_connect(conn_t *c, uint64_t t) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        n_connect_fail++;
        n_gone_before_active++;
        c->state = ST_CLOSED;
        heap_remove(c->idx);
        check_all_up(t);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int to = n_ports ? ports[c->idx % n_ports] : port;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(to)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* 127.0.0.1, always */
    c->fd = fd;
    c->connect_start_ns = t;
    int r = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = c->idx};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    if (r < 0 && errno != EINPROGRESS) {
        n_connect_fail++;
        n_gone_before_active++;
        close_conn(c, 0);
        check_all_up(t);
        return;
    }
    c->state = ST_CONNECTING;
    connecting_now++;
    c->due_ns = t + (uint64_t)(connect_timeout * 1e9);
    heap_update(c->idx);
}

static void on_connected(conn_t *c, uint64_t t) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        n_connect_fail++;
        n_gone_before_active++;
        close_conn(c, 0);
        check_all_up(t);
        return;
    }
    connecting_now--;
    n_connected++;
    add_sample(&lat_connect, t - c->connect_start_ns);
    heap_remove(c->idx);
    want_out(c, 0);
    if (c->registers) {
        char buf[32];
        int id = is_register ? (int)(next_id++ % id_space) : c->idx % id_space;
        int n = sprintf(buf, "%d ", id);
        c->state = ST_REGISTERING;
        q_push(c, t, t, K_ID);
        n_sent_tokens++;
        send_bytes(c, buf, n);
    } else {
        start_active(c, t);
        if (c->state == ST_ACTIVE) {
            n_active++;
            check_all_up(t);
        }
    }
}

/* Start the connects that waited for a free slot. */
static void drain_waiting(uint64_t t) {
    while (wait_head < wait_tail && connecting_now < max_connecting && sending) {
        conn_t *c = &conns[waiting[wait_head++ % n_clients]];
        if (c->state == ST_INIT) start_connect(c, t);
    }
}

/* A timer of `c` is due. */
static void on_due(conn_t *c, uint64_t t) {
    switch (c->state) {
    case ST_INIT:
        if (connecting_now >= max_connecting) {
            /* Too many connects in progress: wait in line (the ramp respects the backlog). */
            heap_remove(c->idx);
            waiting[wait_tail++ % n_clients] = c->idx;
            return;
        }
        start_connect(c, t);
        return;
    case ST_CONNECTING:
        n_connect_fail++;
        n_gone_before_active++;
        close_conn(c, 0);
        check_all_up(t);
        return;
    case ST_ACTIVE: {
        uint64_t due = c->due_ns;
        if (c->next_report_ns && c->next_report_ns <= due) {
            send_report(c, c->next_report_ns);
            if (c->state == ST_CLOSED) return;
            c->next_report_ns += (uint64_t)(report_ms * 1e6);
        }
        if (c->next_request_ns && c->next_request_ns <= due) {
            int kind = rnd01() < array_share ? K_ARRAY : ((rnd() & 1) ? K_ODD : K_EVEN);
            send_request(c, kind, c->next_request_ns);
            if (c->state == ST_CLOSED) return;
            c->next_request_ns += (uint64_t)((req_min_ms + rnd01() * (req_max_ms - req_min_ms)) * 1e6);
        }
        schedule_next(c);
        return;
    }
    default:
        heap_remove(c->idx);
    }
}

/* ---------------------------------------------------------------- output */
static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void print_stats(const char *name, samples_t *s, int last) {
    printf("    \"%s\": {\"count\": %zu", name, s->n);
    if (s->n) {
        qsort(s->v, s->n, sizeof(uint32_t), cmp_u32);
        double sum = 0;
        for (size_t i = 0; i < s->n; i++) sum += s->v[i];
        const double ps[] = {0.5, 0.9, 0.99, 0.999};
        const char *pn[] = {"p50", "p90", "p99", "p99_9"};
        for (int k = 0; k < 4; k++) {
            size_t i = (size_t)ceil(ps[k] * s->n);
            if (i > 0) i--;
            printf(", \"%s_ms\": %.3f", pn[k], s->v[i] / 1000.0);
        }
        printf(", \"max_ms\": %.3f, \"mean_ms\": %.3f", s->v[s->n - 1] / 1000.0, sum / s->n / 1000.0);
    }
    printf("}%s\n", last ? "" : ",");
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen [--mode schedule|flood|fill|register] [--port P] [--ports P1,P2,...] [--clients N]\n"
            "  [--duration S]\n"
            "  [--ramp CONN_PER_S] [--max-connecting K] [--array-share F] [--array-min N] [--array-max N]\n"
            "  [--id-space N] [--window W] [--count N] [--report-ms MS] [--req-min-ms MS] [--req-max-ms MS]\n"
            "  [--seed N] [--grace S] [--connect-timeout S] [--fill-values N] [--array-value-max N]\n");
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--mode")) mode = v;
        else if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "--ports")) {
            for (const char *p = v; *p;) {
                char *end;
                long x = strtol(p, &end, 10);
                if (end == p || x <= 0 || x > 65535 || n_ports == (int)(sizeof ports / sizeof ports[0])) usage();
                ports[n_ports++] = (int)x;
                if (*end && *end != ',') usage();
                p = *end ? end + 1 : end;
            }
        }
        else if (!strcmp(a, "--clients")) n_clients = atoi(v);
        else if (!strcmp(a, "--duration")) duration = atof(v);
        else if (!strcmp(a, "--ramp")) ramp = atof(v);
        else if (!strcmp(a, "--max-connecting")) max_connecting = atoi(v);
        else if (!strcmp(a, "--array-share")) array_share = atof(v);
        else if (!strcmp(a, "--array-min")) array_min = atoi(v);
        else if (!strcmp(a, "--array-max")) array_max = atoi(v);
        else if (!strcmp(a, "--id-space")) id_space = atoi(v);
        else if (!strcmp(a, "--window")) window = atoi(v);
        else if (!strcmp(a, "--count")) count_limit = atoll(v);
        else if (!strcmp(a, "--report-ms")) report_ms = atof(v);
        else if (!strcmp(a, "--req-min-ms")) req_min_ms = atof(v);
        else if (!strcmp(a, "--req-max-ms")) req_max_ms = atof(v);
        else if (!strcmp(a, "--seed")) seed = (unsigned)atoi(v);
        else if (!strcmp(a, "--grace")) grace = atof(v);
        else if (!strcmp(a, "--connect-timeout")) connect_timeout = atof(v);
        else if (!strcmp(a, "--fill-values")) fill_values = atoll(v);
        else if (!strcmp(a, "--array-value-max")) array_value_max = atoll(v);
        else usage();
    }
    if (strcmp(mode, "schedule") && strcmp(mode, "flood") && strcmp(mode, "fill") && strcmp(mode, "register"))
        usage();
    if (!strcmp(mode, "fill")) n_clients = 1;
    is_flood = !strcmp(mode, "flood");
    is_register = !strcmp(mode, "register");
    if (n_clients < 1 || array_min < 1 || array_max < array_min || array_max > 1000 || window < 1 ||
        ramp <= 0 || duration <= 0 || array_value_max < 1)
        usage();
    if (id_space < 1) id_space = 1;

    /* The open-file limit: raise the soft limit to the hard one, and never open more. */
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
    int requested = n_clients, capped = 0;
    if ((rlim_t)n_clients + 16 > rl.rlim_cur) {
        n_clients = (int)rl.rlim_cur - 16;
        capped = 1;
    }
    signal(SIGPIPE, SIG_IGN);
    rnd_state = 0x9E3779B97F4A7C15ull ^ ((uint64_t)seed * 0x2545F4914F6CDD1Dull);
    if (!rnd_state) rnd_state = 1;

    double ramp_s = n_clients / ramp;
    /* Hard bound on the whole run, whatever the server does. */
    alarm((unsigned)(ramp_s + 2 * connect_timeout + duration + grace + 30));

    conns = calloc(n_clients, sizeof(conn_t));
    heap = calloc(n_clients, sizeof(int));
    waiting = calloc(n_clients, sizeof(int));
    epfd = epoll_create1(EPOLL_CLOEXEC);
    t0 = now_ns();
    for (int i = 0; i < n_clients; i++) {
        conn_t *c = &conns[i];
        c->idx = i;
        c->fd = -1;
        c->heap_pos = -1;
        c->state = ST_INIT;
        c->registers = !strcmp(mode, "fill") ? 0 : (i < id_space);
        c->due_ns = t0 + (uint64_t)(i / ramp * 1e9);
        heap_push(i);
    }
    uint64_t up_deadline = t0 + (uint64_t)((ramp_s + connect_timeout + 5) * 1e9);
    if (is_register) note_all_up(t0); /* no ramp to wait for: the window is the whole run */
    struct epoll_event evs[1024];
    uint64_t stop_ns = 0;
    for (;;) {
        uint64_t t = now_ns();
        if (!all_up_ns && t >= up_deadline) note_all_up(t);
        if (!strcmp(mode, "fill") && fill_sent_values >= fill_values && conns[0].q_len == 0 && !stop_ns) {
            if (!all_up_ns) note_all_up(t);
            end_send_ns = t;
        }
        if (!strcmp(mode, "flood") && count_limit && flood_sent >= count_limit && all_up_ns && !stop_ns) {
            long long out = 0;
            for (int i = 0; i < n_clients; i++) out += conns[i].q_len;
            if (!out) end_send_ns = t;
        }
        if (sending && all_up_ns && t >= end_send_ns) {
            sending = 0;
            window_end_ns = t;
            win_sent1 = n_sent_tokens;
            win_replies1 = n_replies;
            stop_ns = t + (uint64_t)(grace * 1e9);
            for (; wait_head < wait_tail; wait_head++) {
                conn_t *c = &conns[waiting[wait_head % n_clients]];
                if (c->state == ST_INIT) {
                    n_connect_fail++;
                    c->state = ST_CLOSED;
                }
            }
            while (heap_n) {
                conn_t *c = &conns[heap[0]];
                heap_remove(c->idx);
                if (c->state == ST_INIT || c->state == ST_CONNECTING) {
                    if (c->state == ST_CONNECTING && !is_register) n_connect_fail++;
                    close_conn(c, 0);
                }
            }
        }
        if (!sending) {
            long long out = 0;
            for (int i = 0; i < n_clients; i++) out += conns[i].q_len;
            if (!out || t >= stop_ns) break;
        }
        while (heap_n && conns[heap[0]].due_ns <= t) on_due(&conns[heap[0]], t);
        drain_waiting(t);
        uint64_t next = sending ? t + 100000000ull : stop_ns;
        if (heap_n && conns[heap[0]].due_ns < next) next = conns[heap[0]].due_ns;
        if (!all_up_ns && up_deadline < next) next = up_deadline;
        if (sending && all_up_ns && end_send_ns < next) next = end_send_ns;
        t = now_ns();
        uint64_t wait = next > t ? next - t : 0;
        if (!sending && wait > 10000000ull) wait = 10000000ull;
        struct timespec ts = {.tv_sec = wait / 1000000000ull, .tv_nsec = wait % 1000000000ull};
        int n = epoll_pwait2(epfd, evs, 1024, &ts, NULL);
        if (n < 0 && errno != EINTR) {
            perror("epoll_pwait2");
            return 1;
        }
        for (int k = 0; k < n; k++) {
            conn_t *c = &conns[evs[k].data.u32];
            if (c->state == ST_CLOSED) continue;
            uint64_t tn = now_ns();
            if (c->state == ST_CONNECTING) {
                if (evs[k].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(c, tn);
                continue;
            }
            if (evs[k].events & EPOLLOUT) flush_out(c);
            if (c->state != ST_CLOSED && (evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) on_readable(c);
        }
    }
    uint64_t t_end = now_ns();
    long long unanswered = 0, open_at_end = 0;
    for (int i = 0; i < n_clients; i++) {
        unanswered += conns[i].q_len;
        if (conns[i].state != ST_CLOSED) open_at_end++;
    }
    for (int i = 0; i < n_clients; i++) close_conn(&conns[i], 0);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu_s = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    double win = window_end_ns > window_start_ns ? (window_end_ns - window_start_ns) / 1e9 : 0;

    printf("{\n  \"mode\": \"%s\", \"port\": %d, \"clients\": %d, \"clients_requested\": %d, "
           "\"clients_capped_by_nofile\": %s, \"nofile_limit\": %llu,\n",
           mode, port, n_clients, requested, capped ? "true" : "false", (unsigned long long)rl.rlim_cur);
    printf("  \"duration_s\": %.3f, \"ramp_per_s\": %.1f, \"array_share\": %.4f, \"array_len\": [%d, %d], "
           "\"window\": %d, \"id_space\": %d, \"count_limit\": %lld,\n",
           duration, ramp, array_share, array_min, array_max, window, id_space, count_limit);
    printf("  \"ramp_s\": %.3f, \"window_s\": %.3f, \"total_s\": %.3f,\n",
           all_up_ns ? (all_up_ns - t0) / 1e9 : -1.0, win, (t_end - t0) / 1e9);
    printf("  \"connected\": %lld, \"connect_failures\": %lld, \"registered\": %lld, \"active\": %lld, "
           "\"drops\": %lld, \"open_at_end\": %lld,\n",
           n_connected, n_connect_fail, n_registered, n_active, n_drops, open_at_end);
    printf("  \"sent_tokens\": %lld, \"reports\": %lld, \"requests\": %lld, \"arrays\": %lld, \"replies\": %lld, "
           "\"error_replies\": %lld, \"bad_replies\": %lld, \"unanswered\": %lld,\n",
           n_sent_tokens, n_reports, n_requests, n_arrays, n_replies, n_error_replies, n_bad_replies, unanswered);
    printf("  \"fill_values\": %lld, \"bytes_in\": %lld, \"bytes_out\": %lld, \"max_reply_bytes\": %lld,\n",
           fill_sent_values, n_bytes_in, n_bytes_out, max_reply_bytes);
    printf("  \"sent_per_s\": %.1f, \"replies_per_s\": %.1f, \"messages_per_s\": %.1f,\n",
           win > 0 ? (win_sent1 - win_sent0) / win : 0.0, win > 0 ? (win_replies1 - win_replies0) / win : 0.0,
           win > 0 ? ((win_sent1 - win_sent0) + (win_replies1 - win_replies0)) / win : 0.0);
    printf("  \"max_reply_gap_ms\": %.3f, \"loadgen_cpu_s\": %.3f, \"loadgen_cpu_share\": %.4f,\n", max_gap_ms, cpu_s,
           cpu_s / ((t_end - t0) / 1e9));
    printf("  \"latency\": {\n");
    print_stats("requests", &lat_req, 0);
    print_stats("arrays", &lat_array, 0);
    print_stats("steady", &lat_steady, 0);
    print_stats("register", &lat_register, 0);
    print_stats("connect", &lat_connect, 0);
    print_stats("send_lag", &send_lag, 0);
    print_stats("send_lag_steady", &send_lag_steady, 1);
    printf("  }\n}\n");
    return 0;
}
