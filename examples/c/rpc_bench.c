/* rpc_bench.c: requests per second through the C API. Runs an rpc_test server and a client in
 * this process (like the pure-Rust workload of bench/src/bin/ffi_bench.rs), keeping CONCURRENCY
 * requests in flight (each completion callback sends the next request) until N have completed.
 *
 *   rpc_bench GRAPE_URL http|ws N CONCURRENCY [SERVICE]
 *
 * Prints one line: {"requests":N,"secs":S,"rps":R}.
 */
#include "common.h"

#include <stdatomic.h>

typedef struct {
    grenache_client *client;
    const char *service;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    atomic_long to_send;
    long total;
    atomic_long done;
    atomic_long failed;
} bench_state;

static void on_request(void *userdata, const grenache_request *req, grenache_reply *reply) {
    (void)userdata;
    (void)req;
    grenache_reply_send(reply, "\"world\"", 7);
}

static void send_one(bench_state *st);

/* A completion: count it and keep the pipeline full (calls from inside callbacks are allowed). */
static void on_reply(void *userdata, grenache_result code, const grenache_error *err, const char *json, size_t len) {
    bench_state *st = userdata;
    (void)err;
    (void)json;
    (void)len;
    if (code != GRENACHE_RESULT_OK) atomic_fetch_add(&st->failed, 1);
    send_one(st); /* keep the pipeline full first */
    if (atomic_fetch_add(&st->done, 1) + 1 >= st->total) {
        pthread_mutex_lock(&st->lock); /* wake main only at the end */
        pthread_cond_broadcast(&st->cond);
        pthread_mutex_unlock(&st->lock);
    }
}

static void send_one(bench_state *st) {
    if (atomic_fetch_sub(&st->to_send, 1) <= 0) return;
    if (grenache_client_request(st->client, st->service, "\"hello\"", 7, 10000, on_reply, st) != GRENACHE_RESULT_OK) {
        atomic_fetch_add(&st->failed, 1);
        if (atomic_fetch_add(&st->done, 1) + 1 >= st->total) {
            pthread_mutex_lock(&st->lock);
            pthread_cond_broadcast(&st->cond);
            pthread_mutex_unlock(&st->lock);
        }
    }
}

static double now_secs(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    const char *grape = argc > 1 ? argv[1] : "http://127.0.0.1:30001";
    int ws = argc > 2 && strcmp(argv[2], "ws") == 0;
    long n = argc > 3 ? atol(argv[3]) : 10000;
    long conc = argc > 4 ? atol(argv[4]) : 100;
    grenache_runtime *rt = NULL;
    grenache_link *link = NULL;
    grenache_server *server = NULL;
    bench_state st;
    completion c;
    double t0, secs;
    long i;
    int tries;

    memset(&st, 0, sizeof st);
    atomic_init(&st.to_send, 0);
    atomic_init(&st.done, 0);
    atomic_init(&st.failed, 0);
    st.service = argc > 5 ? argv[5] : "rpc_bench";
    pthread_mutex_init(&st.lock, NULL);
    pthread_cond_init(&st.cond, NULL);
    completion_init(&c);
    DIE_IF(grenache_runtime_new(2, &rt), "grenache_runtime_new");
    DIE_IF(grenache_link_new(rt, grape, &link), "grenache_link_new");
    if (ws) {
        DIE_IF(grenache_server_new_ws(link, 0, NULL, on_request, NULL, NULL, &server), "server");
        DIE_IF(grenache_client_new_ws(link, NULL, &st.client), "client");
    } else {
        DIE_IF(grenache_server_new_http(link, 0, NULL, on_request, NULL, NULL, &server), "server");
        DIE_IF(grenache_client_new_http(link, NULL, &st.client), "client");
    }
    DIE_IF(grenache_server_start_announcing(server, st.service, 1000), "announce");

    /* Warm up: wait for the announce, then open the connections. */
    for (tries = 0; tries < 300; tries++) {
        completion_reset(&c);
        DIE_IF(grenache_client_request(st.client, st.service, "\"hello\"", 7, 10000, on_json, &c), "request");
        if (completion_wait(&c, 60000) != 0) return 1;
        if (c.code == GRENACHE_RESULT_OK) break;
        sleep_ms(100);
    }
    if (c.code != GRENACHE_RESULT_OK) {
        fprintf(stderr, "warm-up failed: %s\n", grenache_result_name(c.code));
        return 1;
    }

    st.total = n;
    atomic_store(&st.to_send, n);
    t0 = now_secs();
    for (i = 0; i < conc && i < n; i++) send_one(&st);
    pthread_mutex_lock(&st.lock);
    while (atomic_load(&st.done) < n) pthread_cond_wait(&st.cond, &st.lock);
    pthread_mutex_unlock(&st.lock);
    secs = now_secs() - t0;
    printf("{\"requests\":%ld,\"failed\":%ld,\"secs\":%.4f,\"rps\":%.1f}\n", n, atomic_load(&st.failed), secs,
           (double)n / secs);

    grenache_client_free(st.client);
    grenache_server_free(server);
    grenache_link_free(link);
    grenache_runtime_free(rt);
    completion_destroy(&c);
    return atomic_load(&st.failed) ? 1 : 0;
}
