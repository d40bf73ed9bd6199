/* Addresses: which are this host's own (loopback), and the [server]
 * listen addresses. Pure: no I/O, so the one loopback rule is unit tested
 * row by row and used by every caller (configuration, the guard's Host
 * check, the HTTP front's local-caller check, the listeners). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

/* Whether traffic to or from sa never leaves this host: a Unix socket,
 * 127.0.0.0/8, ::1, or ::ffff:127.0.0.0/104 (IPv4 loopback on an IPv6
 * socket). len is sa's length; too short for its family: false. */
bool address_is_loopback(const struct sockaddr *sa, socklen_t len);

/* The same for a host as written in a URL or a Host header, without its
 * port: "localhost" (any case), an IPv4 address, or an IPv6 address in
 * brackets. Other names are not resolved: false. */
bool address_host_is_loopback(const char *host, size_t len);

/* Parses a [server] listen address: ADDRESS:PORT (IPv4, [IPv6] or
 * localhost) or unix:/PATH. An IPv4-mapped IPv6 address is taken as the
 * IPv4 address it maps. *ret_loopback (may be NULL) gets
 * address_is_loopback() of the result. Returns 0 or -EINVAL. */
int address_listen_parse(const char *s, struct sockaddr_storage *ret, socklen_t *ret_len, bool *ret_loopback);
