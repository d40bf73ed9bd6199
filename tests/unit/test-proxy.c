/* Unit tests of src/proxy.c's decision of what a browser may see of
 * Instacart's answer (the forwarding itself, with its 401 retry, runs
 * against the stand-in in test_access). */
#include <string.h>

#include "proxy.h"
#include "unit.h"

static int passable(int status, const char *type) {
    char desc[192] = "";
    int r = proxy_passable(status, type, desc, sizeof(desc));

    ASSERT(r == 0 ? desc[0] != '\0' : r == status);
    return r;
}

static void successes_and_failures_pass_as_sent(void) {
    static const int ok[] = { 200, 201, 204, 299, 400, 401, 404, 422, 429, 500, 503, 599 };

    for (size_t i = 0; i < sizeof(ok) / sizeof(*ok); i++)
        ASSERT_INT_EQ(passable(ok[i], "application/json"), ok[i]);
}

static void informational_redirects_and_nonsense_do_not(void) {
    static const int no[] = { 0, -1, 100, 101, 199, 300, 301, 302, 304, 307, 399, 600, 999 };

    for (size_t i = 0; i < sizeof(no) / sizeof(*no); i++)
        ASSERT_INT_EQ(passable(no[i], "application/json"), 0);
}

static void only_json_passes(void) {
    ASSERT_INT_EQ(passable(200, "application/json; charset=utf-8"), 200);
    ASSERT_INT_EQ(passable(200, "Application/JSON"), 200);
    ASSERT_INT_EQ(passable(200, "application/problem+json"), 200);
    ASSERT_INT_EQ(passable(200, "text/html"), 0);
    ASSERT_INT_EQ(passable(200, "text/html; x=application/json"), 0);
    ASSERT_INT_EQ(passable(200, "application/json, text/html"), 0);
    ASSERT_INT_EQ(passable(200, "application/+json"), 0);
    ASSERT_INT_EQ(passable(200, ""), 0);
}

static void the_refusal_names_what_was_refused(void) {
    char desc[192];

    ASSERT_INT_EQ(proxy_passable(302, "application/json", desc, sizeof(desc)), 0);
    ASSERT(strstr(desc, "302") != NULL);
    ASSERT_INT_EQ(proxy_passable(200, "text/html", desc, sizeof(desc)), 0);
    ASSERT(strstr(desc, "text/html") != NULL);
}

static const unit_test tests[] = {
    TEST(successes_and_failures_pass_as_sent),
    TEST(informational_redirects_and_nonsense_do_not),
    TEST(only_json_passes),
    TEST(the_refusal_names_what_was_refused),
};

UNIT_MAIN(tests)
