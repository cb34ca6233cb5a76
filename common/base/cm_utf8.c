/* cm_utf8.c - strict UTF-8 validation (RFC 3629). */
#include "cm_base.h"

bool cm_utf8_valid(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned char c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false; /* continuation byte, overlong lead C0/C1, or > F4 */
        }
        if (len - i <= n) return false;
        for (size_t k = 1; k <= n; k++) {
            if ((p[i + k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += n + 1;
    }
    return true;
}

size_t cm_utf8_trim(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    /* Back over at most 3 continuation bytes to the lead byte of the last
     * character; drop it when the bytes after it are fewer than it needs. */
    size_t i = len, back = 0;
    while (i > 0 && back < 3 && (p[i - 1] & 0xC0) == 0x80) i--, back++;
    if (i == 0) return len;
    unsigned char c = p[i - 1];
    size_t need = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC0 ? 1 : 0;
    return need > back ? i - 1 : len;
}
