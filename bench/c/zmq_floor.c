/* zmq_floor.c: the floor of zmq_bench, bare libzmq in C with our frames and no JSON work.
 *
 *   zmq_floor echo                     a ROUTER echo: prints its port, answers each
 *                                      [id, rid, key, payload] with [id, rid, "", "\"world\""]
 *   zmq_floor client PORT SEQ ROUNDS   a DEALER: SEQ sequential round trips, then ROUNDS rounds of
 *                                      100 in flight; prints the figures as one JSON line
 *
 * Build: cc -O2 zmq_floor.c -lzmq (Debian: libzmq3-dev).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static const char RID[] = "0123456789abcdef0123456789abcdef0123";

static void send_request(void *s) {
    zmq_send(s, RID, sizeof RID - 1, ZMQ_SNDMORE);
    zmq_send(s, "bench", 5, ZMQ_SNDMORE);
    zmq_send(s, "\"hello\"", 7, 0);
}

static void recv_message(void *s) {
    zmq_msg_t m;
    int more = 1;
    while (more) {
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s, 0) < 0) {
            perror("zmq_msg_recv");
            exit(1);
        }
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
}

int main(int argc, char **argv) {
    void *ctx = zmq_ctx_new();
    if (argc > 1 && strcmp(argv[1], "echo") == 0) {
        void *s = zmq_socket(ctx, ZMQ_ROUTER);
        char ep[256];
        size_t len = sizeof ep;
        if (zmq_bind(s, "tcp://127.0.0.1:*") != 0) return 1;
        zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, ep, &len);
        printf("{\"event\":\"started\",\"port\":%s}\n", strrchr(ep, ':') + 1);
        fflush(stdout);
        for (;;) {
            zmq_msg_t id, rid, rest;
            zmq_msg_init(&id);
            zmq_msg_init(&rid);
            if (zmq_msg_recv(&id, s, 0) < 0 || zmq_msg_recv(&rid, s, 0) < 0) return 1;
            int more = zmq_msg_more(&rid);
            while (more) {
                zmq_msg_init(&rest);
                zmq_msg_recv(&rest, s, 0);
                more = zmq_msg_more(&rest);
                zmq_msg_close(&rest);
            }
            zmq_msg_send(&id, s, ZMQ_SNDMORE);
            zmq_msg_send(&rid, s, ZMQ_SNDMORE);
            zmq_send(s, "", 0, ZMQ_SNDMORE);
            zmq_send(s, "\"world\"", 7, 0);
        }
    }
    if (argc > 4 && strcmp(argv[1], "client") == 0) {
        void *s = zmq_socket(ctx, ZMQ_DEALER);
        char ep[64];
        int seq = atoi(argv[3]), rounds = atoi(argv[4]), i, j;
        double *lat = calloc((size_t)seq + 1, sizeof *lat), t0, seq_us, conc_us;
        snprintf(ep, sizeof ep, "tcp://127.0.0.1:%s", argv[2]);
        if (zmq_connect(s, ep) != 0) return 1;
        for (i = 0; i < 300; i++) {
            send_request(s);
            recv_message(s);
        }
        t0 = now_us();
        for (i = 0; i < seq; i++) {
            double a = now_us();
            send_request(s);
            recv_message(s);
            lat[i] = now_us() - a;
        }
        seq_us = now_us() - t0;
        t0 = now_us();
        for (i = 0; i < rounds; i++) {
            for (j = 0; j < 100; j++) send_request(s);
            for (j = 0; j < 100; j++) recv_message(s);
        }
        conc_us = now_us() - t0;
        qsort(lat, (size_t)seq, sizeof *lat, cmp);
        printf("{\"seq_rps\":%.1f,\"seq_p50_us\":%.1f,\"seq_p99_us\":%.1f,\"conc_rps\":%.1f}\n", seq / (seq_us / 1e6),
               lat[seq / 2], lat[(int)(seq * 0.99)], rounds * 100 / (conc_us / 1e6));
        free(lat);
        zmq_close(s);
        zmq_ctx_term(ctx);
        return 0;
    }
    fprintf(stderr, "usage: zmq_floor echo | zmq_floor client PORT SEQ ROUNDS\n");
    return 2;
}
