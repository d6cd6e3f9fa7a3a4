/* local_network.c: everything in one process. Starts two Grapes that bootstrap from each other
 * (the reference README's `grape --dp 20001 --aph 30001 --bn 127.0.0.1:20002` pair, on free
 * ports), prints the first Grape's events, runs an rpc_test worker announced on the first (with
 * a server options object: a reply timeout) and a client that looks it up through the first too
 * (or, with the argument "cross", through the second; with "zmq", the worker and the client
 * speak ZeroMQ instead of HTTP), updates a mutable DHT item with
 * compare-and-swap (through a Link built with options); then stops everything.
 *
 *   local_network [cross|zmq]
 */
#include "common.h"

static void on_request(void *userdata, const grenache_request *req, grenache_reply *reply) {
    size_t len = 0;
    const char *payload = grenache_request_payload(req, &len);
    (void)userdata;
    if (len == 7 && memcmp(payload, "\"hello\"", 7) == 0) {
        grenache_reply_send(reply, "\"world\"", 7);
    } else {
        grenache_reply_error(reply, "ERR_UNKNOWN_REQUEST");
    }
}

/* The userdata of the Grape event callback: what it saw. */
typedef struct {
    pthread_mutex_t lock;
    int listening, ready, nodes, announces, lagged, freed;
} grape_events;

static const char *event_name(grenache_grape_event e) {
    switch (e) {
    case GRENACHE_GRAPE_EVENT_LISTENING: return "listening";
    case GRENACHE_GRAPE_EVENT_READY: return "ready";
    case GRENACHE_GRAPE_EVENT_ANNOUNCE: return "announce";
    case GRENACHE_GRAPE_EVENT_PEER: return "peer";
    case GRENACHE_GRAPE_EVENT_NODE: return "node";
    case GRENACHE_GRAPE_EVENT_WARNING: return "warning";
    case GRENACHE_GRAPE_EVENT_LAGGED: return "lagged";
    default: return "other";
    }
}

/* A grenache_grape_event_cb: runs on a worker thread, one event at a time, in order. */
static void on_grape_event(void *userdata, grenache_grape_event event, const char *detail, uint64_t dropped) {
    grape_events *ev = (grape_events *)userdata;
    pthread_mutex_lock(&ev->lock);
    switch (event) {
    case GRENACHE_GRAPE_EVENT_LISTENING: ev->listening++; break;
    case GRENACHE_GRAPE_EVENT_READY: ev->ready++; break;
    case GRENACHE_GRAPE_EVENT_NODE: ev->nodes++; break;
    case GRENACHE_GRAPE_EVENT_ANNOUNCE: ev->announces++; break;
    case GRENACHE_GRAPE_EVENT_LAGGED: ev->lagged += (int)dropped; break;
    default: break;
    }
    pthread_mutex_unlock(&ev->lock);
    printf("grape event: %s%s%s\n", event_name(event), detail ? " " : "", detail ? detail : "");
}

static void free_grape_events(void *userdata) {
    grape_events *ev = (grape_events *)userdata;
    pthread_mutex_lock(&ev->lock);
    ev->freed++;
    pthread_mutex_unlock(&ev->lock);
}

static int transient(grenache_result code) {
    return code == GRENACHE_RESULT_TIMEOUT || code == GRENACHE_RESULT_ALL_QUERIES_FAILED || code == GRENACHE_RESULT_NO_NODES;
}

/* Puts a mutable item with seq 1, then tries seq 2 with a wrong and with the right `cas`.
 * Returns 1 when the DHT behaved as expected, 0 when it did not, -1 when a DHT query was too slow
 * to tell (a 2 s KRPC timeout can expire under valgrind on a loaded machine). */
static int cas_update(grenache_link *link, completion *c) {
    grenache_keypair *key = NULL;
    grenache_result first, wrong, right;
    DIE_IF(grenache_keypair_generate(&key), "grenache_keypair_generate");
    completion_reset(c);
    DIE_IF(grenache_link_put_mutable(link, key, "\"v1\"", 4, 1, "cas", on_json, c), "grenache_link_put_mutable");
    first = completion_wait(c, 60000) == 0 ? c->code : GRENACHE_RESULT_TIMEOUT;
    completion_reset(c);
    DIE_IF(grenache_link_put_mutable_cas(link, key, "\"v2\"", 4, 2, "cas", 7, on_json, c), "grenache_link_put_mutable_cas");
    wrong = completion_wait(c, 60000) == 0 ? c->code : GRENACHE_RESULT_TIMEOUT;
    completion_reset(c);
    DIE_IF(grenache_link_put_mutable_cas(link, key, "\"v2\"", 4, 2, "cas", 1, on_json, c), "grenache_link_put_mutable_cas");
    right = completion_wait(c, 60000) == 0 ? c->code : GRENACHE_RESULT_TIMEOUT;
    printf("put seq 1: %s; seq 2 with cas 7: %s; seq 2 with cas 1: %s\n", grenache_result_name(first),
           grenache_result_name(wrong), grenache_result_name(right));
    grenache_keypair_free(key);
    if (first == GRENACHE_RESULT_OK && wrong == GRENACHE_RESULT_CAS_MISMATCH && right == GRENACHE_RESULT_OK) return 1;
    if (transient(first) || transient(wrong) || transient(right)) {
        printf("cas: inconclusive (a DHT query was too slow)\n");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    grenache_runtime *rt = NULL;
    grenache_grape *g1 = NULL, *g2 = NULL;
    grenache_link *l1 = NULL, *l2 = NULL;
    grenache_server *server = NULL;
    grenache_server_options *opts = NULL;
    grenache_grape_options *gopts = NULL;
    grenache_link_options *lopts = NULL;
    grenache_client *client = NULL;
    grape_events ev;
    completion c;
    char url[64], boot[64];
    int tries, ok = 0, cas_ok, events_ok;
    int cross = argc > 1 && strcmp(argv[1], "cross") == 0;
    int zmq = argc > 1 && strcmp(argv[1], "zmq") == 0;

    memset(&ev, 0, sizeof ev);
    pthread_mutex_init(&ev.lock, NULL);
    completion_init(&c);
    DIE_IF(grenache_runtime_new(2, &rt), "grenache_runtime_new");
    DIE_IF(grenache_grape_start(rt, 0, 0, NULL, &g1), "grenache_grape_start");
    DIE_IF(grenache_grape_on_event(g1, on_grape_event, &ev, free_grape_events), "grenache_grape_on_event");
    snprintf(boot, sizeof boot, "127.0.0.1:%u", (unsigned)grenache_grape_dht_port(g1));
    /* The second Grape through an options builder: any free ports (the default), the first as its
     * bootstrap node, announces kept 60 s instead of 120 s. */
    DIE_IF(grenache_grape_options_new(&gopts), "grenache_grape_options_new");
    DIE_IF(grenache_grape_options_set_bootstrap(gopts, boot), "grenache_grape_options_set_bootstrap");
    DIE_IF(grenache_grape_options_set(gopts, GRENACHE_GRAPE_OPTION_PEER_MAX_AGE_MS, 60000), "grenache_grape_options_set");
    DIE_IF(grenache_grape_start_opts(rt, gopts, &g2), "grenache_grape_start_opts");
    grenache_grape_options_free(gopts);
    printf("grapes: api %u and %u\n", (unsigned)grenache_grape_api_port(g1), (unsigned)grenache_grape_api_port(g2));

    snprintf(url, sizeof url, "http://127.0.0.1:%u", (unsigned)grenache_grape_api_port(g1));
    /* A Link with options: Grape calls may take up to 30 s (DHT puts are slow under valgrind). */
    DIE_IF(grenache_link_options_new(&lopts), "grenache_link_options_new");
    DIE_IF(grenache_link_options_set(lopts, GRENACHE_LINK_OPTION_REQUEST_TIMEOUT_MS, 30000), "grenache_link_options_set");
    DIE_IF(grenache_link_new_opts(rt, url, lopts, &l1), "grenache_link_new_opts");
    grenache_link_options_free(lopts);
    snprintf(url, sizeof url, "http://127.0.0.1:%u", (unsigned)grenache_grape_api_port(g2));
    DIE_IF(grenache_link_new(rt, url, &l2), "grenache_link_new");

    /* Options: any free port (the default), and ERR_TIMEOUT for requests not answered in 5 s. */
    DIE_IF(grenache_server_options_new(&opts), "grenache_server_options_new");
    DIE_IF(grenache_server_options_set_reply_timeout(opts, 5000), "grenache_server_options_set_reply_timeout");
    DIE_IF(grenache_server_new(l1, zmq ? GRENACHE_TRANSPORT_ZMQ : GRENACHE_TRANSPORT_HTTP, opts, on_request, NULL, NULL, &server),
           "grenache_server_new");
    grenache_server_options_free(opts);
    DIE_IF(grenache_server_start_announcing(server, "rpc_test", 1000), "grenache_server_start_announcing");
    if (zmq) {
        DIE_IF(grenache_client_new_zmq(l1, &client), "grenache_client_new_zmq");
    } else {
        DIE_IF(grenache_client_new_http(cross ? l2 : l1, NULL, &client), "grenache_client_new_http");
    }

    for (tries = 0; tries < 300 && !ok; tries++) {
        completion_reset(&c);
        DIE_IF(grenache_client_request(client, "rpc_test", "\"hello\"", 7, 10000, on_json, &c), "grenache_client_request");
        if (completion_wait(&c, 60000) != 0) break;
        if (c.code == GRENACHE_RESULT_OK) {
            printf("rpc_test hello -> %s\n", c.json);
            ok = strcmp(c.json, "\"world\"") == 0;
            break;
        }
        sleep_ms(100); /* not announced yet */
    }

    grenache_client_free(client);
    grenache_server_free(server);
    if (!ok) fprintf(stderr, "last result: %s %s\n", grenache_result_name(c.code), c.message ? c.message : "");
    cas_ok = cas_update(l1, &c);
    /* The bootstrap walk ends within seconds even without answers. */
    for (tries = 0; tries < 300; tries++) {
        int ready;
        pthread_mutex_lock(&ev.lock);
        ready = ev.ready;
        pthread_mutex_unlock(&ev.lock);
        if (ready) break;
        sleep_ms(100);
    }
    grenache_link_free(l2);
    grenache_link_free(l1);
    grenache_grape_free(g2);
    grenache_grape_free(g1); /* after this no event callback runs; its userdata is freed */
    grenache_runtime_free(rt);
    completion_destroy(&c);
    events_ok = ev.listening == 1 && ev.ready == 1 && ev.freed == 1;
    printf("events: listening %d, ready %d, node %d, announce %d, lagged %d; freed %d\n", ev.listening, ev.ready,
           ev.nodes, ev.announces, ev.lagged, ev.freed);
    pthread_mutex_destroy(&ev.lock);
    ok = ok && cas_ok != 0 && events_ok;
    printf("local_network: %s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
