// Harness helpers for the tapwire fuzz targets. Nothing here is tapwire code under test.
#ifndef FUZZ_SUPPORT_H
#define FUZZ_SUPPORT_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/// Reserves `pages` pages of PROT_NONE address space; NULL on failure.
void *fz_reserve(size_t pages);
/// mprotect helpers: read/write or no access. 0 on success.
int fz_protect_rw(void *p, size_t len);
int fz_protect_none(void *p, size_t len);
/// The page size.
size_t fz_page_size(void);

/// ASan manual poisoning (no-ops without ASan).
void fz_poison(const void *p, size_t len);
void fz_unpoison(const void *p, size_t len);

/// sendmsg with up to 64 SCM_RIGHTS descriptors (tapwire's own sender stops at 8, and the
/// backend must cope with a frontend that sends more). Returns bytes sent or -1 (errno set).
ssize_t fz_send_fds(int sock, const void *buf, size_t len, const int *fds, int nfds);
/// A non-blocking, close-on-exec eventfd (the descriptors a frontend passes), or -1.
int fz_eventfd(void);
/// 1 when `fd` is an open descriptor of this process.
int fz_fd_is_open(int fd);
/// Number of open eventfds and sockets (what this harness and the code under test create), or -1.
int fz_count_open_fds(void);
/// Lists /proc/self/fd on stderr (for a leak report).
void fz_dump_fds(void);
/// Socket buffer and timeout set-up for the harness's socketpair. 0 on success.
int fz_prepare_writer(int fd, int sndbuf_bytes);
int fz_prepare_reader(int fd, int timeout_ms);
int fz_shutdown_write(int fd);
int fz_close(int fd);

/// A message to stderr and abort(): the harness's way to report a broken invariant, so that
/// libFuzzer writes the crash file.
__attribute__((noreturn)) void fz_fail(const char *message);
#endif
