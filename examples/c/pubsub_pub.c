/* pubsub_pub.c: a publisher. Announces "pubsub_test", waits for a subscriber, then publishes
 * COUNT messages "hello N" (N from 0), one every 50 ms, and exits.
 *
 *   pubsub_pub GRAPE_URL [COUNT]
 */
#include "common.h"

int main(int argc, char **argv) {
    const char *grape = argc > 1 ? argv[1] : "http://127.0.0.1:30001";
    int count = argc > 2 ? atoi(argv[2]) : 10;
    grenache_runtime *rt = NULL;
    grenache_link *link = NULL;
    grenache_publisher *pub = NULL;
    char msg[64];
    int i, waited;

    DIE_IF(grenache_runtime_new(2, &rt), "grenache_runtime_new");
    DIE_IF(grenache_link_new(rt, grape, &link), "grenache_link_new");
    DIE_IF(grenache_publisher_new(link, 0, NULL, &pub), "grenache_publisher_new");
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
        sleep_ms(50);
    }
    printf("published %d\n", i);

    grenache_publisher_free(pub);
    grenache_link_free(link);
    grenache_runtime_free(rt);
    return 0;
}
