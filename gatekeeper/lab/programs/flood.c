/* A spoofed-source flood for `gatekeeper bench --flood`: raw sockets, sendmmsg, paced.
 *
 *   flood --dst4 A --dst6 A [--seed N] [--rate PPS] [--count N] [--seconds S]
 *         [--port P --proto tcp|udp] [--batch N]
 *
 * Every packet is addressed to --dst4 or --dst6 (the lab's gateway); its source is a
 * random address in 198.18.0.0/15 (RFC 2544) or in 2001:db8:1:ffff::/64, half each (a
 * batch is one family, the families alternate), from a generator seeded with --seed. The
 * packet is a TCP SYN or an empty UDP datagram (half each) from a random source port to a
 * random destination port, or, with --port, to that port and --proto only.
 * Paced to --rate packets a second (0: as fast as it goes); it stops after --count packets,
 * after --seconds, or at SIGTERM/SIGINT, whichever comes first, and prints one JSON line:
 * what it sent, what the local stack refused, the seconds it took and its own CPU time.
 * Compiled at run time by the bench (gcc -O2); run inside the lab's namespaces only.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 256
#define SLOT 64 /* bytes a packet: 40 (IPv6) + 20 (TCP) at most */

static volatile sig_atomic_t stopping = 0;
static void on_signal(int sig) { (void)sig; stopping = 1; }

static uint64_t rng_state;
static uint64_t next_random(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint32_t sum16(const uint8_t *p, size_t n, uint32_t acc) {
    for (size_t i = 0; i + 1 < n; i += 2) acc += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (n & 1) acc += (uint32_t)(p[n - 1] << 8);
    return acc;
}

static uint16_t fold(uint32_t acc) {
    while (acc >> 16) acc = (acc & 0xFFFF) + (acc >> 16);
    return (uint16_t)~acc;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

/* The L4 header at l4 (TCP SYN or UDP), checksummed over the pseudo-header. */
static size_t fill_l4(uint8_t *l4, int proto, const uint8_t *src, const uint8_t *dst,
                      size_t alen, uint16_t sport, uint16_t dport) {
    size_t len = proto == IPPROTO_TCP ? 20 : 8;
    memset(l4, 0, len);
    put16(l4, sport);
    put16(l4 + 2, dport);
    if (proto == IPPROTO_TCP) {
        l4[4] = 0x10;      /* sequence number 0x10000000 */
        l4[12] = 0x50;     /* data offset: 5 words */
        l4[13] = 0x02;     /* SYN */
        put16(l4 + 14, 64240);
    } else {
        put16(l4 + 4, (uint16_t)len);
    }
    uint32_t acc = sum16(src, alen, 0);
    acc = sum16(dst, alen, acc);
    acc += (uint32_t)proto + (uint32_t)len;
    uint16_t csum = fold(sum16(l4, len, acc));
    if (proto == IPPROTO_UDP && csum == 0) csum = 0xFFFF;
    put16(l4 + (proto == IPPROTO_TCP ? 16 : 6), csum);
    return len;
}

static size_t fill(uint8_t *pkt, int v6, const uint8_t *dst, int fixed_proto, int fixed_port) {
    uint64_t r = next_random();
    int proto = fixed_proto ? fixed_proto : ((r & 1) ? IPPROTO_TCP : IPPROTO_UDP);
    uint16_t sport = (uint16_t)(1024 + ((r >> 1) % 64512));
    uint16_t dport = fixed_port ? (uint16_t)fixed_port : (uint16_t)(1 + ((r >> 17) % 65535));
    uint64_t host = next_random();
    if (!v6) {
        uint8_t src[4] = {198, (uint8_t)(18 + (host & 1)), (uint8_t)(host >> 1), (uint8_t)(host >> 9)};
        size_t l4 = fill_l4(pkt + 20, proto, src, dst, 4, sport, dport);
        memset(pkt, 0, 20);
        pkt[0] = 0x45;
        put16(pkt + 2, (uint16_t)(20 + l4));
        pkt[6] = 0x40; /* DF */
        pkt[8] = 64;
        pkt[9] = (uint8_t)proto;
        memcpy(pkt + 12, src, 4);
        memcpy(pkt + 16, dst, 4);
        put16(pkt + 10, fold(sum16(pkt, 20, 0)));
        return 20 + l4;
    }
    uint8_t src[16] = {0x20, 0x01, 0x0d, 0xb8, 0x00, 0x01, 0xff, 0xff};
    for (int i = 0; i < 8; i++) src[8 + i] = (uint8_t)(host >> (8 * i));
    size_t l4 = fill_l4(pkt + 40, proto, src, dst, 16, sport, dport);
    memset(pkt, 0, 8);
    pkt[0] = 0x60;
    put16(pkt + 4, (uint16_t)l4);
    pkt[6] = (uint8_t)proto;
    pkt[7] = 64;
    memcpy(pkt + 8, src, 16);
    memcpy(pkt + 24, dst, 16);
    return 40 + l4;
}

static void usage(void) {
    fprintf(stderr, "usage: flood --dst4 A --dst6 A [--seed N] [--rate PPS] [--count N] "
                    "[--seconds S] [--port P --proto tcp|udp] [--batch N]\n");
    exit(2);
}

int main(int argc, char **argv) {
    struct sockaddr_in to4 = {.sin_family = AF_INET};
    struct sockaddr_in6 to6 = {.sin6_family = AF_INET6};
    int have4 = 0, have6 = 0, port = 0, proto = 0, batch = 64;
    double rate = 0, seconds = 10;
    unsigned long long count = 1000000, seed = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--dst4")) have4 = inet_pton(AF_INET, v, &to4.sin_addr) == 1;
        else if (!strcmp(k, "--dst6")) have6 = inet_pton(AF_INET6, v, &to6.sin6_addr) == 1;
        else if (!strcmp(k, "--seed")) seed = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--rate")) rate = strtod(v, NULL);
        else if (!strcmp(k, "--count")) count = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--seconds")) seconds = strtod(v, NULL);
        else if (!strcmp(k, "--port")) port = atoi(v);
        else if (!strcmp(k, "--batch")) batch = atoi(v);
        else if (!strcmp(k, "--proto")) proto = !strcmp(v, "tcp") ? IPPROTO_TCP
                                              : !strcmp(v, "udp") ? IPPROTO_UDP : -1;
        else usage();
    }
    if (argc % 2 == 0 || !have4 || !have6 || proto < 0 || (port != 0) != (proto != 0) ||
        port < 0 || port > 65535 || batch < 1 || batch > MAX_BATCH || seconds <= 0 || seconds > 600 ||
        rate < 0 || count > 100000000ULL)
        usage();
    rng_state = seed;
    int s4 = socket(AF_INET, SOCK_RAW, IPPROTO_RAW), s6 = socket(AF_INET6, SOCK_RAW, IPPROTO_RAW);
    if (s4 < 0 || s6 < 0) { perror("socket"); return 1; }
    int sndbuf = 1 << 22;
    setsockopt(s4, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    setsockopt(s6, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);

    static uint8_t bufs[MAX_BATCH][SLOT];
    static struct iovec iov[MAX_BATCH];
    static struct mmsghdr msgs[MAX_BATCH];
    unsigned long long sent = 0, refused = 0, calls = 0;
    int v6 = 0;
    double start = now(), deadline = start + seconds;
    while (!stopping && sent < count) {
        double t = now();
        if (t >= deadline) break;
        if (rate > 0) {
            double due = start + (double)sent / rate;
            if (due > deadline) break;
            if (due > t) {
                double wait = due - t;
                struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
                nanosleep(&ts, NULL);
                continue;
            }
        }
        int n = batch;
        if ((unsigned long long)n > count - sent) n = (int)(count - sent);
        const uint8_t *dst = v6 ? (const uint8_t *)&to6.sin6_addr : (const uint8_t *)&to4.sin_addr;
        for (int i = 0; i < n; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = fill(bufs[i], v6, dst, proto, port);
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = v6 ? (void *)&to6 : (void *)&to4;
            msgs[i].msg_hdr.msg_namelen = v6 ? sizeof to6 : sizeof to4;
        }
        int done = sendmmsg(v6 ? s6 : s4, msgs, (unsigned)n, 0);
        calls++;
        if (done < n) {
            if (done < 0 && errno != ENOBUFS && errno != EAGAIN && errno != EINTR && errno != EPERM) {
                perror("sendmmsg");
                return 1;
            }
            refused++; /* the message it stopped at; the rest are made again */
        }
        if (done > 0) sent += (unsigned long long)done;
        v6 = !v6;
    }
    double elapsed = now() - start;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"sent\": %llu, \"refused\": %llu, \"seconds\": %.6f, \"calls\": %llu, "
           "\"user\": %.6f, \"system\": %.6f}\n", sent, refused, elapsed, calls,
           (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6,
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6);
    fflush(stdout);
    return 0;
}
