/* rpc_client.c: the reference README's rpc_test client in C: sends "hello" to the service
 * "rpc_test" and expects "world", COUNT times, then once to every worker with map.
 *
 *   rpc_client GRAPE_URL [COUNT [http|ws]]
 *
 * Exits 0 when every answer was "world".
 */
#include "common.h"

int main(int argc, char **argv) {
    const char *grape = argc > 1 ? argv[1] : "http://127.0.0.1:30001";
    int count = argc > 2 ? atoi(argv[2]) : 1;
    const char *hello = "\"hello\"";
    grenache_runtime *rt = NULL;
    grenache_link *link = NULL;
    grenache_client *client = NULL;
    completion c;
    grenache_request_options opts;
    int i, tries, failures = 0;
    int ws = argc > 3 && strcmp(argv[3], "ws") == 0;

    completion_init(&c);
    DIE_IF(grenache_runtime_new(2, &rt), "grenache_runtime_new");
    DIE_IF(grenache_link_new(rt, grape, &link), "grenache_link_new");
    if (ws) {
        DIE_IF(grenache_client_new_ws(link, NULL, &client), "grenache_client_new_ws");
    } else {
        DIE_IF(grenache_client_new_http(link, NULL, &client), "grenache_client_new_http");
    }

    for (i = 0; i < count; i++) {
        /* The worker may not be announced yet: retry an empty lookup for a while. */
        for (tries = 0; tries < 300; tries++) {
            completion_reset(&c);
            DIE_IF(grenache_client_request(client, "rpc_test", hello, strlen(hello), 10000, on_json, &c),
                   "grenache_client_request");
            if (completion_wait(&c, 60000) != 0) {
                fprintf(stderr, "no completion within 60 s\n");
                return 1;
            }
            if (c.code != GRENACHE_RESULT_LOOKUP_EMPTY) break;
            sleep_ms(100);
        }
        if (c.code != GRENACHE_RESULT_OK || strcmp(c.json, "\"world\"") != 0) {
            fprintf(stderr, "request %d: %s %s\n", i, grenache_result_name(c.code),
                    c.message ? c.message : (c.json ? c.json : ""));
            failures++;
        } else if (i == 0) {
            printf("rpc_test hello -> %s\n", c.json);
        }
    }

    /* map with options: at most one random worker, HTTP bodies gzipped. */
    completion_reset(&c);
    memset(&opts, 0, sizeof opts);
    opts.timeout_ms = 10000;
    opts.limit = 1;
    opts.compress = !ws;
    DIE_IF(grenache_client_map_opts(client, "rpc_test", hello, strlen(hello), &opts, on_json, &c),
           "grenache_client_map_opts");
    if (completion_wait(&c, 60000) != 0 || c.code != GRENACHE_RESULT_OK || strstr(c.json, "\"world\"") == NULL) {
        fprintf(stderr, "map: %s %s\n", grenache_result_name(c.code), c.message ? c.message : "");
        failures++;
    } else {
        printf("rpc_test map -> %s\n", c.json);
    }

    /* A remote error arrives with the remote text. */
    completion_reset(&c);
    DIE_IF(grenache_client_request(client, "rpc_test", "\"bye\"", 5, 10000, on_json, &c), "grenache_client_request");
    if (completion_wait(&c, 60000) != 0 || c.code != GRENACHE_RESULT_REMOTE ||
        strcmp(c.message, "ERR_UNKNOWN_REQUEST") != 0) {
        fprintf(stderr, "expected ERR_REMOTE ERR_UNKNOWN_REQUEST, got %s\n", grenache_result_name(c.code));
        failures++;
    } else {
        printf("rpc_test bye -> %s: %s\n", grenache_result_name(c.code), c.message);
    }

    grenache_client_free(client);
    grenache_link_free(link);
    grenache_runtime_free(rt);
    completion_destroy(&c);
    printf("%d failure(s)\n", failures);
    return failures ? 1 : 0;
}
