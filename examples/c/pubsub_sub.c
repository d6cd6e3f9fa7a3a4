/* pubsub_sub.c: a subscriber. Subscribes to "pubsub_test" (with grenache_subscriber_new_ex,
 * which tells text frames from binary ones) and exits 0 once COUNT text messages "hello N" and at
 * least one binary frame (starting 0x00 0xFF) arrived. With "zmq" it subscribes over ZeroMQ
 * (grenache_subscriber_new_transport), where a message that is not UTF-8 counts as binary.
 *
 *   pubsub_sub GRAPE_URL [COUNT] [ws|zmq]
 */
#include "common.h"

typedef struct {
    pthread_mutex_t lock;
    int received;
    int binary;
    int freed;
} sub_state;

/* Runs on a library thread for each message. */
static void on_message(void *userdata, const char *publisher, const uint8_t *data, size_t len, bool binary) {
    sub_state *st = userdata;
    pthread_mutex_lock(&st->lock);
    if (binary) {
        if (len >= 2 && data[0] == 0x00 && data[1] == 0xFF) st->binary++;
    } else if (len >= 6 && memcmp(data, "hello ", 6) == 0) {
        if (st->received == 0) printf("first message from %s: %s\n", publisher, (const char *)data);
        st->received++;
    }
    pthread_mutex_unlock(&st->lock);
}

static void on_free(void *userdata) {
    sub_state *st = userdata;
    pthread_mutex_lock(&st->lock);
    st->freed++;
    pthread_mutex_unlock(&st->lock);
}

int main(int argc, char **argv) {
    const char *grape = argc > 1 ? argv[1] : "http://127.0.0.1:30001";
    int count = argc > 2 ? atoi(argv[2]) : 10;
    bool zmq = argc > 3 && strcmp(argv[3], "zmq") == 0;
    grenache_runtime *rt = NULL;
    grenache_link *link = NULL;
    grenache_subscriber *sub = NULL;
    sub_state st;
    int received = 0, binary = 0, waited, freed;

    memset(&st, 0, sizeof st);
    pthread_mutex_init(&st.lock, NULL);
    DIE_IF(grenache_runtime_new(2, &rt), "grenache_runtime_new");
    DIE_IF(grenache_link_new(rt, grape, &link), "grenache_link_new");
    if (zmq) {
        DIE_IF(grenache_subscriber_new_transport(link, "pubsub_test", GRENACHE_TRANSPORT_ZMQ, NULL, on_message, &st, on_free, &sub),
               "grenache_subscriber_new_transport");
    } else {
        DIE_IF(grenache_subscriber_new_ex(link, "pubsub_test", NULL, on_message, &st, on_free, &sub), "grenache_subscriber_new_ex");
    }

    for (waited = 0; waited < 120000; waited += 20) {
        pthread_mutex_lock(&st.lock);
        received = st.received;
        binary = st.binary;
        pthread_mutex_unlock(&st.lock);
        if (received >= count && binary >= 1) break;
        sleep_ms(20);
    }
    printf("received %d\n", received);
    printf("binary frames %d\n", binary);

    grenache_subscriber_free(sub);
    grenache_link_free(link);
    grenache_runtime_free(rt); /* joins the workers: free_userdata has run by now */
    pthread_mutex_lock(&st.lock);
    freed = st.freed;
    pthread_mutex_unlock(&st.lock);
    pthread_mutex_destroy(&st.lock);
    if (freed != 1) {
        fprintf(stderr, "free_userdata ran %d times\n", freed);
        return 1;
    }
    return received >= count && binary >= 1 ? 0 : 1;
}
