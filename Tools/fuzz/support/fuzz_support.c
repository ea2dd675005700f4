// Harness helpers for the tapwire fuzz targets (see fuzz_support.h).
#define _GNU_SOURCE
#include "fuzz_support.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

void __asan_poison_memory_region(void const volatile *addr, size_t size) __attribute__((weak));
void __asan_unpoison_memory_region(void const volatile *addr, size_t size) __attribute__((weak));

void *fz_reserve(size_t pages) {
    void *p = mmap(NULL, pages * fz_page_size(), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

int fz_protect_rw(void *p, size_t len) { return mprotect(p, len, PROT_READ | PROT_WRITE); }
int fz_protect_none(void *p, size_t len) { return mprotect(p, len, PROT_NONE); }
size_t fz_page_size(void) { return (size_t)sysconf(_SC_PAGESIZE); }

void fz_poison(const void *p, size_t len) {
    if (len && __asan_poison_memory_region) __asan_poison_memory_region(p, len);
}
void fz_unpoison(const void *p, size_t len) {
    if (len && __asan_unpoison_memory_region) __asan_unpoison_memory_region(p, len);
}

enum { FZ_MAX_FDS = 64 };

ssize_t fz_send_fds(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    if (nfds < 0 || nfds > FZ_MAX_FDS) { errno = EINVAL; return -1; }
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    union { char buf[CMSG_SPACE(sizeof(int) * FZ_MAX_FDS)]; struct cmsghdr align; } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (nfds > 0) {
        memset(&control, 0, sizeof control);
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * (size_t)nfds);
    }
    ssize_t n;
    do { n = sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT); } while (n < 0 && errno == EINTR);
    return n;
}

int fz_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

int fz_fd_is_open(int fd) { return fcntl(fd, F_GETFD) != -1 || errno != EBADF; }

int fz_count_open_fds(void) {
    // Only the kinds of descriptor this harness and the code under test create (eventfds passed
    // as frontend descriptors, unix sockets): the sanitizer runtime keeps pipes to its
    // llvm-symbolizer process open once libFuzzer symbolizes a NEW_FUNC line.
    DIR *dir = opendir("/proc/self/fd");
    if (!dir) return -1;
    int count = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[300], target[512];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n < 0) continue;
        target[n] = 0;
        if (strncmp(target, "anon_inode:[eventfd]", 20) == 0 || strncmp(target, "socket:", 7) == 0) count++;
    }
    closedir(dir);
    return count;
}

int fz_prepare_writer(int fd, int sndbuf_bytes) {
    // Root may exceed wmem_max with SO_SNDBUFFORCE; fall back to what SO_SNDBUF allows.
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf_bytes, sizeof sndbuf_bytes) != 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf_bytes, sizeof sndbuf_bytes);
    return 0;
}

int fz_prepare_reader(int fd, int timeout_ms) {
    struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
    return setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

int fz_shutdown_write(int fd) { return shutdown(fd, SHUT_WR); }
int fz_close(int fd) { return close(fd); }

void fz_dump_fds(void) {
    DIR *dir = opendir("/proc/self/fd");
    if (!dir) return;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[300], target[512];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, target, sizeof target - 1);
        target[n < 0 ? 0 : n] = 0;
        fprintf(stderr, "  fd %s -> %s\n", e->d_name, target);
    }
    closedir(dir);
}

void fz_fail(const char *message) {
    fprintf(stderr, "\n==FUZZ INVARIANT== %s\n", message);
    fflush(stderr);
    abort();
}
