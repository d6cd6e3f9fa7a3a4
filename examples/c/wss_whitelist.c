/* wss_whitelist.c: a WSS RPC server that accepts only the clients whose certificate is on a
 * whitelist of SHA-1 fingerprints, decided by a verify_client hook before the socket is accepted
 * (the reference's grenache-nodejs-ws `verifyClient`). Also shows a server options object with a
 * reply timeout. Everything runs in one process on free ports, with two Grapes of our own.
 *
 *   wss_whitelist CERT_DIR ALLOWED_FINGERPRINT
 *
 * CERT_DIR holds PEM files: ca.pem, server.pem + server.key, client.pem + client.key (its
 * fingerprint is ALLOWED_FINGERPRINT, "AA:BB:..."), other.pem + other.key (not allowed).
 */
#include "common.h"

/* The hook's userdata: the whitelist (one entry here) and what the hook decided. */
typedef struct {
    pthread_mutex_t lock;
    const char *allowed;
    int accepted, refused, freed;
} whitelist;

/* Runs on a library worker thread, possibly concurrently: must be thread-safe and quick. */
static bool verify_client(void *userdata, const grenache_client_info *info) {
    whitelist *w = (whitelist *)userdata;
    const char *fp = grenache_client_info_fingerprint(info); /* NULL: no client certificate */
    bool ok = fp != NULL && strcmp(fp, w->allowed) == 0;
    pthread_mutex_lock(&w->lock);
    if (ok) w->accepted++; else w->refused++;
    pthread_mutex_unlock(&w->lock);
    printf("verify_client %s from %s on %s: %s\n", fp ? fp : "(no certificate)", grenache_client_info_remote_addr(info),
           grenache_client_info_path(info), ok ? "accepted" : "refused");
    return ok;
}

/* Runs exactly once, when neither the options nor the server hold the hook any more. */
static void free_whitelist(void *userdata) {
    whitelist *w = (whitelist *)userdata;
    pthread_mutex_lock(&w->lock);
    w->freed++;
    pthread_mutex_unlock(&w->lock);
}

static void on_request(void *userdata, const grenache_request *req, grenache_reply *reply) {
    const char *fp = grenache_request_fingerprint(req);
    (void)userdata;
    printf("request from %s\n", fp ? fp : "(no certificate)");
    grenache_reply_send(reply, "\"hello whitelisted\"", 19);
}

/* Reads DIR/NAME into a malloc'd NUL-terminated string (exits on failure). */
static char *read_pem(const char *dir, const char *name) {
    char path[1024];
    FILE *f;
    char *buf;
    long n;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(1);
    }
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* A WSS client presenting CERT/KEY (NULL: none); returns the result code of one request. */
static grenache_result call_as(grenache_link *link, const char *dir, const char *ca, const char *cert,
                               const char *key, completion *c) {
    grenache_client_tls *tls = NULL;
    grenache_client *client = NULL;
    char *cert_pem = cert ? read_pem(dir, cert) : NULL, *key_pem = key ? read_pem(dir, key) : NULL;
    grenache_result code = GRENACHE_RESULT_INTERNAL;
    int tries;
    DIE_IF(grenache_client_tls_new(ca, cert_pem, key_pem, &tls), "grenache_client_tls_new");
    DIE_IF(grenache_client_new_ws(link, tls, &client), "grenache_client_new_ws");
    grenache_client_tls_free(tls);
    for (tries = 0; tries < 300; tries++) {
        completion_reset(c);
        DIE_IF(grenache_client_request(client, "whitelisted", "\"hi\"", 4, 10000, on_json, c), "grenache_client_request");
        if (completion_wait(c, 60000) != 0) break;
        code = c->code;
        if (code != GRENACHE_RESULT_LOOKUP_EMPTY) break;
        sleep_ms(100); /* not announced yet */
    }
    printf("client %s: %s %s\n", cert ? cert : "(none)", grenache_result_name(code),
           c->json ? c->json : (c->message ? c->message : ""));
    grenache_client_free(client);
    free(cert_pem);
    free(key_pem);
    return code;
}

int main(int argc, char **argv) {
    grenache_runtime *rt = NULL;
    grenache_grape *g1 = NULL, *g2 = NULL;
    grenache_link *link = NULL;
    grenache_server_tls *stls = NULL;
    grenache_server_options *opts = NULL;
    grenache_server *server = NULL;
    whitelist w;
    completion c;
    char url[64], boot[64];
    char *ca, *cert, *key;
    grenache_result good, other, anon;
    int ok;

    if (argc != 3) {
        fprintf(stderr, "usage: %s CERT_DIR ALLOWED_FINGERPRINT\n", argv[0]);
        return 2;
    }
    memset(&w, 0, sizeof w);
    pthread_mutex_init(&w.lock, NULL);
    w.allowed = argv[2];
    completion_init(&c);
    ca = read_pem(argv[1], "ca.pem");
    cert = read_pem(argv[1], "server.pem");
    key = read_pem(argv[1], "server.key");

    DIE_IF(grenache_runtime_new(2, &rt), "grenache_runtime_new");
    DIE_IF(grenache_grape_start(rt, 0, 0, NULL, &g1), "grenache_grape_start");
    snprintf(boot, sizeof boot, "127.0.0.1:%u", (unsigned)grenache_grape_dht_port(g1));
    DIE_IF(grenache_grape_start(rt, 0, 0, boot, &g2), "grenache_grape_start");
    snprintf(url, sizeof url, "http://127.0.0.1:%u", (unsigned)grenache_grape_api_port(g1));
    DIE_IF(grenache_link_new(rt, url, &link), "grenache_link_new");

    /* TLS asks for a client certificate and accepts any: the hook decides. */
    DIE_IF(grenache_server_tls_new(cert, key, NULL, GRENACHE_CLIENT_AUTH_ANY, &stls), "grenache_server_tls_new");
    DIE_IF(grenache_server_options_new(&opts), "grenache_server_options_new");
    DIE_IF(grenache_server_options_set_tls(opts, stls), "grenache_server_options_set_tls");
    DIE_IF(grenache_server_options_set_reply_timeout(opts, 10000), "grenache_server_options_set_reply_timeout");
    DIE_IF(grenache_server_options_set_verify_client(opts, verify_client, &w, free_whitelist),
           "grenache_server_options_set_verify_client");
    DIE_IF(grenache_server_new(link, GRENACHE_TRANSPORT_WS, opts, on_request, NULL, NULL, &server), "grenache_server_new");
    /* The server copied what it needs. */
    grenache_server_options_free(opts);
    grenache_server_tls_free(stls);
    DIE_IF(grenache_server_start_announcing(server, "whitelisted", 1000), "grenache_server_start_announcing");

    good = call_as(link, argv[1], ca, "client.pem", "client.key", &c);
    other = call_as(link, argv[1], ca, "other.pem", "other.key", &c);
    anon = call_as(link, argv[1], ca, NULL, NULL, &c);

    grenache_server_free(server);
    grenache_link_free(link);
    grenache_grape_free(g2);
    grenache_grape_free(g1);
    grenache_runtime_free(rt);

    ok = good == GRENACHE_RESULT_OK && other == GRENACHE_RESULT_CLIENT_REFUSED && anon == GRENACHE_RESULT_CLIENT_REFUSED &&
         w.accepted >= 1 && w.refused >= 2 && w.freed == 1;
    printf("accepted %d, refused %d, userdata freed %d time(s)\n", w.accepted, w.refused, w.freed);
    printf("wss_whitelist: %s\n", ok ? "ok" : "FAILED");
    completion_destroy(&c);
    pthread_mutex_destroy(&w.lock);
    free(ca);
    free(cert);
    free(key);
    return ok ? 0 : 1;
}
