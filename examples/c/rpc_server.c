/* rpc_server.c: the reference README's rpc_test worker in C. It announces the service "rpc_test"
 * and answers "hello" with "world" (anything else with the error "ERR_UNKNOWN_REQUEST"). Every
 * second request is answered later from a thread of its own, to show that a grenache_reply may
 * be answered from any thread.
 *
 *   rpc_server GRAPE_URL [MAX_REQUESTS [http|ws]]
 *
 * Prints "listening PORT" once announced, exits 0 after MAX_REQUESTS answers (default: run for
 * 10 minutes), freeing everything.
 */
#include "common.h"

typedef struct {
    pthread_mutex_t lock;
    long answered;
    int freed;
} server_state;

typedef struct {
    grenache_reply *reply;
    int ok;
    server_state *state;
} later_job;

static void count_answer(server_state *st) {
    pthread_mutex_lock(&st->lock);
    st->answered++;
    pthread_mutex_unlock(&st->lock);
}

static void answer(grenache_reply *reply, int ok, server_state *st) {
    grenache_result rc;
    if (ok) {
        rc = grenache_reply_send(reply, "\"world\"", strlen("\"world\""));
    } else {
        rc = grenache_reply_error(reply, "ERR_UNKNOWN_REQUEST");
    }
    if (rc) fprintf(stderr, "reply failed: %s\n", grenache_result_name(rc));
    count_answer(st);
}

static void *answer_later(void *arg) {
    later_job *job = arg;
    sleep_ms(1);
    answer(job->reply, job->ok, job->state);
    free(job);
    return NULL;
}

/* The request handler: runs on a library worker thread. */
static void on_request(void *userdata, const grenache_request *req, grenache_reply *reply) {
    static long seen = 0;
    server_state *st = userdata;
    size_t len = 0;
    const char *payload = grenache_request_payload(req, &len);
    int ok = len == strlen("\"hello\"") && memcmp(payload, "\"hello\"", len) == 0;
    long n;
    pthread_mutex_lock(&st->lock);
    n = seen++;
    pthread_mutex_unlock(&st->lock);
    if (n % 2 == 1) {
        pthread_t t;
        later_job *job = malloc(sizeof *job);
        if (job) {
            job->reply = reply;
            job->ok = ok;
            job->state = st;
            if (pthread_create(&t, NULL, answer_later, job) == 0) {
                pthread_detach(t);
                return;
            }
            free(job);
        }
    }
    answer(reply, ok, st);
}

/* Runs exactly once, after the server was freed and its last handler call returned. */
static void on_free(void *userdata) {
    server_state *st = userdata;
    pthread_mutex_lock(&st->lock);
    st->freed++;
    pthread_mutex_unlock(&st->lock);
}

int main(int argc, char **argv) {
    const char *grape = argc > 1 ? argv[1] : "http://127.0.0.1:30001";
    long max_requests = argc > 2 ? atol(argv[2]) : 0;
    int ws = argc > 3 && strcmp(argv[3], "ws") == 0;
    grenache_runtime *rt = NULL;
    grenache_link *link = NULL;
    grenache_server *server = NULL;
    server_state st;
    completion announced, stopped;
    long waited = 0, answered = 0;
    int freed;

    memset(&st, 0, sizeof st);
    pthread_mutex_init(&st.lock, NULL);
    completion_init(&announced);
    completion_init(&stopped);

    DIE_IF(grenache_runtime_new(2, &rt), "grenache_runtime_new");
    DIE_IF(grenache_link_new(rt, grape, &link), "grenache_link_new");
    if (ws) {
        DIE_IF(grenache_server_new_ws(link, 0, NULL, on_request, &st, on_free, &server), "grenache_server_new_ws");
    } else {
        DIE_IF(grenache_server_new_http(link, 0, NULL, on_request, &st, on_free, &server), "grenache_server_new_http");
    }

    /* Announce once and wait for it, then keep announcing every second like the reference. */
    DIE_IF(grenache_server_announce(server, "rpc_test", on_done, &announced), "grenache_server_announce");
    if (completion_wait(&announced, 60000) != 0 || announced.code != GRENACHE_RESULT_OK) {
        fprintf(stderr, "announce failed: %s %s\n", grenache_result_name(announced.code),
                announced.message ? announced.message : "");
        return 1;
    }
    DIE_IF(grenache_server_start_announcing(server, "rpc_test", 1000), "grenache_server_start_announcing");
    printf("listening %u\n", (unsigned)grenache_server_port(server));
    fflush(stdout);

    while (waited < 600000) {
        pthread_mutex_lock(&st.lock);
        answered = st.answered;
        pthread_mutex_unlock(&st.lock);
        if (max_requests > 0 && answered >= max_requests) break;
        sleep_ms(10);
        waited += 10;
    }
    printf("answered %ld\n", answered);
    /* Shut down gracefully: stop announcing and listening, let the requests already received
     * finish and their replies reach the wire, then close (cut off after 5 s). */
    DIE_IF(grenache_server_shutdown(server, 5000, on_bool, &stopped), "grenache_server_shutdown");
    if (completion_wait(&stopped, 10000) != 0 || stopped.code != GRENACHE_RESULT_OK || !stopped.value) {
        fprintf(stderr, "shutdown: %s %s\n", grenache_result_name(stopped.code), stopped.message ? stopped.message : "");
        return 1;
    }

    grenache_server_free(server);
    grenache_link_free(link);
    grenache_runtime_free(rt);
    pthread_mutex_lock(&st.lock);
    freed = st.freed;
    pthread_mutex_unlock(&st.lock);
    completion_destroy(&announced);
    completion_destroy(&stopped);
    pthread_mutex_destroy(&st.lock);
    if (freed != 1) {
        fprintf(stderr, "free_userdata ran %d times\n", freed);
        return 1;
    }
    return max_requests > 0 && answered < max_requests ? 1 : 0;
}
