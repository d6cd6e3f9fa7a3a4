/* put_get.c: stores a value in the DHT through a Grape and reads it back, then does the same
 * with a signed mutable item.
 *
 *   put_get GRAPE_URL
 */
#include "common.h"

static int put_then_get(grenache_link *link, completion *c, const char *hash_json, const char *salt,
                        const char *expect) {
    char hash[128];
    size_t n = strlen(hash_json);
    int tries;
    if (n < 3 || n - 2 >= sizeof hash) return 1;
    memcpy(hash, hash_json + 1, n - 2); /* strip the JSON quotes */
    hash[n - 2] = '\0';
    for (tries = 0; tries < 50; tries++) {
        completion_reset(c);
        DIE_IF(grenache_link_get(link, hash, salt, on_json, c), "grenache_link_get");
        if (completion_wait(c, 60000) != 0) return 1;
        if (c->code == GRENACHE_RESULT_OK && strstr(c->json, expect)) {
            printf("get %s -> %s\n", hash, c->json);
            return 0;
        }
        sleep_ms(100);
    }
    fprintf(stderr, "get %s: %s %s\n", hash, grenache_result_name(c->code), c->json ? c->json : "");
    return 1;
}

int main(int argc, char **argv) {
    const char *grape = argc > 1 ? argv[1] : "http://127.0.0.1:30001";
    const char *value = "\"hello world\"";
    const char *mvalue = "\"mutable hello\"";
    grenache_runtime *rt = NULL;
    grenache_link *link = NULL;
    grenache_keypair *key = NULL;
    completion c;
    char *hash = NULL;
    int failures = 0;

    completion_init(&c);
    DIE_IF(grenache_runtime_new(2, &rt), "grenache_runtime_new");
    DIE_IF(grenache_link_new(rt, grape, &link), "grenache_link_new");

    DIE_IF(grenache_link_put(link, value, strlen(value), on_json, &c), "grenache_link_put");
    if (completion_wait(&c, 60000) != 0 || c.code != GRENACHE_RESULT_OK) {
        fprintf(stderr, "put: %s %s\n", grenache_result_name(c.code), c.message ? c.message : "");
        return 1;
    }
    printf("put %s -> %s\n", value, c.json);
    hash = copy_text(c.json, strlen(c.json));
    failures += put_then_get(link, &c, hash, NULL, "hello world");
    free(hash);

    DIE_IF(grenache_keypair_generate(&key), "grenache_keypair_generate");
    completion_reset(&c);
    DIE_IF(grenache_link_put_mutable(link, key, mvalue, strlen(mvalue), 1, NULL, on_json, &c),
           "grenache_link_put_mutable");
    if (completion_wait(&c, 60000) != 0 || c.code != GRENACHE_RESULT_OK) {
        fprintf(stderr, "put_mutable: %s %s\n", grenache_result_name(c.code), c.message ? c.message : "");
        failures++;
    } else {
        printf("put_mutable %s -> %s\n", mvalue, c.json);
        hash = copy_text(c.json, strlen(c.json));
        failures += put_then_get(link, &c, hash, NULL, "mutable hello");
        free(hash);
    }

    grenache_keypair_free(key);
    grenache_link_free(link);
    grenache_runtime_free(rt);
    completion_destroy(&c);
    return failures ? 1 : 0;
}
