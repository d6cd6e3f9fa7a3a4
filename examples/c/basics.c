/* basics.c: the conventions of the C API without a network: version, result codes and their
 * names and messages, a runtime's life cycle, and what misuse returns.
 *
 *   cc -Wall -Wextra -Werror -pedantic basics.c $(pkg-config --cflags --libs grenache) -o basics
 */
#include <stdio.h>
#include <string.h>

#include "grenache.h"

static int failures = 0;

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                    \
        }                                                                  \
    } while (0)

int main(void) {
    char expected[64];
    char buf[256];
    size_t n = 0;
    grenache_runtime *rt = NULL;
    grenache_result rc;

    snprintf(expected, sizeof expected, "grenache/%d.%d.%d", GRENACHE_VERSION_MAJOR,
             GRENACHE_VERSION_MINOR, GRENACHE_VERSION_PATCH);
    CHECK(strcmp(grenache_version(), expected) == 0);
    printf("%s (header %s)\n", grenache_version(), GRENACHE_VERSION_STRING);

    /* Codes, names and messages. */
    CHECK(GRENACHE_RESULT_OK == 0);
    CHECK(strcmp(grenache_result_name(GRENACHE_RESULT_OK), "OK") == 0);
    CHECK(strcmp(grenache_result_name(GRENACHE_RESULT_TIMEOUT), "ERR_TIMEOUT") == 0);
    CHECK(strcmp(grenache_result_name(GRENACHE_RESULT_LOOKUP_EMPTY), "ERR_GRAPE_LOOKUP_EMPTY") == 0);
    CHECK(grenache_result_name(12345) == NULL);
    rc = grenache_result_message(GRENACHE_RESULT_CANCELLED, buf, sizeof buf, &n);
    CHECK(rc == GRENACHE_RESULT_OK);
    CHECK(n == strlen(buf));
    printf("%u %s: %s\n", (unsigned)GRENACHE_RESULT_CANCELLED, grenache_result_name(GRENACHE_RESULT_CANCELLED), buf);
    n = 99;
    CHECK(grenache_result_message(GRENACHE_RESULT_CANCELLED, buf, 3, &n) == GRENACHE_RESULT_BUFFER_TOO_SMALL);
    CHECK(n == 99); /* out-parameters are written only on success */

    /* Misuse gets a code, not a crash. */
    CHECK(grenache_runtime_new(1, NULL) == GRENACHE_RESULT_NULL_PARAMETER);
    CHECK(grenache_reply_send(NULL, "1", 1) == GRENACHE_RESULT_NULL_PARAMETER);
    CHECK(grenache_reply_error(NULL, "ERR_X") == GRENACHE_RESULT_NULL_PARAMETER);
    CHECK(grenache_error_code(NULL) == GRENACHE_RESULT_NULL_PARAMETER);
    CHECK(grenache_request_key(NULL, NULL) == NULL);
    grenache_reply_free(NULL);
    grenache_runtime_free(NULL);

    /* A runtime's life cycle. */
    rc = grenache_runtime_new(2, &rt);
    CHECK(rc == GRENACHE_RESULT_OK && rt != NULL);
    grenache_runtime_free(rt);

    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("basics: ok\n");
    return 0;
}
