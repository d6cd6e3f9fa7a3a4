/* common.h: small helpers shared by the C examples (waiting for a completion callback). */
#ifndef GRENACHE_EXAMPLES_COMMON_H
#define GRENACHE_EXAMPLES_COMMON_H

#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "grenache.h"

/* One completion's outcome, filled in by a callback on a library thread. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int done;
    grenache_result code;
    char *json;    /* malloc'd copy of the result, or NULL */
    char *message; /* malloc'd copy of the error message, or NULL */
    bool value;    /* the answer of a grenache_bool_cb */
} completion;

static inline void completion_init(completion *c) {
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
}

static inline void completion_reset(completion *c) {
    free(c->json);
    free(c->message);
    c->json = NULL;
    c->message = NULL;
    c->done = 0;
    c->code = GRENACHE_RESULT_OK;
}

static inline void completion_destroy(completion *c) {
    completion_reset(c);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->cond);
}

static inline char *copy_text(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static inline void completion_set(completion *c, grenache_result code, const grenache_error *err, const char *json,
                           size_t len) {
    pthread_mutex_lock(&c->lock);
    c->code = code;
    if (json) c->json = copy_text(json, len);
    if (err) c->message = copy_text(grenache_error_message(err), strlen(grenache_error_message(err)));
    c->done = 1;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

/* A grenache_json_cb: the userdata is a completion. */
static inline void on_json(void *userdata, grenache_result code, const grenache_error *err, const char *json,
                    size_t len) {
    completion_set((completion *)userdata, code, err, json, len);
}

/* A grenache_done_cb: the userdata is a completion. */
static inline void on_done(void *userdata, grenache_result code, const grenache_error *err) {
    completion_set((completion *)userdata, code, err, NULL, 0);
}

/* A grenache_bool_cb: the userdata is a completion; the answer goes to its `value`. */
static inline void on_bool(void *userdata, grenache_result code, const grenache_error *err, bool value) {
    completion *c = (completion *)userdata;
    pthread_mutex_lock(&c->lock);
    c->value = value;
    pthread_mutex_unlock(&c->lock);
    completion_set(c, code, err, NULL, 0);
}

/* Waits at most timeout_ms for the completion; returns 0 when it fired. */
static inline int completion_wait(completion *c, int timeout_ms) {
    struct timespec ts;
    int rc = 0;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec += 1;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&c->lock);
    while (!c->done && rc == 0) rc = pthread_cond_timedwait(&c->cond, &c->lock, &ts);
    rc = c->done ? 0 : -1;
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static inline void sleep_ms(int ms) {
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
}

#define DIE_IF(rc, what)                                                                            \
    do {                                                                                            \
        grenache_result rc_ = (rc);                                                                 \
        if (rc_ != GRENACHE_RESULT_OK) {                                                            \
            fprintf(stderr, "%s failed: %s\n", (what), grenache_result_name(rc_));                  \
            exit(1);                                                                                \
        }                                                                                           \
    } while (0)

#endif
