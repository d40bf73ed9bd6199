/*
 * instacart-stub: a strict local stand-in for Instacart Connect's OAuth token
 * endpoint (POST /v2/oauth/token), its revoke call and the Recommendations
 * endpoints, plus a control API under /__stub/ to inject faults and inspect
 * what arrived.  Upstream for the integration tests and the README demo of
 * instacart-tokend; tests/integration/stub.py drives it.
 *
 *   instacart-stub --listen 127.0.0.1:PORT [--client-id ID --client-secret-file PATH]...
 *                  [--expires-in N] [--port-file PATH]
 *
 * Upstream side: POST /v2/oauth/token, /v2/oauth/token/revoke and the four
 * /v2/recommendations/... calls (Bearer token).  Control side (JSON, never
 * logged): GET /__stub/requests (each with the token a mint answered or a
 * revocation named), GET /__stub/stats, POST /__stub/faults (a
 * fault object or an array: match_user, match_path, count, delay_ms, action =
 * ok|status|hang|drop|truncate|malformed, status, body, content_type,
 * retry_after, expires_in | expires_in_raw, token_type, access_token),
 * POST /__stub/reset, POST /__stub/config (expires_in, credentials, extra_scopes).
 *
 * Model: libmicrohttpd with one thread per connection, so an injected delay or
 * hang simply parks that connection's thread.  All shared state sits behind one
 * mutex; every wait is a timed wait on one condition variable that shutdown and
 * /__stub/reset broadcast, so nothing ever sleeps blindly.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <sys/types.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <microhttpd.h>

#define TOKEN_PATH "/v2/oauth/token"
#define REVOKE_PATH "/v2/oauth/token/revoke"
#define API_BODY_MAX (64u * 1024u)
#define CONTROL_BODY_MAX (1024u * 1024u)
#define LOG_CAP 1000000u          /* recorded requests */
#define TOKEN_CAP 1000000u        /* remembered tokens; beyond it the oldest is forgotten */
#define REVOKED_CAP 1000000u
#define FAULT_CAP 10000u
#define FIELD_MAX 8192u           /* longest string kept in a log field */
#define TOKEN_BUCKETS 65536u
#define WAIT_MAX_MS 300000LL      /* bound on any delay or hang */
#define EXPIRES_MAX 1000000000LL  /* |expires_in| bound: expiry stays within int64 ns */
#define NS_PER_MS 1000000LL
#define NS_PER_S 1000000000LL
#define MALFORMED_BODY "{\"access_token\": \"abc\", \"token_type\": \"Bearer\", \"expires_in\": 86"
#define NELEM(a) (sizeof(a) / sizeof *(a))

/* ---------------------------------------------------------------- state */

struct cred { char *id, *secret; };

/* How a fault changes one member of a successful token answer. */
enum ov_mode { OV_KEEP, OV_OMIT, OV_RAW };
struct override { enum ov_mode mode; char *raw, *str; /* str: the value, if a JSON string */ };

enum action { A_OK, A_STATUS, A_HANG, A_DROP, A_TRUNCATE, A_MALFORMED };
static const char *const action_names[] = { "ok", "status", "hang", "drop", "truncate", "malformed" };

struct fault {
	unsigned refs;            /* the queue and each request applying it hold one */
	char *match_user, *match_path, *body, *content_type, *retry_after;
	long long count, delay_ms;
	enum action action;
	unsigned status;
	struct override expires_in, token_type, access_token;
};

/* One entry of /__stub/requests; string fields in JSON order. */
/* access_token: the token a mint answered with, or the one a revocation named. */
enum { F_METHOD, F_PATH, F_QUERY, F_GRANT, F_SCOPE, F_USER, F_CLIENT, F_AUTH_USER, F_CTYPE, F_TOKEN, NFIELDS };
static const char *const field_names[NFIELDS] = { "method", "path", "query", "grant_type", "scope",
	"user_id", "client_id", "authorization_user", "content_type", "access_token" };
struct rec {
	unsigned long long seq, body_bytes;
	char *f[NFIELDS];
	unsigned status;
	bool done;
	struct timespec t_recv, t_done;
};

struct token {
	char *tok, *user, *scope, *client;
	int64_t expiry;           /* CLOCK_MONOTONIC ns */
	bool revoked;
	unsigned long listed_gen; /* gen in which it entered revoked_tokens */
	struct token *next;       /* hash chain */
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;      /* CLOCK_MONOTONIC; broadcast on shutdown and reset */
	bool shutdown;
	unsigned long gen;        /* bumped by /__stub/reset: older requests go stale */
	struct cred *creds;
	size_t ncreds;
	char **extra_scopes;
	size_t nextra;
	long long expires_in;
	struct rec **log;
	size_t nlog, log_alloc;
	unsigned long long seq;
	struct fault **faults;
	size_t nfaults;
	struct token *buckets[TOKEN_BUCKETS];
	struct token **ring;      /* insertion order, for eviction at TOKEN_CAP */
	size_t ring_head, ntokens, ring_alloc;
	char **revoked;
	size_t nrevoked;
	unsigned long long token_requests, mints, revocations;
} g = { .lock = PTHREAD_MUTEX_INITIALIZER, .gen = 1, .expires_in = 86400 };

enum kind { K_CONTROL, K_TOKEN, K_REVOKE, K_RECO, K_OTHER };

struct req {                      /* one HTTP request: MHD's con_cls */
	char *uri;                /* raw request target, for the query string */
	struct timespec t_recv;
	bool started, answered, too_large;
	enum kind kind;
	unsigned long gen;        /* g.gen at arrival */
	struct rec *rec;          /* log entry; only touched while gen == g.gen */
	char *ctype, *auth, *body, *user_id /* from the assertion */;
	size_t len, limit;
	unsigned long long total;
	cJSON *json;
};

/* ---------------------------------------------------------------- helpers */

static _Noreturn void oom(void) {
	fputs("instacart-stub: out of memory\n", stderr);
	abort();
}

static void *xrealloc(void *p, size_t n) {
	if (!(p = realloc(p, n ? n : 1))) oom();
	return p;
}

static void *xcalloc(size_t n) { return memset(xrealloc(NULL, n), 0, n); }

static char *dup_n(const char *s, size_t n) {
	char *d = xrealloc(NULL, n + 1);
	memcpy(d, s, n);
	d[n] = '\0';
	return d;
}

/* Both pass NULL through. */
static char *xstrdup(const char *s) { return s ? dup_n(s, strlen(s)) : NULL; }
static char *xstrndup(const char *s, size_t max) { return s ? dup_n(s, strnlen(s, max)) : NULL; }

static char *print_json(const cJSON *j) {
	char *s = cJSON_PrintUnformatted(j);
	if (!s) oom();
	return s;
}

static int64_t mono_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static const char *jstr(const cJSON *obj, const char *key) {
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* A JSON number holding an integer within [lo, hi]. */
static bool json_int(const cJSON *v, long long lo, long long hi, long long *out) {
	if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) return false;
	double d = v->valuedouble;
	if (d < (double)lo || d > (double)hi || (double)(long long)d != d) return false;
	*out = (long long)d;
	return true;
}

static bool parse_ll(const char *s, long long lo, long long hi, long long *out) {
	if (!s || !*s || isspace((unsigned char)*s)) return false;
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno || *end || v < lo || v > hi) return false;
	*out = v;
	return true;
}

/* cJSON turns \u0000 into a NUL that silently cuts the string short, which
 * would let "test-client\u0000junk" pass as "test-client": refuse it. */
static bool has_nul_escape(const char *s) {
	for (; *s; s++) {
		if (*s != '\\') continue;
		if (s[1] == 'u' && !strncmp(s + 2, "0000", 4)) return true;
		if (s[1]) s++;
	}
	return false;
}

/* Exactly `len` bytes of one JSON value, or NULL. */
static cJSON *parse_exact(const char *s, size_t len) {
	if (!s || !len || strlen(s) != len || has_nul_escape(s)) return NULL;
	return cJSON_ParseWithOpts(s, NULL, 1);
}

/* Does the query, form-decoded, mention `word` in any case? */
static bool query_mentions(const char *q, const char *word) {
	char *d = xcalloc(strlen(q) + 1), *o = d, hex[3] = { 0 };
	for (; *q; q++) {
		if (*q == '%' && isxdigit((unsigned char)q[1]) && isxdigit((unsigned char)q[2])) {
			memcpy(hex, q + 1, 2);
			*o++ = (char)strtol(hex, NULL, 16);
			q += 2;
		} else {
			*o++ = *q == '+' ? ' ' : *q;
		}
	}
	bool hit = strcasestr(d, word) != NULL;
	free(d);
	return hit;
}

static int b64val(int c) {
	if (c >= 'A' && c <= 'Z') return c - 'A';
	if (c >= 'a' && c <= 'z') return c - 'a' + 26;
	if (c >= '0' && c <= '9') return c - '0' + 52;
	return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* Strict standard Base64: whole quads, canonical '=' padding and zero spare
 * bits; no whitespace, no URL-safe alphabet.  NUL-terminated result or NULL. */
static char *b64_decode_strict(const char *s, size_t *outlen) {
	size_t n = strlen(s), pad = 0, o = 0;
	if (!n || n % 4) return NULL;
	if (s[n - 1] == '=') pad = s[n - 2] == '=' ? 2 : 1;
	char *out = xrealloc(NULL, n / 4 * 3 + 1);
	int v[4] = { 0, 0, 0, 0 };
	for (size_t i = 0; i < n; i += 4) {
		bool last = i + 4 == n;
		for (size_t k = 0; k < 4; k++)
			if ((v[k] = last && k >= 4 - pad ? 0 : b64val((unsigned char)s[i + k])) < 0) goto bad;
		unsigned w = (unsigned)v[0] << 18 | (unsigned)v[1] << 12 | (unsigned)v[2] << 6 | (unsigned)v[3];
		out[o++] = (char)(w >> 16);
		if (!last || pad < 2) out[o++] = (char)(w >> 8 & 0xff);
		if (!last || pad < 1) out[o++] = (char)(w & 0xff);
	}
	if ((pad == 2 && (v[1] & 0xf)) || (pad == 1 && (v[2] & 0x3))) goto bad;
	out[o] = '\0';
	*outlen = o;
	return out;
bad:
	free(out);
	return NULL;
}

/* The user_id of a fulfillment_user_assertion: Base64 of a JSON object with a
 * non-empty string "user_id".  NULL when the assertion is not that. */
static char *assertion_user(const char *assertion) {
	size_t n;
	char *raw = b64_decode_strict(assertion, &n), *user = NULL;
	cJSON *j = raw ? parse_exact(raw, n) : NULL;
	const char *u = cJSON_IsObject(j) ? jstr(j, "user_id") : NULL;
	if (u && *u) user = xstrdup(u);
	cJSON_Delete(j);
	free(raw);
	return user;
}

/* application/json, parameters such as "; charset=utf-8" allowed. */
static bool ctype_is_json(const char *ct) {
	static const char mt[] = "application/json";
	if (!ct) return false;
	ct += strspn(ct, " \t");
	if (strncasecmp(ct, mt, sizeof mt - 1)) return false;
	ct += sizeof mt - 1;
	ct += strspn(ct, " \t");
	return !*ct || *ct == ';';
}

static enum kind classify(const char *p) {
	static const char reco[] = "/v2/recommendations/";
	if (!strncmp(p, "/__stub/", 8)) return K_CONTROL;
	if (!strcmp(p, TOKEN_PATH)) return K_TOKEN;
	if (!strcmp(p, REVOKE_PATH)) return K_REVOKE;
	if (strncmp(p, reco, sizeof reco - 1)) return K_OTHER;
	p += sizeof reco - 1;
	if (!strncmp(p, "orders/", 7)) {  /* orders/{order_id}/... */
		const char *id = p + 7, *slash = strchr(id, '/');
		if (!slash || slash == id) return K_OTHER;
		p = slash + 1;
	}
	return !strcmp(p, "replacement_items") || !strcmp(p, "complementary_items") ? K_RECO : K_OTHER;
}

/* ---------------------------------------------------------------- tokens (lock held) */

static void random_token(char out[44]) {
	static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	unsigned char b[43];
	for (size_t got = 0; got < sizeof b;) {
		ssize_t n = getrandom(b + got, sizeof b - got, 0);
		if (n < 0 && errno != EINTR) {
			perror("instacart-stub: getrandom");
			abort();
		}
		got += n > 0 ? (size_t)n : 0;
	}
	for (size_t i = 0; i < sizeof b; i++) out[i] = alphabet[b[i] & 63];  /* 256 % 64 == 0: unbiased */
	out[43] = '\0';
}

static struct token **token_slot(const char *tok) {
	uint32_t h = 2166136261u;  /* FNV-1a */
	for (const char *p = tok; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
	struct token **pp = &g.buckets[h % TOKEN_BUCKETS];
	while (*pp && strcmp((*pp)->tok, tok)) pp = &(*pp)->next;
	return pp;
}

static void token_clear(struct token *t) {
	free(t->user);
	free(t->scope);
	free(t->client);
}

/* Remembers (or re-remembers) a token, forgetting the oldest at TOKEN_CAP. */
static struct token *token_put(const char *tok, const char *user, const char *scope, const char *client,
			       int64_t expiry) {
	struct token **pp = token_slot(tok), *t = *pp;
	if (t) {
		token_clear(t);
	} else {
		t = xcalloc(sizeof *t);
		t->tok = xstrdup(tok);
		if (g.ntokens == TOKEN_CAP) {
			struct token *old = g.ring[g.ring_head];
			*token_slot(old->tok) = old->next;
			token_clear(old);
			free(old->tok);
			free(old);
			g.ring[g.ring_head] = t;
			g.ring_head = (g.ring_head + 1) % TOKEN_CAP;
			pp = token_slot(tok);  /* the chain may have changed */
		} else {
			if (g.ntokens == g.ring_alloc) {
				g.ring_alloc = g.ring_alloc ? g.ring_alloc * 2 : 1024;
				g.ring = xrealloc(g.ring, g.ring_alloc * sizeof *g.ring);
			}
			g.ring[g.ntokens++] = t;
		}
		*pp = t;
	}
	t->user = xstrdup(user);
	t->scope = xstrdup(scope);
	t->client = xstrdup(client);
	t->expiry = expiry;
	t->revoked = false;
	return t;
}

/* The token named by "Authorization: Bearer <token>" (scheme in any case). */
static struct token *bearer_token(const struct req *r) {
	if (!r->auth || strncasecmp(r->auth, "Bearer ", 7)) return NULL;
	const char *t = r->auth + 7 + strspn(r->auth + 7, " ");
	return *t ? *token_slot(t) : NULL;
}

/* ---------------------------------------------------------------- log & faults */

static bool credentials_ok(const char *id, const char *secret) {
	bool ok = false;
	if (!id || !secret) return false;
	pthread_mutex_lock(&g.lock);
	for (size_t i = 0; i < g.ncreds && !ok; i++)
		ok = !strcmp(g.creds[i].id, id) && !strcmp(g.creds[i].secret, secret);
	pthread_mutex_unlock(&g.lock);
	return ok;
}

/* One scope (the n bytes at s) known to the stub?  Lock held. */
static bool scope_known(const char *s, size_t n) {
	static const char *const builtin[] = { "connect:recommendations", "connect:post_checkout",
					       "connect:fulfillment" };
	for (size_t i = 0; i < NELEM(builtin); i++)
		if (strlen(builtin[i]) == n && !memcmp(builtin[i], s, n)) return true;
	for (size_t i = 0; i < g.nextra; i++)
		if (strlen(g.extra_scopes[i]) == n && !memcmp(g.extra_scopes[i], s, n)) return true;
	return false;
}

/* A known scope, or (list) a comma-separated list of known scopes. */
static bool scope_ok(const char *p, bool list) {
	bool ok = true;
	pthread_mutex_lock(&g.lock);
	for (size_t n; ok; p += n + 1) {
		n = strcspn(p, ",");
		ok = scope_known(p, n) && (list || !p[n]);
		if (!p[n]) break;
	}
	pthread_mutex_unlock(&g.lock);
	return ok;
}

static void rec_free(struct rec *e) {
	for (size_t i = 0; i < NFIELDS; i++) free(e->f[i]);
	free(e);
}

/* Lock held once the fault is shared. */
static void fault_unref(struct fault *f) {
	if (!f || --f->refs) return;
	char *s[] = { f->match_user, f->match_path, f->body, f->content_type, f->retry_after,
		      f->expires_in.raw, f->expires_in.str, f->token_type.raw, f->token_type.str,
		      f->access_token.raw, f->access_token.str };
	for (size_t i = 0; i < NELEM(s); i++) free(s[i]);
	free(f);
}

/* Finishes the request's log entry, unless a reset has discarded it. */
static void rec_finish(struct req *r, unsigned status) {
	pthread_mutex_lock(&g.lock);
	if (r->rec && r->gen == g.gen && !r->rec->done) {
		r->rec->body_bytes = r->total;
		r->rec->status = status;
		r->rec->done = true;
		clock_gettime(CLOCK_REALTIME, &r->rec->t_done);
	}
	pthread_mutex_unlock(&g.lock);
}

/* First queued fault that matches, with one use consumed.  The caller holds a
 * reference, so a reset during its delay cannot free it. */
static struct fault *fault_take(const struct req *r, const char *path, const char *user) {
	struct fault *hit = NULL;
	pthread_mutex_lock(&g.lock);
	for (size_t i = 0; i < g.nfaults && !hit; i++) {
		struct fault *f = g.faults[i];
		/* Without match_path a fault targets the token and recommendation calls. */
		if (f->match_path ? strcmp(f->match_path, path) != 0 : !(r->kind == K_TOKEN || r->kind == K_RECO))
			continue;
		if (f->match_user && (!user || strcmp(f->match_user, user))) continue;
		(hit = f)->refs++;
		if (f->count > 0 && --f->count == 0) {
			memmove(g.faults + i, g.faults + i + 1, (g.nfaults - i - 1) * sizeof *g.faults);
			g.nfaults--;
			fault_unref(f);
		}
	}
	pthread_mutex_unlock(&g.lock);
	return hit;
}

/* Sleeps until `deadline` (monotonic ns); true if shutdown, /__stub/reset or
 * the client hanging up cut it short.  The socket is peeked every 100 ms as
 * MHD cannot notice a hang-up while this connection's thread is parked here. */
static bool wait_for(struct MHD_Connection *c, const struct req *r, int64_t deadline) {
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
	int fd = ci ? ci->connect_fd : -1;
	bool cut = false;
	pthread_mutex_lock(&g.lock);
	while (!(cut = g.shutdown || g.gen != r->gen)) {
		int64_t now = mono_ns(), until = now + 100 * NS_PER_MS;
		if (now >= deadline) break;
		if (until > deadline) until = deadline;
		struct timespec ts = { .tv_sec = until / NS_PER_S, .tv_nsec = until % NS_PER_S };
		pthread_cond_timedwait(&g.cond, &g.lock, &ts);
		char b;
		ssize_t n = fd >= 0 ? recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) : 1;
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
			cut = true;
			break;
		}
	}
	pthread_mutex_unlock(&g.lock);
	return cut;
}

/* ---------------------------------------------------------------- replies */

static enum MHD_Result queue(struct MHD_Connection *c, struct req *r, unsigned status, unsigned logged,
			     struct MHD_Response *resp, const char *ctype, const char *hname, const char *hvalue) {
	if (!resp) return MHD_NO;
	if (ctype) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
	if (hname && hvalue) MHD_add_response_header(resp, hname, hvalue);
	enum MHD_Result ret = MHD_queue_response(c, status, resp);
	MHD_destroy_response(resp);
	r->answered = true;
	rec_finish(r, logged);
	return ret;
}

/* Answers with `body` (malloc'd, taken; NULL for none). */
static enum MHD_Result reply(struct MHD_Connection *c, struct req *r, unsigned status, const char *ctype,
			     char *body, const char *hname, const char *hvalue) {
	struct MHD_Response *resp =
		MHD_create_response_from_buffer(body ? strlen(body) : 0, body, MHD_RESPMEM_MUST_FREE);
	if (!resp) free(body);
	return queue(c, r, status, status, resp, ctype, hname, hvalue);
}

static enum MHD_Result reply_json(struct MHD_Connection *c, struct req *r, unsigned status, cJSON *j,
				  const char *hname, const char *hvalue) {
	char *s = print_json(j);
	cJSON_Delete(j);
	return reply(c, r, status, "application/json", s, hname, hvalue);
}

static cJSON *error_json(const char *error, const char *desc) {
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "error", error);
	cJSON_AddStringToObject(j, "error_description", desc);
	return j;
}

static enum MHD_Result reply_error(struct MHD_Connection *c, struct req *r, unsigned status, const char *error,
				   const char *desc) {
	return reply_json(c, r, status, error_json(error, desc), NULL, NULL);
}

static enum MHD_Result reply_ok(struct MHD_Connection *c, struct req *r, cJSON *j) {
	return reply_json(c, r, 200, j, NULL, NULL);
}

/* Closes the connection without a word. */
static enum MHD_Result drop(struct req *r) {
	r->answered = true;
	rec_finish(r, 0);
	return MHD_NO;
}

static void add_member(cJSON *j, const char *key, const struct override *ov, cJSON *dflt) {
	if (ov && ov->mode != OV_KEEP) cJSON_Delete(dflt);
	if (ov && ov->mode == OV_RAW) cJSON_AddRawToObject(j, key, ov->raw);
	if (!ov || ov->mode == OV_KEEP) cJSON_AddItemToObject(j, key, dflt);
}

/* The success answer, member order as in Instacart's documentation. */
static cJSON *token_answer(const char *tok, long long expires_in, const char *scope, const struct fault *f) {
	cJSON *j = cJSON_CreateObject();
	add_member(j, "access_token", f ? &f->access_token : NULL, cJSON_CreateString(tok));
	add_member(j, "token_type", f ? &f->token_type : NULL, cJSON_CreateString("Bearer"));
	add_member(j, "expires_in", f ? &f->expires_in : NULL, cJSON_CreateNumber((double)expires_in));
	if (scope) cJSON_AddStringToObject(j, "scope", scope);
	cJSON_AddNumberToObject(j, "created_at", (double)time(NULL));
	return j;
}

struct trunc { char *body; size_t half; };

static ssize_t trunc_read(void *cls, uint64_t pos, char *buf, size_t max) {
	struct trunc *t = cls;
	if (pos >= t->half) return MHD_CONTENT_READER_END_WITH_ERROR;  /* MHD closes mid-body */
	size_t n = t->half - (size_t)pos < max ? t->half - (size_t)pos : max;
	memcpy(buf, t->body + pos, n);
	return (ssize_t)n;
}

static void trunc_free(void *cls) {
	free(((struct trunc *)cls)->body);
	free(cls);
}

/* ---------------------------------------------------------------- API endpoints */

/* Checks 1-3, shared by token and revoke: query credentials, body, client.
 * False once an error answer is queued (in *ret). */
static bool client_checks(struct MHD_Connection *c, struct req *r, enum MHD_Result *ret) {
	const char *q = strchr(r->uri, '?');
	if (q && (query_mentions(q + 1, "client_id") || query_mentions(q + 1, "client_secret")))
		*ret = reply_error(c, r, 403, "query_params_forbidden",
				   "client credentials must not be sent as query parameters");
	else if (!ctype_is_json(r->ctype))
		*ret = reply_error(c, r, 400, "invalid_request", "Content-Type must be application/json");
	else if (r->too_large)
		*ret = reply_error(c, r, 413, "request_too_large", "request body exceeds 64 KiB");
	else if (!cJSON_IsObject(r->json))
		*ret = reply_error(c, r, 400, "invalid_request", "request body must be a JSON object");
	else if (!credentials_ok(jstr(r->json, "client_id"), jstr(r->json, "client_secret")))
		*ret = reply_error(c, r, 401, "invalid_client", "client authentication failed");
	else
		return true;
	return false;
}

static enum MHD_Result token_endpoint(struct MHD_Connection *c, struct req *r, const struct fault *f) {
	enum MHD_Result ret;
	if (!client_checks(c, r, &ret)) return ret;
	const char *grant = jstr(r->json, "grant_type"), *client = jstr(r->json, "client_id");
	const cJSON *sv = cJSON_GetObjectItemCaseSensitive(r->json, "scope");
	const char *scope = cJSON_IsString(sv) ? sv->valuestring : NULL;
	if (grant && !strcmp(grant, "fulfillment_user_assertion")) {
		if (!r->user_id)
			return reply_error(c, r, 400, "invalid_grant",
					   "assertion must be Base64 of {\"user_id\": \"...\"}");
		if (!scope || !scope_ok(scope, false))
			return reply_error(c, r, 400, "invalid_scope", "scope is missing or unknown");
	} else if (grant && !strcmp(grant, "client_credentials")) {
		if (sv && (!scope || !scope_ok(scope, true)))
			return reply_error(c, r, 400, "invalid_scope", "unknown scope");
	} else if (grant && !strcmp(grant, "authorization_code")) {
		return reply_error(c, r, 400, "invalid_grant", "authorization_code is not supported by the stub");
	} else {
		return reply_error(c, r, 400, "unsupported_grant_type", "unsupported grant_type");
	}
	char tok[44];
	pthread_mutex_lock(&g.lock);
	do random_token(tok);
	while (*token_slot(tok));
	long long exp = g.expires_in;
	/* An overridden access_token is what the client will present later. */
	const struct override *ov = f ? &f->access_token : NULL;
	const char *stored = ov && ov->mode == OV_RAW && ov->str && *ov->str ? ov->str : tok;
	token_put(stored, r->user_id, scope, client, mono_ns() + exp * NS_PER_S);
	if (r->rec && r->gen == g.gen) r->rec->f[F_TOKEN] = xstrndup(stored, FIELD_MAX);
	if (r->gen == g.gen) g.mints++;
	pthread_mutex_unlock(&g.lock);
	return reply_ok(c, r, token_answer(tok, exp, scope, f));
}

static enum MHD_Result revoke_endpoint(struct MHD_Connection *c, struct req *r) {
	enum MHD_Result ret;
	if (!client_checks(c, r, &ret)) return ret;
	const char *tok = jstr(r->json, "token"), *client = jstr(r->json, "client_id");
	if (!tok || !*tok) return reply_error(c, r, 400, "invalid_request", "token is required");
	pthread_mutex_lock(&g.lock);
	struct token *t = *token_slot(tok);
	if (r->rec && r->gen == g.gen) r->rec->f[F_TOKEN] = xstrndup(tok, FIELD_MAX);
	/* RFC 7009: only the issuing client may revoke; an unknown token is a quiet success. */
	bool foreign = t && t->client && strcmp(t->client, client);
	if (!foreign) {
		if (!t) t = token_put(tok, NULL, NULL, NULL, 0);
		if ((!t->revoked || t->listed_gen != g.gen) && g.nrevoked < REVOKED_CAP) {
			g.revoked = xrealloc(g.revoked, (g.nrevoked + 1) * sizeof *g.revoked);
			g.revoked[g.nrevoked++] = xstrdup(tok);
			t->listed_gen = g.gen;
		}
		t->revoked = true;
		if (r->gen == g.gen) g.revocations++;
	}
	pthread_mutex_unlock(&g.lock);
	if (foreign) return reply_error(c, r, 403, "unauthorized_client", "token was issued to another client");
	return reply(c, r, 200, NULL, NULL, NULL, NULL);
}

static enum MHD_Result reco_endpoint(struct MHD_Connection *c, struct req *r, const char *path) {
	char *user = NULL;
	pthread_mutex_lock(&g.lock);
	struct token *t = bearer_token(r);
	bool ok = t && !t->revoked && t->expiry > mono_ns();
	if (ok) user = xstrdup(t->user);
	pthread_mutex_unlock(&g.lock);
	if (!ok)
		return reply_json(c, r, 401, error_json("invalid_token", "missing, unknown, revoked or expired token"),
				  "WWW-Authenticate", "Bearer error=\"invalid_token\"");
	if (r->too_large) {
		free(user);
		return reply_error(c, r, 413, "request_too_large", "request body exceeds 64 KiB");
	}
	cJSON *j = cJSON_CreateObject();
	cJSON_AddTrueToObject(j, "ok");
	cJSON_AddStringToObject(j, "path", path);
	cJSON_AddItemToObject(j, "user_id", user ? cJSON_CreateString(user) : cJSON_CreateNull());
	cJSON_AddItemToObject(j, "body", r->json ? r->json : cJSON_CreateNull());
	r->json = NULL;  /* now owned by j */
	free(user);
	return reply_ok(c, r, j);
}

static enum MHD_Result serve(struct MHD_Connection *c, struct req *r, const char *url, const struct fault *f) {
	switch (r->kind) {
	case K_TOKEN: return token_endpoint(c, r, f);
	case K_REVOKE: return revoke_endpoint(c, r);
	case K_RECO: return reco_endpoint(c, r, url);
	default: return reply_error(c, r, 404, "not_found", "no such endpoint");
	}
}

static const char *status_error(unsigned s) {
	static const struct { unsigned status; const char *error; } map[] = {
		{ 400, "invalid_request" }, { 401, "invalid_client" }, { 403, "forbidden" }, { 404, "not_found" },
		{ 408, "request_timeout" }, { 429, "rate_limited" }, { 500, "server_error" },
		{ 502, "bad_gateway" }, { 503, "temporarily_unavailable" }, { 504, "gateway_timeout" },
	};
	for (size_t i = 0; i < NELEM(map); i++)
		if (map[i].status == s) return map[i].error;
	return "error";
}

static enum MHD_Result apply_fault(struct MHD_Connection *c, struct req *r, const char *url, struct fault *f) {
	if (f->delay_ms > 0 && wait_for(c, r, mono_ns() + f->delay_ms * NS_PER_MS)) return drop(r);
	const char *ct = f->content_type ? f->content_type : "application/json";
	switch (f->action) {
	case A_OK: return serve(c, r, url, f);
	case A_STATUS: {
		char *body, desc[64];
		if (f->body || f->status < 400) {
			body = xstrdup(f->body ? f->body : "{}");
		} else {
			snprintf(desc, sizeof desc, "injected fault: HTTP %u", f->status);
			cJSON *e = error_json(status_error(f->status), desc);
			body = print_json(e);
			cJSON_Delete(e);
		}
		return reply(c, r, f->status, ct, body, f->retry_after ? "Retry-After" : NULL, f->retry_after);
	}
	case A_HANG: wait_for(c, r, mono_ns() + WAIT_MAX_MS * NS_PER_MS); return drop(r);
	case A_DROP: return drop(r);
	case A_MALFORMED: return reply(c, r, 200, ct, xstrdup(MALFORMED_BODY), NULL, NULL);
	case A_TRUNCATE: {
		/* Full length announced, half sent, then the connection is closed. */
		char tok[44];
		random_token(tok);
		pthread_mutex_lock(&g.lock);
		long long exp = g.expires_in;
		pthread_mutex_unlock(&g.lock);
		cJSON *full = token_answer(tok, exp, cJSON_IsObject(r->json) ? jstr(r->json, "scope") : NULL, NULL);
		struct trunc *t = xcalloc(sizeof *t);
		t->body = print_json(full);
		cJSON_Delete(full);
		t->half = strlen(t->body) / 2;
		struct MHD_Response *resp =
			MHD_create_response_from_callback(strlen(t->body), 1024, trunc_read, t, trunc_free);
		if (!resp) trunc_free(t);
		return queue(c, r, 200, 0, resp, ct, NULL, NULL);
	}
	}
	return drop(r);
}

/* A whole request to a non-control path: log what it carries, then apply a
 * fault or the strict endpoint. */
static enum MHD_Result on_api(struct MHD_Connection *c, struct req *r, const char *url, const char *method) {
	if (r->kind != K_OTHER && strcmp(method, "POST"))
		return reply_json(c, r, 405, error_json("method_not_allowed", "only POST is allowed"), "Allow",
				  "POST");
	r->json = parse_exact(r->body, r->len);
	const char *grant = NULL, *scope = NULL, *client = NULL, *assertion;
	char *auth_user = NULL;
	if (cJSON_IsObject(r->json) && r->kind != K_RECO) {
		grant = jstr(r->json, "grant_type");
		scope = jstr(r->json, "scope");
		client = jstr(r->json, "client_id");
		if ((assertion = jstr(r->json, "assertion"))) r->user_id = assertion_user(assertion);
	}
	pthread_mutex_lock(&g.lock);
	if (r->kind == K_RECO) {
		struct token *t = bearer_token(r);
		auth_user = t ? xstrdup(t->user) : NULL;
	}
	if (r->rec && r->gen == g.gen) {
		const char *v[] = { [F_GRANT] = grant, [F_SCOPE] = scope, [F_USER] = r->user_id,
				    [F_CLIENT] = client, [F_AUTH_USER] = auth_user };
		for (size_t i = F_GRANT; i <= F_AUTH_USER; i++) r->rec->f[i] = xstrndup(v[i], FIELD_MAX);
		r->rec->body_bytes = r->total;
	}
	pthread_mutex_unlock(&g.lock);
	/* match_user means the assertion's user, or on recommendation calls the token's. */
	struct fault *f = fault_take(r, url, r->kind == K_RECO ? auth_user : r->user_id);
	free(auth_user);
	enum MHD_Result ret = f ? apply_fault(c, r, url, f) : serve(c, r, url, NULL);
	pthread_mutex_lock(&g.lock);
	fault_unref(f);
	pthread_mutex_unlock(&g.lock);
	return ret;
}

/* ---------------------------------------------------------------- control API */

static bool take_string(char **dst, const cJSON *v, bool header) {
	if (!cJSON_IsString(v) || (header && strpbrk(v->valuestring, "\r\n"))) return false;
	free(*dst);
	*dst = xstrdup(v->valuestring);
	return true;
}

/* null omits the member; any other JSON value replaces it verbatim. */
static void take_override(struct override *ov, const cJSON *v, const char *raw) {
	free(ov->raw);
	free(ov->str);
	ov->mode = cJSON_IsNull(v) ? OV_OMIT : OV_RAW;
	ov->raw = ov->mode == OV_OMIT ? NULL : raw ? xstrdup(raw) : print_json(v);
	ov->str = cJSON_IsString(v) && !raw ? xstrdup(v->valuestring) : NULL;
}

static struct fault *fault_parse(const cJSON *o, const char **err) {
	static const struct { const char *name; size_t off; bool header; } strs[] = {
		{ "match_user", offsetof(struct fault, match_user), false },
		{ "match_path", offsetof(struct fault, match_path), false },
		{ "body", offsetof(struct fault, body), false },
		{ "content_type", offsetof(struct fault, content_type), true },
		{ "retry_after", offsetof(struct fault, retry_after), true },
	};
	if (!cJSON_IsObject(o)) {
		*err = "a fault must be a JSON object";
		return NULL;
	}
	struct fault *f = xcalloc(sizeof *f);
	f->refs = 1;
	f->count = -1;
	f->action = (enum action)-1;
	long long n;
	const cJSON *m;
	*err = NULL;
	cJSON_ArrayForEach(m, o) {
		const char *k = m->string;
		size_t i;
		for (i = 0; i < NELEM(strs) && strcmp(k, strs[i].name); i++) {}
		if (i < NELEM(strs)) {
			if (!take_string((char **)((char *)f + strs[i].off), m, strs[i].header))
				*err = "match_user, match_path, body, content_type, retry_after: one-line strings";
		} else if (!strcmp(k, "count")) {
			if (json_int(m, -1, LLONG_MAX / 2, &n)) f->count = n; else *err = "count must be an integer >= -1";
		} else if (!strcmp(k, "delay_ms")) {
			if (json_int(m, 0, WAIT_MAX_MS, &n)) f->delay_ms = n; else *err = "delay_ms must be 0..300000";
		} else if (!strcmp(k, "status")) {
			if (json_int(m, 100, 599, &n)) f->status = (unsigned)n; else *err = "status must be 100..599";
		} else if (!strcmp(k, "action")) {
			const char *a = cJSON_IsString(m) ? m->valuestring : "";
			for (i = 0; i < NELEM(action_names) && strcmp(a, action_names[i]); i++) {}
			f->action = (enum action)i;
			if (i == NELEM(action_names)) *err = "unknown action";
		} else if (!strcmp(k, "expires_in")) {
			take_override(&f->expires_in, m, NULL);
		} else if (!strcmp(k, "expires_in_raw")) {  /* verbatim JSON text, e.g. 1e999 */
			if (cJSON_IsString(m) && *m->valuestring) take_override(&f->expires_in, m, m->valuestring);
			else *err = "expires_in_raw must be a non-empty string";
		} else if (!strcmp(k, "token_type")) {
			take_override(&f->token_type, m, NULL);
		} else if (!strcmp(k, "access_token")) {
			take_override(&f->access_token, m, NULL);
		} else {
			*err = "unknown fault member";
		}
		if (*err) break;
	}
	if (!*err && (int)f->action < 0) {  /* a bare status implies action "status" */
		if (f->status) f->action = A_STATUS;
		else *err = "action is required";
	}
	if (!*err && f->action == A_STATUS && !f->status) *err = "action \"status\" needs a status";
	if (*err) fault_unref(f);
	return *err ? NULL : f;
}

static enum MHD_Result ctl_faults(struct MHD_Connection *c, struct req *r) {
	cJSON *j = parse_exact(r->body, r->len);
	size_t n = cJSON_IsArray(j) ? (size_t)cJSON_GetArraySize(j) : 1, queued;
	struct fault **fs = xcalloc(n * sizeof *fs);
	const char *err = j ? NULL : "body must be a fault object or an array of them";
	const cJSON *item = cJSON_IsArray(j) ? j->child : j;
	for (size_t i = 0; i < n && !err; i++, item = item->next) fs[i] = fault_parse(item, &err);
	cJSON_Delete(j);
	pthread_mutex_lock(&g.lock);
	if (!err && g.nfaults + n > FAULT_CAP) err = "too many queued faults";
	if (!err) g.faults = xrealloc(g.faults, (g.nfaults + n) * sizeof *g.faults);
	for (size_t i = 0; i < n; i++)
		if (!err && fs[i]->count != 0) g.faults[g.nfaults++] = fs[i];
		else fault_unref(fs[i]);
	queued = g.nfaults;
	pthread_mutex_unlock(&g.lock);
	free(fs);
	if (err) return reply_error(c, r, 400, "bad_fault", err);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddTrueToObject(o, "ok");
	cJSON_AddNumberToObject(o, "queued", (double)queued);
	return reply_ok(c, r, o);
}

static cJSON *time_json(struct timespec t) {
	char b[48];  /* µs precision; cJSON's %.15g would round it away */
	snprintf(b, sizeof b, "%lld.%06ld", (long long)t.tv_sec, t.tv_nsec / 1000);
	return cJSON_CreateRaw(b);
}

static enum MHD_Result ctl_requests(struct MHD_Connection *c, struct req *r) {
	cJSON *o = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(o, "requests");
	pthread_mutex_lock(&g.lock);
	for (size_t i = 0; i < g.nlog; i++) {
		const struct rec *e = g.log[i];
		cJSON *x = cJSON_CreateObject();
		cJSON_AddNumberToObject(x, "seq", (double)e->seq);
		for (size_t k = 0; k < NFIELDS; k++)
			cJSON_AddItemToObject(x, field_names[k], e->f[k] ? cJSON_CreateString(e->f[k]) : cJSON_CreateNull());
		cJSON_AddNumberToObject(x, "body_bytes", (double)e->body_bytes);
		cJSON_AddNumberToObject(x, "status", e->status);
		cJSON_AddItemToObject(x, "t_recv", time_json(e->t_recv));
		cJSON_AddItemToObject(x, "t_done", e->done ? time_json(e->t_done) : cJSON_CreateNull());
		cJSON_AddItemToArray(a, x);
	}
	pthread_mutex_unlock(&g.lock);
	return reply_ok(c, r, o);
}

static enum MHD_Result ctl_stats(struct MHD_Connection *c, struct req *r) {
	cJSON *o = cJSON_CreateObject();
	pthread_mutex_lock(&g.lock);
	cJSON_AddNumberToObject(o, "token_requests", (double)g.token_requests);
	cJSON_AddNumberToObject(o, "mints", (double)g.mints);
	cJSON_AddNumberToObject(o, "revocations", (double)g.revocations);
	cJSON *a = cJSON_AddArrayToObject(o, "revoked_tokens");
	for (size_t i = 0; i < g.nrevoked; i++) cJSON_AddItemToArray(a, cJSON_CreateString(g.revoked[i]));
	pthread_mutex_unlock(&g.lock);
	return reply_ok(c, r, o);
}

static void free_strv(char **v, size_t n) {
	for (size_t i = 0; i < n; i++) free(v[i]);
	free(v);
}

static enum MHD_Result ctl_reset(struct MHD_Connection *c, struct req *r) {
	pthread_mutex_lock(&g.lock);
	for (size_t i = 0; i < g.nlog; i++) rec_free(g.log[i]);
	for (size_t i = 0; i < g.nfaults; i++) fault_unref(g.faults[i]);
	free_strv(g.revoked, g.nrevoked);
	g.revoked = NULL;
	g.nlog = g.nfaults = g.nrevoked = 0;
	g.token_requests = g.mints = g.revocations = 0;
	g.gen++;  /* in-flight requests go stale: their waits end, their log entries are gone */
	pthread_cond_broadcast(&g.cond);
	pthread_mutex_unlock(&g.lock);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddTrueToObject(o, "ok");
	return reply_ok(c, r, o);
}

static void free_creds(struct cred *cr, size_t n) {
	for (size_t i = 0; i < n; i++) {
		free(cr[i].id);
		free(cr[i].secret);
	}
	free(cr);
}

/* Replaces the settings named in the body, all or nothing. */
static enum MHD_Result ctl_config(struct MHD_Connection *c, struct req *r) {
	cJSON *j = parse_exact(r->body, r->len);
	const cJSON *m, *e, *members = cJSON_IsObject(j) ? j : NULL;
	const char *err = members ? NULL : "body must be a JSON object";
	long long exp = 0;
	bool set_exp = false;
	struct cred *cr = NULL;
	char **sc = NULL;
	size_t ncr = 0, nsc = 0;
	cJSON_ArrayForEach(m, members) {
		if (!strcmp(m->string, "expires_in")) {
			if (!(set_exp = json_int(m, -EXPIRES_MAX, EXPIRES_MAX, &exp)))
				err = "expires_in must be an integer within +-1e9";
		} else if (!strcmp(m->string, "credentials") && cJSON_IsArray(m) && !cr) {
			cr = xcalloc(((size_t)cJSON_GetArraySize(m) + 1) * sizeof *cr);
			cJSON_ArrayForEach(e, m) {
				const char *id = jstr(e, "client_id"), *secret = jstr(e, "client_secret");
				if (!id || !*id || !secret || !*secret) {
					err = "credentials need non-empty client_id and client_secret strings";
					break;
				}
				cr[ncr].id = xstrdup(id);
				cr[ncr++].secret = xstrdup(secret);
			}
		} else if (!strcmp(m->string, "extra_scopes") && cJSON_IsArray(m) && !sc) {
			sc = xcalloc(((size_t)cJSON_GetArraySize(m) + 1) * sizeof *sc);
			cJSON_ArrayForEach(e, m) {
				if (!cJSON_IsString(e) || !*e->valuestring || strchr(e->valuestring, ',')) {
					err = "extra_scopes must be non-empty strings without commas";
					break;
				}
				sc[nsc++] = xstrdup(e->valuestring);
			}
		} else {
			err = "unknown or malformed config member";
		}
		if (err) break;
	}
	cJSON_Delete(j);
	if (err) {
		free_creds(cr, ncr);
		free_strv(sc, nsc);
		return reply_error(c, r, 400, "bad_config", err);
	}
	cJSON *o = cJSON_CreateObject();
	pthread_mutex_lock(&g.lock);
	if (set_exp) g.expires_in = exp;
	if (cr) {
		free_creds(g.creds, g.ncreds);
		g.creds = cr;
		g.ncreds = ncr;
	}
	if (sc) {
		free_strv(g.extra_scopes, g.nextra);
		g.extra_scopes = sc;
		g.nextra = nsc;
	}
	cJSON_AddNumberToObject(o, "expires_in", (double)g.expires_in);
	cJSON *ids = cJSON_AddArrayToObject(o, "client_ids");  /* never echo secrets */
	for (size_t i = 0; i < g.ncreds; i++) cJSON_AddItemToArray(ids, cJSON_CreateString(g.creds[i].id));
	cJSON *xs = cJSON_AddArrayToObject(o, "extra_scopes");
	for (size_t i = 0; i < g.nextra; i++) cJSON_AddItemToArray(xs, cJSON_CreateString(g.extra_scopes[i]));
	pthread_mutex_unlock(&g.lock);
	return reply_ok(c, r, o);
}

static enum MHD_Result on_control(struct MHD_Connection *c, struct req *r, const char *url, const char *method) {
	static const struct {
		const char *path, *method;
		enum MHD_Result (*fn)(struct MHD_Connection *, struct req *);
	} routes[] = {
		{ "/__stub/requests", "GET", ctl_requests }, { "/__stub/stats", "GET", ctl_stats },
		{ "/__stub/faults", "POST", ctl_faults },    { "/__stub/reset", "POST", ctl_reset },
		{ "/__stub/config", "POST", ctl_config },
	};
	for (size_t i = 0; i < NELEM(routes); i++) {
		if (strcmp(url, routes[i].path)) continue;
		if (strcmp(method, routes[i].method))
			return reply_json(c, r, 405, error_json("method_not_allowed", "wrong method"), "Allow",
					  routes[i].method);
		if (r->too_large) return reply_error(c, r, 413, "request_too_large", "control body exceeds 1 MiB");
		return routes[i].fn(c, r);
	}
	return reply_error(c, r, 404, "not_found", "no such control endpoint");
}

/* ---------------------------------------------------------------- MHD glue */

/* MHD's own complaints, minus the one every intentional drop or hang causes. */
static void mhd_log(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
static void mhd_log(void *cls, const char *fmt, va_list ap) {
	char msg[512];
	(void)cls;
	vsnprintf(msg, sizeof msg, fmt, ap);
	if (!strcasestr(msg, "application reported")) fprintf(stderr, "instacart-stub: libmicrohttpd: %s", msg);
}

/* Runs before header parsing, with the raw target: keeps the query verbatim. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c) {
	(void)cls;
	(void)c;
	struct req *r = xcalloc(sizeof *r);
	r->uri = xstrdup(uri);
	clock_gettime(CLOCK_REALTIME, &r->t_recv);
	return r;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
	(void)cls;
	(void)c;
	(void)toe;
	struct req *r = *con_cls;
	if (!r) return;
	rec_finish(r, 0);  /* no-op unless the client vanished before an answer */
	char *s[] = { r->uri, r->ctype, r->auth, r->body, r->user_id };
	for (size_t i = 0; i < NELEM(s); i++) free(s[i]);
	cJSON_Delete(r->json);
	free(r);
	*con_cls = NULL;
}

/* Headers are in: classify, log the arrival, refuse a declared oversized body
 * at once (before the client sends it). */
static enum MHD_Result on_headers(struct MHD_Connection *c, struct req *r, const char *url, const char *method) {
	r->started = true;
	r->kind = classify(url);
	r->limit = r->kind == K_CONTROL ? CONTROL_BODY_MAX : API_BODY_MAX;
	r->ctype = xstrdup(MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE));
	r->auth = xstrdup(MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION));
	const char *q = strchr(r->uri, '?'), *cls;
	long long cl;
	if ((cls = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH)) &&
	    parse_ll(cls, 0, LLONG_MAX, &cl) && (unsigned long long)cl > r->limit)
		r->total = (unsigned long long)cl;
	pthread_mutex_lock(&g.lock);
	r->gen = g.gen;
	if (r->kind == K_TOKEN) g.token_requests++;
	if (r->kind != K_CONTROL && g.nlog < LOG_CAP) {
		struct rec *e = r->rec = xcalloc(sizeof *e);
		e->seq = ++g.seq;
		e->f[F_METHOD] = xstrndup(method, FIELD_MAX);
		e->f[F_PATH] = xstrndup(url, FIELD_MAX);
		/* The log never holds a secret, even one wrongly put in the URL. */
		e->f[F_QUERY] = !q ? NULL : query_mentions(q + 1, "secret") ? xstrdup("[redacted]")
									  : xstrndup(q + 1, FIELD_MAX);
		e->f[F_CTYPE] = xstrndup(r->ctype, FIELD_MAX);
		e->t_recv = r->t_recv;
		if (g.nlog == g.log_alloc) {
			g.log_alloc = g.log_alloc ? g.log_alloc * 2 : 1024;
			g.log = xrealloc(g.log, g.log_alloc * sizeof *g.log);
		}
		g.log[g.nlog++] = e;
	}
	pthread_mutex_unlock(&g.lock);
	if (r->total) return reply_error(c, r, 413, "request_too_large", "request body too large");
	return MHD_YES;
}

static void body_append(struct req *r, const char *data, size_t n) {
	r->total += n;
	if (r->too_large) return;
	if (r->len + n > r->limit) {  /* keep draining, remember only the verdict */
		r->too_large = true;
		free(r->body);
		r->body = NULL;
		r->len = 0;
		return;
	}
	r->body = xrealloc(r->body, r->len + n + 1);
	memcpy(r->body + r->len, data, n);
	r->len += n;
	r->body[r->len] = '\0';
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
				  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
	(void)cls;
	(void)version;
	struct req *r = *con_cls;
	if (!r) *con_cls = r = on_uri(NULL, url, c);  /* defensive: on_uri normally ran */
	if (!r->started) return on_headers(c, r, url, method);
	if (*upload_size) {
		if (!r->answered) body_append(r, upload, *upload_size);
		*upload_size = 0;
		return MHD_YES;
	}
	if (r->answered) return MHD_YES;
	return r->kind == K_CONTROL ? on_control(c, r, url, method) : on_api(c, r, url, method);
}

/* ---------------------------------------------------------------- startup */

static char *read_secret(const char *path) {
	FILE *f = fopen(path, "rb");
	if (!f) return NULL;
	char *buf = xrealloc(NULL, 65537);
	size_t n = fread(buf, 1, 65536, f);
	bool bad = ferror(f) || fgetc(f) != EOF;
	fclose(f);
	while (n && isspace((unsigned char)buf[n - 1])) n--;
	buf[n] = '\0';
	if (!bad && n && strlen(buf) == n) return buf;
	free(buf);
	return NULL;
}

/* Written to a temporary name, then renamed: readers never see half a number. */
static bool write_port_file(const char *path, unsigned port) {
	size_t n = strlen(path) + 32;
	char *tmp = xrealloc(NULL, n);
	snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
	FILE *f = fopen(tmp, "w");
	bool ok = f && fprintf(f, "%u\n", port) > 0;
	ok = f && !fclose(f) && ok && !rename(tmp, path);
	if (!ok) unlink(tmp);
	free(tmp);
	return ok;
}

static int usage(FILE *out, const char *msg) {
	fprintf(out, "instacart-stub: %s\nusage: instacart-stub --listen 127.0.0.1:PORT "
		"[--client-id ID --client-secret-file PATH]... [--expires-in N] [--port-file PATH]\n", msg);
	return out == stdout ? 0 : 2;
}

/* Everything but the cleanup, so that every exit path of main frees the state. */
static int run(int argc, char **argv) {
	const char *listen = NULL, *port_file = NULL;
	size_t nids = 0, nfiles = 0;
	/* The i-th --client-id pairs with the i-th --client-secret-file. */
	g.creds = xcalloc(((size_t)argc / 2 + 1) * sizeof *g.creds);
	g.ncreds = (size_t)argc / 2 + 1;  /* for the cleanup, until parsing is done */
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[++i] : NULL;
		if (!strcmp(a, "--help") || !strcmp(a, "-h"))
			return usage(stdout, "a strict local stand-in for Instacart's POST /v2/oauth/token");
		if (!v) return usage(stderr, "option needs a value");
		if (!strcmp(a, "--listen")) {
			listen = v;
		} else if (!strcmp(a, "--port-file")) {
			port_file = v;
		} else if (!strcmp(a, "--client-id") && *v) {
			g.creds[nids++].id = xstrdup(v);
		} else if (!strcmp(a, "--client-secret-file")) {
			if (!(g.creds[nfiles++].secret = read_secret(v))) {
				fprintf(stderr, "instacart-stub: cannot read a non-empty secret from %s\n", v);
				return 2;
			}
		} else if (strcmp(a, "--expires-in")) {
			return usage(stderr, "unknown option or empty value");
		} else if (!parse_ll(v, -EXPIRES_MAX, EXPIRES_MAX, &g.expires_in)) {
			return usage(stderr, "--expires-in needs an integer within +-1e9");
		}
	}
	if (nids != nfiles) return usage(stderr, "--client-id and --client-secret-file must come in pairs");
	if (!(g.ncreds = nids)) {  /* the documented default, for tests that do not care */
		g.creds[0] = (struct cred){ xstrdup("test-client"), xstrdup("test-secret") };
		g.ncreds = 1;
	}
	struct sockaddr_in sa = { .sin_family = AF_INET };
	const char *colon = listen ? strrchr(listen, ':') : NULL;
	long long port;
	char host[64];
	if (!colon || (size_t)(colon - listen) >= sizeof host) return usage(stderr, "--listen needs 127.0.0.1:PORT");
	snprintf(host, sizeof host, "%.*s", (int)(colon - listen), listen);
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1 || !parse_ll(colon + 1, 0, 65535, &port))
		return usage(stderr, "--listen needs an IPv4 address and a port 0..65535");
	sa.sin_port = htons((uint16_t)port);

	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&g.cond, &ca);
	pthread_condattr_destroy(&ca);
	struct rlimit rl;  /* ~4000 connections need as many descriptors */
	if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	/* main takes SIGTERM/SIGINT synchronously; the threads MHD starts inherit the block. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	/* MHD_USE_POLL: select() would fail on descriptors beyond FD_SETSIZE. */
	struct MHD_Daemon *d = MHD_start_daemon(
		MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ERROR_LOG,
		0, NULL, NULL, on_request, NULL, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
		MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
		MHD_OPTION_CONNECTION_LIMIT, (unsigned int)4000, MHD_OPTION_THREAD_STACK_SIZE, (size_t)2 << 20,
		MHD_OPTION_URI_LOG_CALLBACK, on_uri, NULL, MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
		MHD_OPTION_END);
	if (!d) {
		fprintf(stderr, "instacart-stub: cannot listen on %s\n", listen);
		return 1;
	}
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_LISTEN_FD);
	struct sockaddr_in bound;
	socklen_t blen = sizeof bound;
	bool up = di && !getsockname(di->listen_fd, (struct sockaddr *)&bound, &blen);
	if (up && port_file && !write_port_file(port_file, ntohs(bound.sin_port))) {
		fprintf(stderr, "instacart-stub: cannot write %s\n", port_file);
		up = false;
	}
	if (up) {
		printf("listening on %s:%u\n", host, ntohs(bound.sin_port));
		fflush(stdout);
		for (int sig; sigwait(&sigs, &sig);) {}
	}
	pthread_mutex_lock(&g.lock);
	g.shutdown = true;  /* ends every delay and hang */
	pthread_cond_broadcast(&g.cond);
	pthread_mutex_unlock(&g.lock);
	MHD_stop_daemon(d);
	return up ? 0 : 1;
}

int main(int argc, char **argv) {
	int rc = run(argc, argv);
	for (size_t i = 0; i < g.nlog; i++) rec_free(g.log[i]);
	for (size_t i = 0; i < g.nfaults; i++) fault_unref(g.faults[i]);
	for (size_t i = 0; i < g.ntokens; i++) {
		token_clear(g.ring[i]);
		free(g.ring[i]->tok);
		free(g.ring[i]);
	}
	free(g.log);
	free(g.faults);
	free(g.ring);
	free_strv(g.revoked, g.nrevoked);
	free_creds(g.creds, g.ncreds);
	free_strv(g.extra_scopes, g.nextra);
	return rc;
}
