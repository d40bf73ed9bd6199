/* Unit tests of src/json.c: the strict JSON reader in front of everything
 * tokend parses from outside (Instacart's answers, callers' bodies). cJSON
 * alone would stop at the end of the first value, cut a string at a NUL and
 * take the first of two members of one name; each case here is a way a
 * body could mean one thing to tokend and another to whoever sent it. */
#include "json.h"
#include "unit.h"

static cJSON *parse(const char *s) {
    return json_parse_whole(s, strlen(s));
}

static void accepted(const char *s) {
    cJSON *j = parse(s);

    if (!j)
        UNIT_FAIL("refused: %s", s);
    json_delete_wiped(j);
}

static void refused(const char *s) {
    cJSON *j = parse(s);

    if (j) {
        json_delete_wiped(j);
        UNIT_FAIL("accepted: %s", s);
    }
}

static void one_value_and_white_space(void) {
    cJSON *j = parse(" \t\r\n{\"access_token\":\"abc\",\"expires_in\":7200} \t\r\n");

    ASSERT(j);
    ASSERT_STR_EQ(cJSON_GetObjectItemCaseSensitive(j, "access_token")->valuestring, "abc");
    ASSERT_INT_EQ(cJSON_GetObjectItemCaseSensitive(j, "expires_in")->valuedouble, 7200);
    json_delete_wiped(j);
    /* any JSON value, not only an object */
    accepted("[1,2,3]");
    accepted("\"text\"");
    accepted("7200");
    accepted("null");
}

/* Bytes after the value would go unseen: a second object, a comment,
 * anything. Only JSON's four white space characters may follow. */
static void nothing_after_the_value(void) {
    refused("{\"a\":1}{\"a\":2}");
    refused("{\"a\":1},");
    refused("{\"a\":1} x");
    refused("{\"a\":1}\n// comment");
    refused("[1] ]");
    refused("1 2");
    refused("{}\f"); /* not JSON white space */
    refused("{}\v");
}

static void nothing_is_not_a_value(void) {
    refused("");
    refused("   ");
    refused("{");
    refused("{\"a\":1");
    refused("{\"a\":}");
    refused("{'a':1}");
}

/* The length is the caller's: bytes beyond it are not read, and a body
 * needs no NUL at its end. */
static void reads_exactly_len_bytes(void) {
    static const char body[] = "{\"a\":1}GARBAGE";
    char exact[7];
    cJSON *j;

    j = json_parse_whole(body, 7);
    ASSERT(j);
    json_delete_wiped(j);
    ASSERT(!json_parse_whole(body, 8));
    /* no NUL after the last byte */
    memcpy(exact, body, sizeof(exact));
    j = json_parse_whole(exact, sizeof(exact));
    ASSERT(j);
    ASSERT_INT_EQ(cJSON_GetObjectItemCaseSensitive(j, "a")->valueint, 1);
    json_delete_wiped(j);
    /* cut short by the length: incomplete, refused */
    ASSERT(!json_parse_whole(body, 6));
}

/* A NUL would cut the string short for a C reader ("alice\0admin" read as
 * "alice"): refused raw and escaped, in values and in names. */
static void no_nul_raw_or_escaped(void) {
    static const char raw[] = "{\"user_id\":\"alice\0admin\"}";

    ASSERT(!json_parse_whole(raw, sizeof(raw) - 1));
    refused("{\"user_id\":\"alice\\u0000admin\"}");
    refused("{\"us\\u0000er_id\":\"alice\"}");
    refused("[\"\\u0000\"]");
    /* a NUL after the value counts as well */
    ASSERT(!json_parse_whole("{}\0", 3));
    /* other escaped control characters are text like any other */
    accepted("{\"a\":\"\\u0001\\u001f\\n\\t\"}");
}

/* RFC 8259 leaves a repeated name to the parser; cJSON would take the
 * first while another reader takes the last. */
static void a_name_given_twice_is_refused(void) {
    refused("{\"user_id\":\"alice\",\"user_id\":\"bob\"}");
    refused("{\"a\":1,\"b\":2,\"c\":3,\"a\":4}");
    refused("{\"\":1,\"\":2}");
    /* the same name after its escapes are read */
    refused("{\"a\":1,\"\\u0061\":2}");
    /* in a nested object, and in an object inside an array */
    refused("{\"outer\":{\"x\":1,\"x\":2}}");
    refused("[1,{\"ok\":true},{\"x\":1,\"y\":2,\"x\":3}]");
    refused("{\"a\":[{\"b\":{\"c\":1,\"c\":1}}]}");
    /* in a later sibling: the walk goes on after the first object */
    refused("{\"first\":{\"x\":1},\"second\":{\"y\":1,\"y\":2}}");
}

static void the_same_name_in_different_objects_is_fine(void) {
    accepted("{\"a\":{\"a\":{\"a\":1}}}");
    accepted("[{\"a\":1},{\"a\":2}]");
    accepted("{\"a\":1,\"A\":2,\"a \":3,\"aa\":4}"); /* names are compared exactly */
}

/* Sorting the names must not lose a repeat anywhere in a long list. */
static void a_repeat_among_many_names(void) {
    size_t size = 2000 * 16 + 64, len = 0;
    char *buf = malloc(size);
    cJSON *j;

    ASSERT(buf);
    buf[len++] = '{';
    for (int i = 0; i < 2000; i++)
        len += (size_t)snprintf(buf + len, size - len, "%s\"k%d\":%d", i ? "," : "", (i * 7919) % 2000, i);
    buf[len++] = '}';
    j = json_parse_whole(buf, len);
    ASSERT(j);
    ASSERT_INT_EQ(cJSON_GetArraySize(j), 2000);
    json_delete_wiped(j);
    /* the last name repeats one in the middle */
    len--;
    len += (size_t)snprintf(buf + len, size - len, ",\"k%d\":0}", 1000);
    ASSERT(!json_parse_whole(buf, len));
    free(buf);
}

/* \u escapes come out as UTF-8, a pair of surrogates as one character; a
 * surrogate alone is not a character and is refused. */
static void unicode_escapes_become_utf8(void) {
    cJSON *j = parse("[\"\\u00e9\\u20ac\",\"\\ud83d\\ude00\",\"\xc3\xa9\"]");

    ASSERT(j);
    ASSERT_STR_EQ(cJSON_GetArrayItem(j, 0)->valuestring, "\xc3\xa9\xe2\x82\xac");
    ASSERT_STR_EQ(cJSON_GetArrayItem(j, 1)->valuestring, "\xf0\x9f\x98\x80");
    ASSERT_STR_EQ(cJSON_GetArrayItem(j, 2)->valuestring, "\xc3\xa9");
    json_delete_wiped(j);
    refused("[\"\\ude00\"]");
    refused("[\"\\ud83d\"]");
    refused("[\"\\ud83d\\u0041\"]");
}

/* A hostile body nested deeper than cJSON allows is refused, not a crash
 * of the reader or of the walk that looks for repeated names. */
static void deep_nesting_is_refused(void) {
    size_t depth = 100000;
    char *buf = malloc(2 * depth);
    cJSON *j;

    ASSERT(buf);
    memset(buf, '[', depth);
    memset(buf + depth, ']', depth);
    ASSERT(!json_parse_whole(buf, 2 * depth));
    /* as deep as cJSON allows: taken, and walked */
    depth = CJSON_NESTING_LIMIT - 1;
    for (size_t i = 0; i < depth; i++)
        buf[i] = '[';
    for (size_t i = 0; i < depth; i++)
        buf[depth + i] = ']';
    j = json_parse_whole(buf, 2 * depth);
    ASSERT(j);
    json_delete_wiped(j);
    free(buf);
}

static void delete_accepts_null(void) {
    ASSERT(json_delete_wiped(NULL) == NULL);
    ASSERT(json_delete_wiped(parse("{\"a\":[\"s\",{\"b\":\"t\"}]}")) == NULL);
}

static const unit_test tests[] = {
    TEST(one_value_and_white_space),
    TEST(nothing_after_the_value),
    TEST(nothing_is_not_a_value),
    TEST(reads_exactly_len_bytes),
    TEST(no_nul_raw_or_escaped),
    TEST(a_name_given_twice_is_refused),
    TEST(the_same_name_in_different_objects_is_fine),
    TEST(a_repeat_among_many_names),
    TEST(unicode_escapes_become_utf8),
    TEST(deep_nesting_is_refused),
    TEST(delete_accepts_null),
};

UNIT_MAIN(tests)
