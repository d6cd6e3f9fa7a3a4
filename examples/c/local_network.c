/* local_network.c: everything in one process. Starts two Grapes that bootstrap from each other
 * (the reference README's `grape --dp 20001 --aph 30001 --bn 127.0.0.1:20002` pair, on free
 * ports), an rpc_test worker announced on the first and a client that looks it up through the
 * first too (or, with the argument "cross", through the second); then stops everything.
 *
 *   local_network [cross]
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

int main(int argc, char **argv) {
    grenache_runtime *rt = NULL;
    grenache_grape *g1 = NULL, *g2 = NULL;
    grenache_link *l1 = NULL, *l2 = NULL;
    grenache_server *server = NULL;
    grenache_client *client = NULL;
    completion c;
    char url[64], boot[64];
    int tries, ok = 0;
    int cross = argc > 1 && strcmp(argv[1], "cross") == 0;

    completion_init(&c);
    DIE_IF(grenache_runtime_new(2, &rt), "grenache_runtime_new");
    DIE_IF(grenache_grape_start(rt, 0, 0, NULL, &g1), "grenache_grape_start");
    snprintf(boot, sizeof boot, "127.0.0.1:%u", (unsigned)grenache_grape_dht_port(g1));
    DIE_IF(grenache_grape_start(rt, 0, 0, boot, &g2), "grenache_grape_start");
    printf("grapes: api %u and %u\n", (unsigned)grenache_grape_api_port(g1), (unsigned)grenache_grape_api_port(g2));

    snprintf(url, sizeof url, "http://127.0.0.1:%u", (unsigned)grenache_grape_api_port(g1));
    DIE_IF(grenache_link_new(rt, url, &l1), "grenache_link_new");
    snprintf(url, sizeof url, "http://127.0.0.1:%u", (unsigned)grenache_grape_api_port(g2));
    DIE_IF(grenache_link_new(rt, url, &l2), "grenache_link_new");

    DIE_IF(grenache_server_new_http(l1, 0, NULL, on_request, NULL, NULL, &server), "grenache_server_new_http");
    DIE_IF(grenache_server_start_announcing(server, "rpc_test", 1000), "grenache_server_start_announcing");
    DIE_IF(grenache_client_new_http(cross ? l2 : l1, NULL, &client), "grenache_client_new_http");

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
    grenache_link_free(l2);
    grenache_link_free(l1);
    grenache_grape_free(g2);
    grenache_grape_free(g1);
    grenache_runtime_free(rt);
    completion_destroy(&c);
    printf("local_network: %s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
