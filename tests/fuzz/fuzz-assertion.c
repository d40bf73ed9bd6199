/* Fuzzes the two encoders a user id goes through on its way to Instacart.
 * The input as a user id: its assertion must decode (Base64, then JSON) to
 * an object whose "user_id" is exactly the input. The input as Base64:
 * whatever base64_decode() accepts must encode back to exactly the input,
 * which is what "strict, canonical" means. */
#include <cjson/cJSON.h>
#include <string.h>

#include "fuzz.h"
#include "oauth.h"
#include "request.h"
#include "util.h"

static void check_assertion(const uint8_t *data, size_t size) {
    const cJSON *uid;
    char *id, *assertion = NULL;
    unsigned char *json;
    size_t alen;
    ptrdiff_t n;
    cJSON *j;

    id = malloc(size + 1);
    if (!id)
        return;
    memcpy(id, data, size);
    id[size] = '\0';
    if (oauth_assertion(id, &assertion) < 0) {
        free(id);
        return; /* out of memory */
    }
    alen = strlen(assertion);
    json = malloc(alen / 4 * 3);
    fuzz_check(json);
    n = base64_decode(assertion, alen, json, alen / 4 * 3);
    fuzz_check(n > 0);
    j = cJSON_ParseWithLength((const char *)json, (size_t)n);
    fuzz_check(j);
    fuzz_check(cJSON_IsObject(j) && cJSON_GetArraySize(j) == 1);
    uid = cJSON_GetObjectItemCaseSensitive(j, "user_id");
    fuzz_check(cJSON_IsString(uid));
    fuzz_check(strlen(uid->valuestring) == size && memcmp(uid->valuestring, data, size) == 0);
    cJSON_Delete(j);
    free(json);
    wipe_free_str(assertion);
    free(id);
}

static void check_base64(const uint8_t *data, size_t size) {
    const char *in = (const char *)data;
    size_t max = size / 4 * 3, enc_size;
    unsigned char *out;
    char *enc;
    ptrdiff_t n;

    /* exactly the most it can need, so a write past out_size is caught */
    out = malloc(max);
    if (!out && max > 0)
        return;
    n = base64_decode(in, size, out, max);
    if (n < 0) {
        fuzz_check(n == -1);
        free(out);
        return;
    }
    fuzz_check(size > 0 && size % 4 == 0);
    fuzz_check((size_t)n <= max && (size_t)n + 2 >= max);

    enc_size = base64_encoded_size((size_t)n);
    enc = malloc(enc_size);
    fuzz_check(enc);
    fuzz_check(base64_encode(out, (size_t)n, enc, enc_size) == size);
    fuzz_check(enc[size] == '\0' && memcmp(enc, in, size) == 0);
    free(enc);

    /* one byte short of room must be refused, not overflowed */
    if (n > 0) {
        unsigned char *shortbuf = malloc((size_t)n - 1);
        if (shortbuf || n == 1) {
            fuzz_check(base64_decode(in, size, shortbuf, (size_t)n - 1) == -1);
            free(shortbuf);
        }
    }
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (request_user_id_valid((const char *)data, size))
        check_assertion(data, size);
    check_base64(data, size);
    return 0;
}
