/* Unit tests of src/metrics.c: the Prometheus text exposition (0.0.4) of
 * fixed counters. The text is read back by a parser of the format written
 * here: every family has one HELP and one TYPE before its samples, its
 * samples are together, names and label names are what Prometheus accepts,
 * label values are escaped, counters end in _total, no series repeats, and
 * a histogram's buckets are cumulative with +Inf equal to _count. Where
 * Debian's promtool is installed its own linter reads the text as well. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sys/wait.h>

#include "metrics.h"
#include "unit.h"

/* ---- fixed counters ---- */

static struct api_stats as;
static struct cache_stats cs;
static struct upstream_stats us;
static struct revoke_stats rs;
static struct shared_stats ss;

#define START_UNIX 1700000000

/* The routes' names come with the counters (the route table names them). */
static const char *api_route_name(unsigned r) {
    static char names[API_ROUTES][16];

    snprintf(names[r], sizeof(names[r]), "/route%u", r);
    return names[r];
}

/* Distinct values, so a number shown under the wrong name is seen. */
static void fill(void) {
    memset(&as, 0, sizeof(as));
    for (unsigned r = 0; r < API_ROUTES; r++)
        as.route_names[r] = api_route_name(r);
    as.by_route[0][200 - API_STATUS_FIRST] = 101;
    as.by_route[0][503 - API_STATUS_FIRST] = 102;
    as.by_route[API_ROUTES - 1][404 - API_STATUS_FIRST] = 103;
    as.by_route[1][599 - API_STATUS_FIRST] = 104;
    as.by_route[2][100 - API_STATUS_FIRST] = 105;
    as.by_route[3][429 - API_STATUS_FIRST] = 1; /* one is shown, not only many */
    as.waiting = 3;
    cs = (struct cache_stats){ .hits = 201, .misses = 202, .coalesced = 203, .refreshes = 204,
                               .evictions = 205, .expirations = 206, .entries = 207, .fetching = 208 };
    memset(&us, 0, sizeof(us));
    us.requests = 301;
    us.mints_ok = 302;
    us.mints_rejected = 303;
    us.mints_failed = 304;
    us.mints_timeout = 305;
    us.revocations_ok = 306;
    us.revocations_failed = 307;
    us.retries = 308;
    us.connections = 309;
    us.latency_count = 0;
    for (int i = 0; i < UPSTREAM_LATENCY_BUCKETS; i++) {
        us.latency_buckets[i] = (unsigned long long)(i % 3); /* some empty buckets too */
        us.latency_count += us.latency_buckets[i];
    }
    us.latency_count += 4; /* slower than the last bound: only in +Inf */
    us.latency_sum_s = 12.5;
    us.in_flight = 2;
    us.circuit = CIRCUIT_HALF_OPEN;
    us.credentials_rejected = true;
    us.rate_limited = false;
    rs = (struct revoke_stats){ .revoked = 401, .retried = 402, .expired = 403, .refused = 404, .pending = 405 };
    memset(&ss, 0, sizeof(ss));
    ss.up = true;
    ss.breaker = BREAKER_OPEN;
    for (int i = 0; i < SHARED_OP_COUNT; i++) {
        ss.ops[i][0] = 500 + (unsigned long long)i;
        ss.ops[i][1] = 550 + (unsigned long long)i;
    }
    for (int i = 0; i < SHARED_LOOKUP_COUNT; i++)
        ss.lookups[i] = 600 + (unsigned long long)i;
    for (int i = 0; i < SHARED_MINT_COUNT; i++)
        ss.mints[i] = 650 + (unsigned long long)i;
    for (int i = 0; i < SHARED_OUTAGE_COUNT; i++)
        ss.outage_tokens[i] = 670 + (unsigned long long)i;
    ss.outage_pending = 680;
    ss.decrypt_failures = 701;
    ss.forged_flags = 702;
    ss.foreign_flushes = 7030;
    ss.lease_waits = 703;
    ss.lease_timeouts = 704;
    ss.events_applied = 705;
    ss.local_flushes = 706;
    ss.pending = 707;
    ss.latency_count = 0;
    for (int i = 0; i < SHARED_LATENCY_BUCKETS; i++) {
        ss.latency_buckets[i] = 10 + (unsigned long long)i;
        ss.latency_count += ss.latency_buckets[i];
    }
    ss.latency_sum_s = 0.25;
    ss.fleet_credentials_rejected = false;
    ss.fleet_paused = true;
}

static char *render(bool fleet, size_t *len) {
    char *text = NULL;

    fill();
    ASSERT_INT_EQ(metrics_render(&as, &cs, &us, &rs, fleet ? &ss : NULL, START_UNIX, &text, len), 0);
    ASSERT(text);
    ASSERT_UINT_EQ(strlen(text), *len);
    return text;
}

/* ---- a reader of the exposition format ---- */

#define FAMILIES_MAX 128
#define SAMPLES_MAX 1024
#define LABELS_MAX 4

struct family {
    char name[128];
    char type[16];
    int help, types;
    bool done; /* another family's samples came after this one's */
    int samples;
};

struct label {
    char name[64], value[128];
};

struct sample {
    char name[128];
    struct family *family;
    struct label labels[LABELS_MAX];
    int n_labels;
    double value;
    char series[512]; /* name and labels as written, to spot a repeat */
};

struct exposition {
    struct family families[FAMILIES_MAX];
    int n_families;
    struct sample samples[SAMPLES_MAX];
    int n_samples;
};

static bool metric_name_ok(const char *s, size_t n) {
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        if (!alpha && !(i > 0 && c >= '0' && c <= '9'))
            return false;
    }
    return true;
}

static bool label_name_ok(const char *s, size_t n) {
    return metric_name_ok(s, n) && !memchr(s, ':', n) && !(n >= 2 && s[0] == '_' && s[1] == '_');
}

static struct family *family_named(struct exposition *e, const char *name) {
    for (int i = 0; i < e->n_families; i++)
        if (strcmp(e->families[i].name, name) == 0)
            return &e->families[i];
    return NULL;
}

static struct family *family_add(struct exposition *e, const char *name, size_t n, int line) {
    struct family *f;
    char buf[128];

    if (!metric_name_ok(name, n) || n >= sizeof(buf))
        UNIT_FAIL("line %d: metric name '%.*s' is not [a-zA-Z_:][a-zA-Z0-9_:]*", line, (int)n, name);
    memcpy(buf, name, n);
    buf[n] = '\0';
    f = family_named(e, buf);
    if (f)
        return f;
    ASSERT(e->n_families < FAMILIES_MAX);
    f = &e->families[e->n_families++];
    memcpy(f->name, buf, n + 1);
    return f;
}

/* The family a sample belongs to: its own name, or a histogram's for the
 * _bucket, _sum and _count series. */
static struct family *family_of(struct exposition *e, const char *name) {
    static const char *const suffixes[] = { "_bucket", "_sum", "_count" };
    struct family *f = family_named(e, name);

    if (f && strcmp(f->type, "histogram") != 0)
        return f;
    for (size_t i = 0; i < 3; i++) {
        size_t n = strlen(name), k = strlen(suffixes[i]);
        char base[128];

        if (n <= k || strcmp(name + n - k, suffixes[i]) != 0)
            continue;
        memcpy(base, name, n - k);
        base[n - k] = '\0';
        f = family_named(e, base);
        if (f && strcmp(f->type, "histogram") == 0)
            return f;
    }
    return NULL;
}

static double parse_value(const char *s, int line) {
    char *end;
    double v;

    if (strcmp(s, "+Inf") == 0)
        return INFINITY;
    if (strcmp(s, "-Inf") == 0)
        return -INFINITY;
    if (strcmp(s, "NaN") == 0)
        return NAN;
    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end)
        UNIT_FAIL("line %d: '%s' is not a value", line, s);
    return v;
}

/* name{label="value",...} value */
static void parse_sample(struct exposition *e, char *s, int line) {
    struct sample *m;
    char *p = s, *v;
    size_t n;

    ASSERT(e->n_samples < SAMPLES_MAX);
    m = &e->samples[e->n_samples++];
    n = strcspn(p, "{ ");
    if (!metric_name_ok(p, n) || n >= sizeof(m->name))
        UNIT_FAIL("line %d: metric name in '%s' is not [a-zA-Z_:][a-zA-Z0-9_:]*", line, s);
    memcpy(m->name, p, n);
    m->name[n] = '\0';
    p += n;
    if (*p == '{') {
        p++;
        while (*p != '}') {
            struct label *l;
            size_t k = 0;

            if (m->n_labels == LABELS_MAX)
                UNIT_FAIL("line %d: too many labels", line);
            l = &m->labels[m->n_labels++];
            n = strcspn(p, "=");
            if (!label_name_ok(p, n) || n >= sizeof(l->name))
                UNIT_FAIL("line %d: label name in '%s' is not [a-zA-Z_][a-zA-Z0-9_]*", line, s);
            memcpy(l->name, p, n);
            l->name[n] = '\0';
            for (int i = 0; i < m->n_labels - 1; i++)
                if (strcmp(m->labels[i].name, l->name) == 0)
                    UNIT_FAIL("line %d: label %s given twice", line, l->name);
            p += n;
            if (p[0] != '=' || p[1] != '"')
                UNIT_FAIL("line %d: label value not quoted: '%s'", line, s);
            p += 2;
            /* only \\, \" and \n are escapes; a raw " ends the value */
            for (; *p != '"'; p++) {
                char c = *p;

                if (!c)
                    UNIT_FAIL("line %d: unterminated label value: '%s'", line, s);
                if (c == '\\') {
                    p++;
                    if (*p == 'n')
                        c = '\n';
                    else if (*p == '\\' || *p == '"')
                        c = *p;
                    else
                        UNIT_FAIL("line %d: bad escape in a label value: '%s'", line, s);
                }
                ASSERT(k + 1 < sizeof(l->value));
                l->value[k++] = c;
            }
            l->value[k] = '\0';
            p++;
            if (*p == ',')
                p++;
            else if (*p != '}')
                UNIT_FAIL("line %d: expected , or } after a label: '%s'", line, s);
        }
        p++;
    }
    if (*p != ' ')
        UNIT_FAIL("line %d: expected one space before the value: '%s'", line, s);
    v = p + 1;
    if (strchr(v, ' '))
        UNIT_FAIL("line %d: a timestamp or trailing text: '%s'", line, s);
    m->value = parse_value(v, line);
    snprintf(m->series, sizeof(m->series), "%.*s", (int)(v - 1 - s), s);
    for (int i = 0; i < e->n_samples - 1; i++)
        if (strcmp(e->samples[i].series, m->series) == 0)
            UNIT_FAIL("line %d: series %s written twice", line, m->series);
}

static void parse(char *text, struct exposition *e) {
    struct family *current = NULL;
    int line = 0;

    memset(e, 0, sizeof(*e));
    ASSERT(*text);
    ASSERT(text[strlen(text) - 1] == '\n'); /* the last line ends too */
    for (char *s = text, *nl; *s; s = nl + 1) {
        nl = strchr(s, '\n');
        *nl = '\0';
        line++;
        if (!*s)
            UNIT_FAIL("line %d: empty", line);
        if (strncmp(s, "# HELP ", 7) == 0 || strncmp(s, "# TYPE ", 7) == 0) {
            char *name = s + 7;
            size_t n = strcspn(name, " ");
            struct family *f = family_add(e, name, n, line);
            const char *rest = name[n] ? name + n + 1 : "";

            if (f->samples)
                UNIT_FAIL("line %d: %.6s after the samples of %s", line, s, f->name);
            if (current && current != f && current->samples)
                current->done = true;
            current = f;
            if (s[2] == 'H') {
                if (f->help++)
                    UNIT_FAIL("line %d: a second HELP for %s", line, f->name);
                if (!*rest)
                    UNIT_FAIL("line %d: HELP without a text", line);
                for (const char *c = rest; *c; c++)
                    if (*c == '\\' && c[1] != '\\' && c[1] != 'n')
                        UNIT_FAIL("line %d: a lone backslash in HELP", line);
                    else if (*c == '\\')
                        c++;
            } else {
                if (f->types++)
                    UNIT_FAIL("line %d: a second TYPE for %s", line, f->name);
                if (strcmp(rest, "counter") && strcmp(rest, "gauge") && strcmp(rest, "histogram") &&
                    strcmp(rest, "summary") && strcmp(rest, "untyped"))
                    UNIT_FAIL("line %d: unknown type '%s'", line, rest);
                snprintf(f->type, sizeof(f->type), "%s", rest);
            }
        } else if (s[0] == '#') {
            UNIT_FAIL("line %d: a comment that is neither HELP nor TYPE: '%s'", line, s);
        } else {
            struct sample *m;

            parse_sample(e, s, line);
            m = &e->samples[e->n_samples - 1];
            m->family = family_of(e, m->name);
            if (!m->family || !m->family->types)
                UNIT_FAIL("line %d: %s has no TYPE before it", line, m->name);
            if (m->family->done)
                UNIT_FAIL("line %d: %s is apart from the rest of its family", line, m->name);
            if (current && current != m->family) {
                current->done = true;
                current = m->family;
            }
            m->family->samples++;
        }
    }
}

static const struct sample *find(const struct exposition *e, const char *series) {
    for (int i = 0; i < e->n_samples; i++)
        if (strcmp(e->samples[i].series, series) == 0)
            return &e->samples[i];
    return NULL;
}

static double value_of(const struct exposition *e, const char *series) {
    const struct sample *m = find(e, series);

    if (!m)
        UNIT_FAIL("no series %s", series);
    return m->value;
}

static const char *label(const struct sample *m, const char *name) {
    for (int i = 0; i < m->n_labels; i++)
        if (strcmp(m->labels[i].name, name) == 0)
            return m->labels[i].value;
    return NULL;
}

/* The labels of m but le, as one string: one histogram per such set. */
static void labels_but_le(const struct sample *m, char *out, size_t size) {
    size_t n = 0;

    out[0] = '\0';
    for (int i = 0; i < m->n_labels; i++)
        if (strcmp(m->labels[i].name, "le") != 0)
            n += (size_t)snprintf(out + n, size - n, "%s=%s,", m->labels[i].name, m->labels[i].value);
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);

    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* ---- the checks ---- */

static void check_families(const struct exposition *e) {
    for (int i = 0; i < e->n_families; i++) {
        const struct family *f = &e->families[i];

        if (f->help != 1 || f->types != 1)
            UNIT_FAIL("%s: %d HELP and %d TYPE lines, not one of each", f->name, f->help, f->types);
        if (strcmp(f->type, "counter") == 0 && !ends_with(f->name, "_total"))
            UNIT_FAIL("counter %s does not end in _total", f->name);
        if (strcmp(f->type, "counter") != 0 && ends_with(f->name, "_total"))
            UNIT_FAIL("%s %s ends in _total, which says counter", f->type, f->name);
        if (strncmp(f->name, "tokend_", 7) != 0 && strncmp(f->name, "process_", 8) != 0)
            UNIT_FAIL("%s: neither tokend_ nor process_", f->name);
    }
    for (int i = 0; i < e->n_samples; i++) {
        const struct sample *m = &e->samples[i];
        const struct family *f = m->family;

        if (strcmp(f->type, "histogram") != 0 && strcmp(m->name, f->name) != 0)
            UNIT_FAIL("sample %s in family %s", m->name, f->name);
        if (strcmp(f->type, "counter") == 0 && (m->value < 0 || isnan(m->value)))
            UNIT_FAIL("counter %s is %g", m->series, m->value);
    }
}

static void check_histograms(const struct exposition *e) {
    int histograms = 0;

    for (int i = 0; i < e->n_families; i++) {
        const struct family *f = &e->families[i];
        char bucket[160], sum[160], count[160];

        if (strcmp(f->type, "histogram") != 0)
            continue;
        histograms++;
        snprintf(bucket, sizeof(bucket), "%s_bucket", f->name);
        snprintf(sum, sizeof(sum), "%s_sum", f->name);
        snprintf(count, sizeof(count), "%s_count", f->name);
        /* one histogram per set of labels other than le */
        for (int j = 0; j < e->n_samples; j++) {
            const struct sample *c = &e->samples[j];
            char set[256], other[256];
            double last_le = -INFINITY, last = 0;
            bool inf = false, have_sum = false;

            if (c->family != f || strcmp(c->name, count) != 0)
                continue;
            labels_but_le(c, set, sizeof(set));
            for (int k = 0; k < e->n_samples; k++) {
                const struct sample *b = &e->samples[k];

                if (b->family != f)
                    continue;
                labels_but_le(b, other, sizeof(other));
                if (strcmp(set, other) != 0)
                    continue;
                if (strcmp(b->name, sum) == 0) {
                    have_sum = true;
                    continue;
                }
                if (strcmp(b->name, bucket) != 0)
                    continue;
                {
                    const char *le = label(b, "le");
                    double bound;

                    if (!le)
                        UNIT_FAIL("%s without le", b->series);
                    if (inf)
                        UNIT_FAIL("%s after the +Inf bucket", b->series);
                    bound = parse_value(le, 0);
                    if (!(bound > last_le))
                        UNIT_FAIL("%s: le does not increase", b->series);
                    if (b->value < last)
                        UNIT_FAIL("%s: %g after %g: buckets are not cumulative", b->series, b->value, last);
                    last_le = bound;
                    last = b->value;
                    inf = isinf(bound) && bound > 0;
                    if (inf && b->value != c->value)
                        UNIT_FAIL("%s is %g, but %s is %g", b->series, b->value, c->series, c->value);
                }
            }
            if (!inf)
                UNIT_FAIL("%s has no +Inf bucket", f->name);
            if (!have_sum)
                UNIT_FAIL("%s has no _sum", f->name);
        }
    }
    ASSERT(histograms > 0);
}

static void check(bool fleet) {
    static struct exposition e;
    size_t len;
    char *text = render(fleet, &len);

    parse(text, &e);
    check_families(&e);
    check_histograms(&e);
    free(text);
}

static void the_exposition_is_well_formed(void) {
    check(false);
}

static void the_fleets_exposition_is_well_formed(void) {
    check(true);
}

/* What a dashboard reads: each number under its own name. */
static void each_counter_shows_its_own_value(void) {
    static struct exposition e;
    size_t len;
    char *text = render(false, &len);
    char series[256];

    parse(text, &e);
    ASSERT_INT_EQ(value_of(&e, "tokend_cache_hits_total"), 201);
    ASSERT_INT_EQ(value_of(&e, "tokend_cache_misses_total"), 202);
    ASSERT_INT_EQ(value_of(&e, "tokend_cache_coalesced_total"), 203);
    ASSERT_INT_EQ(value_of(&e, "tokend_cache_refreshes_total"), 204);
    ASSERT_INT_EQ(value_of(&e, "tokend_cache_evictions_total"), 205);
    ASSERT_INT_EQ(value_of(&e, "tokend_cache_expirations_total"), 206);
    ASSERT_INT_EQ(value_of(&e, "tokend_cache_entries"), 207);
    ASSERT_INT_EQ(value_of(&e, "tokend_mints_total{outcome=\"ok\"}"), 302);
    ASSERT_INT_EQ(value_of(&e, "tokend_mints_total{outcome=\"rejected\"}"), 303);
    ASSERT_INT_EQ(value_of(&e, "tokend_mints_total{outcome=\"failed\"}"), 304);
    ASSERT_INT_EQ(value_of(&e, "tokend_mints_total{outcome=\"timed_out\"}"), 305);
    ASSERT_INT_EQ(value_of(&e, "tokend_revocations_total{outcome=\"ok\"}"), 306);
    ASSERT_INT_EQ(value_of(&e, "tokend_revocations_total{outcome=\"failed\"}"), 307);
    ASSERT_INT_EQ(value_of(&e, "tokend_upstream_requests_total"), 301);
    ASSERT_INT_EQ(value_of(&e, "tokend_upstream_retries_total"), 308);
    ASSERT_INT_EQ(value_of(&e, "tokend_upstream_connections_total"), 309);
    ASSERT_INT_EQ(value_of(&e, "tokend_mints_in_flight"), 2);
    ASSERT_INT_EQ(value_of(&e, "tokend_http_requests_waiting"), 3);
    ASSERT_INT_EQ(value_of(&e, "tokend_revocations_pending"), 405);
    ASSERT_INT_EQ(value_of(&e, "tokend_revocation_retries_total"), 402);
    ASSERT_INT_EQ(value_of(&e, "tokend_revocations_given_up_total{why=\"expired\"}"), 403);
    ASSERT_INT_EQ(value_of(&e, "tokend_revocations_given_up_total{why=\"too_many\"}"), 404);
    ASSERT_INT_EQ(value_of(&e, "tokend_upstream_credentials_rejected"), 1);
    ASSERT_INT_EQ(value_of(&e, "tokend_upstream_rate_limited"), 0);
    ASSERT_INT_EQ(value_of(&e, "process_start_time_seconds"), START_UNIX);
    /* the circuit: one state at 1, the others at 0 */
    ASSERT_INT_EQ(value_of(&e, "tokend_upstream_circuit_state{state=\"closed\"}"), 0);
    ASSERT_INT_EQ(value_of(&e, "tokend_upstream_circuit_state{state=\"open\"}"), 0);
    ASSERT_INT_EQ(value_of(&e, "tokend_upstream_circuit_state{state=\"half_open\"}"), 1);
    /* requests by route and exact status; a status never answered is not shown */
    snprintf(series, sizeof(series), "tokend_http_requests_total{route=\"%s\",code=\"200\"}", api_route_name(0));
    ASSERT_INT_EQ(value_of(&e, series), 101);
    snprintf(series, sizeof(series), "tokend_http_requests_total{route=\"%s\",code=\"503\"}", api_route_name(0));
    ASSERT_INT_EQ(value_of(&e, series), 102);
    snprintf(series, sizeof(series), "tokend_http_requests_total{route=\"%s\",code=\"404\"}",
             api_route_name(API_ROUTES - 1));
    ASSERT_INT_EQ(value_of(&e, series), 103);
    snprintf(series, sizeof(series), "tokend_http_requests_total{route=\"%s\",code=\"599\"}", api_route_name(1));
    ASSERT_INT_EQ(value_of(&e, series), 104);
    snprintf(series, sizeof(series), "tokend_http_requests_total{route=\"%s\",code=\"100\"}", api_route_name(2));
    ASSERT_INT_EQ(value_of(&e, series), 105);
    snprintf(series, sizeof(series), "tokend_http_requests_total{route=\"%s\",code=\"429\"}", api_route_name(3));
    ASSERT_INT_EQ(value_of(&e, series), 1);
    snprintf(series, sizeof(series), "tokend_http_requests_total{route=\"%s\",code=\"404\"}", api_route_name(0));
    ASSERT(!find(&e, series));
    /* no fleet, no fleet metrics */
    ASSERT_NOT_CONTAINS(text, "tokend_shared_");
    free(text);
}

/* The upstream latency histogram from per-bucket counts: cumulative sums,
 * and the requests slower than the last bound only in +Inf. */
static void the_latency_histogram_adds_up(void) {
    static struct exposition e;
    size_t len;
    char *text = render(false, &len);
    unsigned long long cumulative = 0;
    char series[256];

    parse(text, &e);
    for (int i = 0; i < UPSTREAM_LATENCY_BUCKETS; i++) {
        cumulative += us.latency_buckets[i];
        snprintf(series, sizeof(series), "tokend_upstream_request_duration_seconds_bucket{le=\"%g\"}",
                 upstream_latency_bounds[i]);
        ASSERT_UINT_EQ(value_of(&e, series), cumulative);
    }
    ASSERT_UINT_EQ(value_of(&e, "tokend_upstream_request_duration_seconds_bucket{le=\"+Inf\"}"),
                   cumulative + 4);
    ASSERT_UINT_EQ(value_of(&e, "tokend_upstream_request_duration_seconds_count"), cumulative + 4);
    ASSERT(value_of(&e, "tokend_upstream_request_duration_seconds_sum") == 12.5);
    free(text);
}

static void the_fleets_counters_show_their_values(void) {
    static struct exposition e;
    size_t len;
    char *text = render(true, &len);
    char series[256];

    parse(text, &e);
    ASSERT_INT_EQ(value_of(&e, "tokend_shared_up"), 1);
    ASSERT_INT_EQ(value_of(&e, "tokend_shared_breaker_state{state=\"open\"}"), 1);
    ASSERT_INT_EQ(value_of(&e, "tokend_shared_breaker_state{state=\"closed\"}"), 0);
    ASSERT_INT_EQ(value_of(&e, "tokend_shared_breaker_state{state=\"half_open\"}"), 0);
    for (int i = 0; i < SHARED_OP_COUNT; i++) {
        snprintf(series, sizeof(series), "tokend_shared_operations_total{op=\"%s\",result=\"ok\"}",
                 shared_op_names[i]);
        ASSERT_INT_EQ(value_of(&e, series), 500 + i);
        snprintf(series, sizeof(series), "tokend_shared_operations_total{op=\"%s\",result=\"error\"}",
                 shared_op_names[i]);
        ASSERT_INT_EQ(value_of(&e, series), 550 + i);
    }
    for (int i = 0; i < SHARED_LOOKUP_COUNT; i++) {
        snprintf(series, sizeof(series), "tokend_shared_lookups_total{result=\"%s\"}", shared_lookup_names[i]);
        ASSERT_INT_EQ(value_of(&e, series), 600 + i);
    }
    for (int i = 0; i < SHARED_MINT_COUNT; i++) {
        snprintf(series, sizeof(series), "tokend_shared_mints_total{how=\"%s\"}", shared_mint_names[i]);
        ASSERT_INT_EQ(value_of(&e, series), 650 + i);
    }
    for (int i = 0; i < SHARED_OUTAGE_COUNT; i++) {
        snprintf(series, sizeof(series), "tokend_shared_outage_tokens_total{outcome=\"%s\"}",
                 shared_outage_names[i]);
        ASSERT_INT_EQ(value_of(&e, series), 670 + i);
    }
    ASSERT_INT_EQ(value_of(&e, "tokend_shared_outage_tokens_pending"), 680);
    ASSERT_INT_EQ(value_of(&e, "tokend_shared_decrypt_failures_total"), 701);
    ASSERT_INT_EQ(value_of(&e, "tokend_shared_forged_flags_total"), 702);
    ASSERT_INT_EQ(value_of(&e, "tokend_shared_foreign_flushes_total"), 7030);
    ASSERT_INT_EQ(value_of(&e, "tokend_shared_lease_waits_total"), 703);
    ASSERT_INT_EQ(value_of(&e, "tokend_shared_lease_timeouts_total"), 704);
    ASSERT_INT_EQ(value_of(&e, "tokend_shared_events_applied_total"), 705);
    ASSERT_INT_EQ(value_of(&e, "tokend_shared_local_flushes_total"), 706);
    ASSERT_INT_EQ(value_of(&e, "tokend_shared_pending"), 707);
    ASSERT_INT_EQ(value_of(&e, "tokend_shared_fleet_credentials_rejected"), 0);
    ASSERT_INT_EQ(value_of(&e, "tokend_shared_fleet_paused"), 1);
    ASSERT_UINT_EQ(value_of(&e, "tokend_shared_lookup_duration_seconds_count"), ss.latency_count);
    free(text);
}

/* Prometheus' own linter, where Debian's prometheus package put it. */
static void promtool_finds_nothing_to_lint(void) {
    static const char *const paths[] = { "/usr/bin/promtool", "/usr/local/bin/promtool" };
    const char *promtool = NULL;
    int in[2], out[2], status;
    char report[4096];
    size_t len, got = 0;
    char *text;
    pid_t pid;

    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++)
        if (access(paths[i], X_OK) == 0)
            promtool = paths[i];
    if (!promtool)
        UNIT_SKIP("promtool not found: tests/deps.sh test installs prometheus");
    text = render(true, &len);
    ASSERT_INT_EQ(pipe2(in, O_CLOEXEC), 0);
    ASSERT_INT_EQ(pipe2(out, O_CLOEXEC), 0);
    pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        dup2(in[0], STDIN_FILENO);
        dup2(out[1], STDOUT_FILENO);
        dup2(out[1], STDERR_FILENO);
        execl(promtool, "promtool", "check", "metrics", (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    ASSERT(write(in[1], text, len) == (ssize_t)len);
    close(in[1]);
    for (;;) {
        ssize_t n = read(out[0], report + got, sizeof(report) - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    report[got] = '\0';
    close(out[0]);
    ASSERT_INT_EQ(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || got)
        UNIT_FAIL("promtool check metrics: %s", report);
    free(text);
}

static const unit_test tests[] = {
    TEST(the_exposition_is_well_formed),
    TEST(the_fleets_exposition_is_well_formed),
    TEST(each_counter_shows_its_own_value),
    TEST(the_latency_histogram_adds_up),
    TEST(the_fleets_counters_show_their_values),
    TEST(promtool_finds_nothing_to_lint),
};

UNIT_MAIN(tests)
