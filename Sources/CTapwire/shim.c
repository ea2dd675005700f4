#define _GNU_SOURCE
#include "ctapwire.h"
#include <fcntl.h>
#include <unistd.h>
#include <errno.h>
#include <sys/mman.h>
#include <string.h>
#include <sys/ioctl.h>
#include <net/if.h>
#include <linux/if_tun.h>
#include <linux/if_ether.h>
#include <linux/sockios.h>
#include <linux/if_packet.h>
#include <linux/if_ether.h>
#include <arpa/inet.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <linux/sched.h>
#include <linux/sched/types.h>

_Static_assert(TW_IFF_TAP == IFF_TAP && TW_IFF_NO_PI == IFF_NO_PI && TW_IFF_VNET_HDR == IFF_VNET_HDR,
               "TAP flags match the kernel's");
_Static_assert(TW_IFF_MULTI_QUEUE == IFF_MULTI_QUEUE && TW_IFF_ATTACH_QUEUE == IFF_ATTACH_QUEUE,
               "multiqueue flags match the kernel's");
_Static_assert(TW_TUN_F_CSUM == TUN_F_CSUM && TW_TUN_F_TSO4 == TUN_F_TSO4 && TW_TUN_F_TSO6 == TUN_F_TSO6 &&
               TW_TUN_F_TSO_ECN == TUN_F_TSO_ECN && TW_TUN_F_UFO == TUN_F_UFO, "offload flags match");

int tw_tun_set_iff(int fd, char *name, int flags) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    ifr.ifr_flags = (short)flags;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) return -1;
    memcpy(name, ifr.ifr_name, IFNAMSIZ);
    return 0;
}

int tw_tun_set_offload(int fd, unsigned int flags) { return ioctl(fd, TUNSETOFFLOAD, (unsigned long)flags); }
int tw_tun_set_vnet_hdr_size(int fd, int size) { return ioctl(fd, TUNSETVNETHDRSZ, &size); }

int tw_tun_set_tx_filter(int fd, const unsigned char *mac) {
    // struct tun_filter with room for one address after it.
    unsigned char buffer[sizeof(struct tun_filter) + ETH_ALEN];
    struct tun_filter *filter = (struct tun_filter *)buffer;
    memset(buffer, 0, sizeof buffer);
    if (mac) {
        filter->flags = TUN_FLT_ALLMULTI;
        filter->count = 1;
        memcpy(filter->addr[0], mac, ETH_ALEN);
    }
    return ioctl(fd, TUNSETTXFILTER, buffer);
}

int tw_sched_set_slice(unsigned long long nanoseconds) {
    struct sched_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.size = sizeof attr;
    attr.sched_policy = SCHED_NORMAL;
    // sched_setattr sets the nice value too: keep the one the thread has.
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, 0);
    if (nice == -1 && errno != 0) return -1;
    attr.sched_nice = nice;
    attr.sched_runtime = nanoseconds;
    return (int)syscall(SYS_sched_setattr, 0, &attr, 0);
}

int tw_tun_set_queue(int fd, int flags) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = (short)flags;
    return ioctl(fd, TUNSETQUEUE, &ifr);
}

unsigned tw_tap_serving_ioctls(unsigned long *requests, unsigned capacity) {
    const unsigned long all[] = {TUNSETQUEUE, TUNSETOFFLOAD, TUNSETVNETHDRSZ, TUNSETTXFILTER, SIOCGIFMTU};
    unsigned count = sizeof all / sizeof all[0];
    for (unsigned i = 0; i < count && i < capacity; i++) requests[i] = all[i];
    return count;
}

static int with_ifreq(const char *name, unsigned long request, struct ifreq *ifr) {
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) return -1;
    strncpy(ifr->ifr_name, name, IFNAMSIZ - 1);
    int rc = ioctl(sock, request, ifr);
    int saved = errno;
    close(sock);
    errno = saved;
    return rc;
}

int tw_if_set_up(const char *name, int up) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    if (with_ifreq(name, SIOCGIFFLAGS, &ifr) < 0) return -1;
    if (up) ifr.ifr_flags |= IFF_UP; else ifr.ifr_flags &= ~IFF_UP;
    return with_ifreq(name, SIOCSIFFLAGS, &ifr);
}

int tw_if_get_mtu(const char *name) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    if (with_ifreq(name, SIOCGIFMTU, &ifr) < 0) return -1;
    return ifr.ifr_mtu;
}

int tw_if_set_mtu(const char *name, int mtu) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_mtu = mtu;
    return with_ifreq(name, SIOCSIFMTU, &ifr);
}

unsigned int tw_if_nametoindex(const char *name) { return if_nametoindex(name); }

ssize_t tw_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    if (nfds < 0 || nfds > TW_MAX_PASSED_FDS) { errno = EINVAL; return -1; }
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    union { char buf[CMSG_SPACE(sizeof(int) * TW_MAX_PASSED_FDS)]; struct cmsghdr align; } control;
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
    do { n = sendmsg(sock, &msg, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
    return n;
}

ssize_t tw_recv_with_fds(int sock, void *buf, size_t len, int *fds, int *nfds, int *truncated) {
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    union { char buf[CMSG_SPACE(sizeof(int) * TW_MAX_PASSED_FDS)]; struct cmsghdr align; } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    *nfds = 0;
    *truncated = 0;
    ssize_t n;
    do { n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC); } while (n < 0 && errno == EINTR);
    if (n < 0) return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *data = (int *)CMSG_DATA(c);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, data + i, sizeof fd);
            if (*nfds < TW_MAX_PASSED_FDS) fds[(*nfds)++] = fd; else { close(fd); *truncated = 1; }
        }
    }
    if (msg.msg_flags & MSG_CTRUNC) *truncated = 1;
    if (*truncated) {
        for (int i = 0; i < *nfds; i++) close(fds[i]);
        *nfds = 0;
    }
    return n;
}

int tw_sockaddr_un(struct sockaddr_un *addr, const char *path) {
    size_t len = strlen(path);
    memset(addr, 0, sizeof *addr);
    if (len == 0 || len >= sizeof addr->sun_path) { errno = ENAMETOOLONG; return -1; }
    addr->sun_family = AF_UNIX;
    memcpy(addr->sun_path, path, len);
    return (int)(offsetof(struct sockaddr_un, sun_path) + len + 1);
}

int tw_fcntl_getfl(int fd) { return fcntl(fd, F_GETFL); }
int tw_fcntl_setfl(int fd, int flags) { return fcntl(fd, F_SETFL, flags); }
int tw_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }
_Static_assert(TW_MFD_ALLOW_SEALING == MFD_ALLOW_SEALING && TW_F_SEAL_SEAL == F_SEAL_SEAL && TW_F_SEAL_SHRINK == F_SEAL_SHRINK &&
               TW_F_SEAL_GROW == F_SEAL_GROW, "memfd seal flags match the kernel's");
int tw_fcntl_get_seals(int fd) { return fcntl(fd, F_GET_SEALS); }
int tw_fcntl_add_seals(int fd, int seals) { return fcntl(fd, F_ADD_SEALS, seals); }
int tw_accept_cloexec(int listener) { return accept4(listener, NULL, NULL, SOCK_CLOEXEC); }

int tw_packet_socket(int ifindex, int vnet_hdr) {
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, htons(ETH_P_ALL));
    if (fd < 0) return -1;
    if (vnet_hdr) {
        int one = 1;
        if (setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one) < 0) { int e = errno; close(fd); errno = e; return -1; }
    }
    struct sockaddr_ll addr;
    memset(&addr, 0, sizeof addr);
    addr.sll_family = AF_PACKET;
    addr.sll_protocol = htons(ETH_P_ALL);
    addr.sll_ifindex = ifindex;
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { int e = errno; close(fd); errno = e; return -1; }
    return fd;
}

ssize_t tw_packet_send(int fd, int ifindex, const void *frame, size_t len) {
    struct sockaddr_ll addr;
    memset(&addr, 0, sizeof addr);
    addr.sll_family = AF_PACKET;
    addr.sll_ifindex = ifindex;
    addr.sll_halen = 6;
    return sendto(fd, frame, len, 0, (struct sockaddr *)&addr, sizeof addr);
}

// ---- io_uring ----------------------------------------------------------------------

#include <linux/io_uring.h>
#include <sys/syscall.h>

_Static_assert(sizeof(tw_uring_sqe) == sizeof(struct io_uring_sqe), "sqe mirror is the kernel's size");
_Static_assert(offsetof(tw_uring_sqe, fd) == offsetof(struct io_uring_sqe, fd), "sqe fd");
_Static_assert(offsetof(tw_uring_sqe, off) == offsetof(struct io_uring_sqe, off), "sqe off");
_Static_assert(offsetof(tw_uring_sqe, addr) == offsetof(struct io_uring_sqe, addr), "sqe addr");
_Static_assert(offsetof(tw_uring_sqe, len) == offsetof(struct io_uring_sqe, len), "sqe len");
_Static_assert(offsetof(tw_uring_sqe, rw_flags) == offsetof(struct io_uring_sqe, rw_flags), "sqe rw_flags");
_Static_assert(offsetof(tw_uring_sqe, user_data) == offsetof(struct io_uring_sqe, user_data), "sqe user_data");
_Static_assert(sizeof(tw_uring_cqe) == sizeof(struct io_uring_cqe), "cqe mirror is the kernel's size");
_Static_assert(offsetof(tw_uring_cqe, res) == offsetof(struct io_uring_cqe, res), "cqe res");
_Static_assert(TW_IORING_OP_READV == IORING_OP_READV && TW_IORING_OP_WRITEV == IORING_OP_WRITEV, "opcodes");
_Static_assert(TW_IOSQE_FIXED_FILE == IOSQE_FIXED_FILE, "fixed-file flag");
_Static_assert(TW_RWF_NOWAIT == RWF_NOWAIT, "RWF_NOWAIT");

/// Fixed files, then the restrictions, then enabling: the order the kernel demands for a ring
/// set up with IORING_SETUP_R_DISABLED. 0 or -errno.
static int tw_uring_restrict(int fd, const int *fds, unsigned count) {
    if (syscall(__NR_io_uring_register, fd, IORING_REGISTER_FILES, fds, count) < 0) return -errno;
    struct io_uring_restriction allowed[4];
    memset(allowed, 0, sizeof allowed);
    allowed[0].opcode = IORING_RESTRICTION_SQE_OP;
    allowed[0].sqe_op = IORING_OP_READV;
    allowed[1].opcode = IORING_RESTRICTION_SQE_OP;
    allowed[1].sqe_op = IORING_OP_WRITEV;
    allowed[2].opcode = IORING_RESTRICTION_SQE_FLAGS_ALLOWED;
    allowed[2].sqe_flags = IOSQE_FIXED_FILE;
    allowed[3].opcode = IORING_RESTRICTION_SQE_FLAGS_REQUIRED;
    allowed[3].sqe_flags = IOSQE_FIXED_FILE;
    unsigned n = sizeof allowed / sizeof allowed[0];
    if (syscall(__NR_io_uring_register, fd, IORING_REGISTER_RESTRICTIONS, allowed, n) < 0) {
        return errno == EINVAL ? -ENOSYS : -errno;
    }
    if (syscall(__NR_io_uring_register, fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0) < 0) return -errno;
    return 0;
}

int tw_uring_open(tw_uring *ring, unsigned entries, const int *fds, unsigned count) {
    memset(ring, 0, sizeof *ring);
    ring->fd = -1;
    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    params.flags = IORING_SETUP_R_DISABLED;
    int fd = (int)syscall(__NR_io_uring_setup, entries, &params);
    // A kernel without R_DISABLED (before 5.10) rejects the flag: no restricted ring there.
    if (fd < 0) return errno == EINVAL ? -ENOSYS : -errno;
    int restricted = tw_uring_restrict(fd, fds, count);
    if (restricted < 0) {
        close(fd);
        return restricted;
    }
    // Only rings whose completion queue shares the submission mapping (5.4+); older kernels
    // take the writev path.
    if (!(params.features & IORING_FEAT_SINGLE_MMAP)) {
        close(fd);
        return -ENOSYS;
    }
    size_t sq_len = params.sq_off.array + params.sq_entries * sizeof(unsigned);
    size_t cq_len = params.cq_off.cqes + params.cq_entries * sizeof(struct io_uring_cqe);
    size_t ring_len = sq_len > cq_len ? sq_len : cq_len;
    void *map = mmap(NULL, ring_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    if (map == MAP_FAILED) {
        int e = errno;
        close(fd);
        return -e;
    }
    size_t sqes_len = params.sq_entries * sizeof(struct io_uring_sqe);
    void *sqes = mmap(NULL, sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (sqes == MAP_FAILED) {
        int e = errno;
        munmap(map, ring_len);
        close(fd);
        return -e;
    }
    char *base = map;
    ring->fd = fd;
    ring->sq_entries = params.sq_entries;
    ring->cq_entries = params.cq_entries;
    ring->sq_mask = *(unsigned *)(base + params.sq_off.ring_mask);
    ring->cq_mask = *(unsigned *)(base + params.cq_off.ring_mask);
    ring->sq_head = (unsigned *)(base + params.sq_off.head);
    ring->sq_tail = (unsigned *)(base + params.sq_off.tail);
    ring->cq_head = (unsigned *)(base + params.cq_off.head);
    ring->cq_tail = (unsigned *)(base + params.cq_off.tail);
    ring->cqes = (tw_uring_cqe *)(base + params.cq_off.cqes);
    ring->sqes = sqes;
    ring->ring_map = map;
    ring->ring_map_len = ring_len;
    ring->sqes_len = sqes_len;
    ring->sq_next = *ring->sq_tail;
    // Slot i of the indirection array always names entry i: entries are used in order.
    unsigned *array = (unsigned *)(base + params.sq_off.array);
    for (unsigned i = 0; i < params.sq_entries; i++) array[i] = i;
    return 0;
}

void tw_uring_close(tw_uring *ring) {
    if (ring->fd < 0) return;
    munmap(ring->sqes, ring->sqes_len);
    munmap(ring->ring_map, ring->ring_map_len);
    close(ring->fd);
    ring->fd = -1;
}

int tw_uring_submit_and_wait(tw_uring *ring, unsigned wait_nr) {
    unsigned to_submit = ring->sq_next - *ring->sq_tail;
    __atomic_store_n(ring->sq_tail, ring->sq_next, __ATOMIC_RELEASE);
    for (;;) {
        long n = syscall(__NR_io_uring_enter, ring->fd, to_submit, wait_nr, wait_nr ? IORING_ENTER_GETEVENTS : 0, NULL, 0);
        if (n >= 0) return (int)n;
        // Interrupted while waiting: what was submitted stays submitted; wait again for the rest.
        if (errno != EINTR) return -errno;
        to_submit = 0;
    }
}
