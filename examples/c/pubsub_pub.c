/* pubsub_pub.c: a publisher. Announces "pubsub_test", waits for a subscriber, then publishes
 * COUNT messages "hello N" (N from 0), one every 50 ms, each followed by a binary frame (bytes
 * 0x00 0xFF then N), and exits. Over WebSocket (the default) its options give it a
 * verify_client hook that logs each subscriber before accepting it; with "zmq" it publishes on a
 * ZeroMQ PUB socket instead (no hook there: ZeroMQ has no handshake to refuse).
 *
 *   pubsub_pub GRAPE_URL [COUNT] [ws|zmq]
 */
#include "common.h"

/* The verify_client hook: runs on a worker thread before a subscriber's socket is accepted. */
static bool log_subscriber(void *userdata, const grenache_client_info *info) {
    (void)userdata;
    printf("subscriber from %s on %s\n", grenache_client_info_remote_addr(info), grenache_client_info_path(info));
    fflush(stdout);
    return true;
}

int main(int argc, char **argv) {
    const char *grape = argc > 1 ? argv[1] : "http://127.0.0.1:30001";
    int count = argc > 2 ? atoi(argv[2]) : 10;
    bool zmq = argc > 3 && strcmp(argv[3], "zmq") == 0;
    grenache_runtime *rt = NULL;
    grenache_link *link = NULL;
    grenache_publisher *pub = NULL;
    grenache_server_options *opts = NULL;
    char msg[64];
    uint8_t bin[3] = {0x00, 0xFF, 0};
    int i, waited;

    DIE_IF(grenache_runtime_new(2, &rt), "grenache_runtime_new");
    DIE_IF(grenache_link_new(rt, grape, &link), "grenache_link_new");
    DIE_IF(grenache_server_options_new(&opts), "grenache_server_options_new");
    if (!zmq) {
        DIE_IF(grenache_server_options_set_verify_client(opts, log_subscriber, NULL, NULL), "grenache_server_options_set_verify_client");
    }
    DIE_IF(grenache_publisher_new_transport(link, zmq ? GRENACHE_TRANSPORT_ZMQ : GRENACHE_TRANSPORT_WS, opts, &pub),
           "grenache_publisher_new_transport");
    grenache_server_options_free(opts);
    DIE_IF(grenache_publisher_start_announcing(pub, "pubsub_test", 500), "grenache_publisher_start_announcing");
    printf("publishing on %u\n", (unsigned)grenache_publisher_port(pub));
    fflush(stdout);

    for (waited = 0; grenache_publisher_subscribers(pub) == 0; waited += 20) {
        if (waited > 120000) {
            fprintf(stderr, "no subscriber within 120 s\n");
            return 1;
        }
        sleep_ms(20);
    }
    /* Keep publishing while subscribers are connected, COUNT messages at least. */
    for (i = 0; i < count || (grenache_publisher_subscribers(pub) > 0 && i < count * 100); i++) {
        size_t queued = 0;
        int n = snprintf(msg, sizeof msg, "hello %d", i);
        DIE_IF(grenache_publisher_publish(pub, msg, (size_t)n, &queued), "grenache_publisher_publish");
        bin[2] = (uint8_t)i;
        DIE_IF(grenache_publisher_publish_binary(pub, bin, sizeof bin, &queued), "grenache_publisher_publish_binary");
        sleep_ms(50);
    }
    printf("published %d\n", i);

    grenache_publisher_free(pub);
    grenache_link_free(link);
    grenache_runtime_free(rt);
    return 0;
}
