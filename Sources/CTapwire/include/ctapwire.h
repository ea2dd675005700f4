// Kernel ABI that Swift cannot import directly: ioctl wrappers (ioctl is variadic),
// SCM_RIGHTS/CMSG handling, headers Glibc's Swift module leaves out, vhost-user and
// virtio wire structs with static size checks, and the memory-ordering primitives the
// virtqueue code needs on guest-shared memory.
#ifndef CTAPWIRE_H
#define CTAPWIRE_H

// No _GNU_SOURCE here: it would make these headers disagree with Swift's Glibc module.
// GNU-only calls (memfd_create, accept4, ...) are wrapped in shim.c instead.
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>

// ---- TAP --------------------------------------------------------------------------

enum {
    TW_IFF_TAP = 0x0002,
    TW_IFF_NO_PI = 0x1000,
    TW_IFF_VNET_HDR = 0x4000,
    TW_IFF_MULTI_QUEUE = 0x0100,
    TW_IFF_ATTACH_QUEUE = 0x0200,
    TW_IFF_DETACH_QUEUE = 0x0400,
};

enum {
    TW_TUN_F_CSUM = 0x01,
    TW_TUN_F_TSO4 = 0x02,
    TW_TUN_F_TSO6 = 0x04,
    TW_TUN_F_TSO_ECN = 0x08,
    TW_TUN_F_UFO = 0x10,
    TW_TUN_F_USO4 = 0x20,
    TW_TUN_F_USO6 = 0x40,
};

/// TUNSETIFF: creates or attaches to the interface `name` (in/out, IFNAMSIZ bytes).
int tw_tun_set_iff(int fd, char *name, int flags);
int tw_tun_set_offload(int fd, unsigned int flags);
int tw_tun_set_vnet_hdr_size(int fd, int size);
int tw_tun_set_queue(int fd, int flags);
/// TUNSETTXFILTER: the kernel then queues for this TAP's reader only unicast for `mac` (6
/// bytes) and all multicast and broadcast; NULL lets everything through again.
int tw_tun_set_tx_filter(int fd, const unsigned char *mac);
/// sched_setattr(2) on the calling thread: SCHED_OTHER at its current nice value, with a
/// custom time slice of `nanoseconds` (EEVDF, Linux 6.12+). 0 or -1 with errno.
int tw_sched_set_slice(unsigned long long nanoseconds);
/// SIOCGIFFLAGS/SIOCSIFFLAGS on an AF_INET datagram socket: brings `name` up.
int tw_if_set_up(const char *name, int up);
/// SIOCGIFMTU; -1 on error.
int tw_if_get_mtu(const char *name);
int tw_if_set_mtu(const char *name, int mtu);
unsigned int tw_if_nametoindex(const char *name);
/// The ioctl requests a TAP that is set up still issues while serving (TUNSETQUEUE,
/// TUNSETOFFLOAD, TUNSETVNETHDRSZ, TUNSETTXFILTER, SIOCGIFMTU), for a seccomp allow-list. Returns how many
/// there are; writes at most `capacity` of them.
unsigned tw_tap_serving_ioctls(unsigned long *requests, unsigned capacity);

// ---- AF_PACKET, for tests and tools that inject or capture frames on an interface ----

/// A raw packet socket bound to interface `ifindex` (all protocols); with `vnet_hdr` the
/// socket exchanges a virtio_net_hdr before each frame (PACKET_VNET_HDR), so GSO frames can be
/// sent whole.
int tw_packet_socket(int ifindex, int vnet_hdr);
ssize_t tw_packet_send(int fd, int ifindex, const void *frame, size_t len);

// ---- unix sockets with fd passing -------------------------------------------------

enum { TW_MAX_PASSED_FDS = 8 };

/// sendmsg of `len` bytes plus up to TW_MAX_PASSED_FDS descriptors as SCM_RIGHTS.
ssize_t tw_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds);

/// recvmsg of up to `len` bytes and any SCM_RIGHTS descriptors. Received descriptors are
/// stored in `fds` (room for TW_MAX_PASSED_FDS) and counted in `*nfds`. If the kernel had
/// to drop descriptors (more than fit), every descriptor that did arrive is closed,
/// `*nfds` is 0 and `*truncated` is 1. Descriptors arrive with O_CLOEXEC.
ssize_t tw_recv_with_fds(int sock, void *buf, size_t len, int *fds, int *nfds, int *truncated);

/// Fills a sockaddr_un; returns its length or -1 when the path does not fit.
int tw_sockaddr_un(struct sockaddr_un *addr, const char *path);

// ---- small wrappers for variadic or macro-only calls ------------------------------

int tw_fcntl_getfl(int fd);
int tw_fcntl_setfl(int fd, int flags);
int tw_memfd_create(const char *name, unsigned int flags);
int tw_accept_cloexec(int listener);
/// MFD_CLOEXEC, MFD_ALLOW_SEALING
enum { TW_MFD_CLOEXEC = 1, TW_MFD_ALLOW_SEALING = 2 };
/// F_GET_SEALS / F_ADD_SEALS on a memfd; -1 with errno on failure.
int tw_fcntl_get_seals(int fd);
int tw_fcntl_add_seals(int fd, int seals);
enum { TW_F_SEAL_SEAL = 0x0001, TW_F_SEAL_SHRINK = 0x0002, TW_F_SEAL_GROW = 0x0004 };

// ---- memory ordering on guest-shared memory ---------------------------------------
// The guest writes rings concurrently; these loads/stores are single, untorn accesses
// with the ordering the virtio spec requires.

static inline uint16_t tw_load_acquire_u16(const void *p) {
    return __atomic_load_n((const uint16_t *)p, __ATOMIC_ACQUIRE);
}
static inline uint16_t tw_load_relaxed_u16(const void *p) {
    return __atomic_load_n((const uint16_t *)p, __ATOMIC_RELAXED);
}
static inline void tw_store_release_u16(void *p, uint16_t v) {
    __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELEASE);
}
static inline void tw_store_relaxed_u16(void *p, uint16_t v) {
    __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELAXED);
}
static inline void tw_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
// The dirty-page log is shared with the frontend and every queue thread: bits are set with an
// atomic OR, never a read-modify-write that could drop another writer's bit.
static inline void tw_atomic_or_u8(void *p, uint8_t bits) { __atomic_fetch_or((uint8_t *)p, bits, __ATOMIC_RELAXED); }
static inline void tw_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
static inline void tw_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }

// ---- io_uring, for batching TAP writes ----------------------------------------------
// Only the part of the ABI the packet path uses, mirrored here so Swift can fill entries
// inline (linux/io_uring.h does not import cleanly next to Glibc); shim.c checks the
// layout against the kernel's header.

/// One submission entry (struct io_uring_sqe, 64 bytes).
typedef struct {
    uint8_t opcode;
    uint8_t flags;
    uint16_t ioprio;
    int32_t fd;
    uint64_t off;
    uint64_t addr;
    uint32_t len;
    uint32_t rw_flags;
    uint64_t user_data;
    uint64_t reserved[3];
} tw_uring_sqe;

/// One completion entry (struct io_uring_cqe without the big-CQE tail, 16 bytes).
typedef struct {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
} tw_uring_cqe;

enum {
    TW_IORING_OP_READV = 1,
    TW_IORING_OP_WRITEV = 2,
    TW_IOSQE_FIXED_FILE = 1,
    TW_RWF_NOWAIT = 0x08,
};

/// A mapped ring. `sq_next` is the tail we fill before submitting (the kernel sees it at
/// submit); head pointers are the kernel's. Rings are single-threaded: one owner thread.
typedef struct {
    int fd;
    unsigned sq_entries;
    unsigned cq_entries;
    unsigned sq_mask;
    unsigned cq_mask;
    unsigned sq_next;
    unsigned *sq_head;
    unsigned *sq_tail;
    unsigned *cq_head;
    unsigned *cq_tail;
    tw_uring_sqe *sqes;
    tw_uring_cqe *cqes;
    void *ring_map;
    size_t ring_map_len;
    void *cq_map;
    size_t cq_map_len;
    size_t sqes_len;
} tw_uring;

/// io_uring_setup + the mappings, for a ring that can only readv/writev its fixed files:
/// `fds[i]` becomes fixed file i, and before the ring is enabled it is restricted
/// (IORING_REGISTER_RESTRICTIONS) to READV and WRITEV with IOSQE_FIXED_FILE required and no
/// further io_uring_register operation, since io_uring operations bypass seccomp.
/// 0 or -errno (ENOSYS: no io_uring, or one without restrictions (before 5.10); EPERM: disabled
/// by kernel.io_uring_disabled or a seccomp filter). On failure nothing is left open.
int tw_uring_open(tw_uring *ring, unsigned entries, const int *fds, unsigned count);
void tw_uring_close(tw_uring *ring);
/// Publishes the entries filled since the last call and waits for `wait_nr` completions.
/// Returns the number submitted or -errno.
int tw_uring_submit_and_wait(tw_uring *ring, unsigned wait_nr);

/// Entries free for filling now.
static inline unsigned tw_uring_sq_space(const tw_uring *ring) {
    return ring->sq_entries - (ring->sq_next - __atomic_load_n(ring->sq_head, __ATOMIC_ACQUIRE));
}

/// Fills the next submission entry with a readv or writev of `count` iovecs on fixed file
/// `file_index`, with RWF_NOWAIT: without it io_uring would not return EAGAIN from an empty
/// TAP (O_NONBLOCK or not) but wait for a frame, and so would the submitter. The caller
/// checked tw_uring_sq_space first.
static inline void tw_uring_prep_rw(tw_uring *ring, uint8_t opcode, int file_index, const struct iovec *iov,
                                    unsigned count, uint64_t user_data) {
    tw_uring_sqe *sqe = &ring->sqes[ring->sq_next & ring->sq_mask];
    sqe->opcode = opcode;
    sqe->flags = TW_IOSQE_FIXED_FILE;
    sqe->ioprio = 0;
    sqe->fd = file_index;
    sqe->off = (uint64_t)-1; // current position: required for a stream such as the TAP
    sqe->addr = (uint64_t)(uintptr_t)iov;
    sqe->len = count;
    sqe->rw_flags = TW_RWF_NOWAIT;
    sqe->user_data = user_data;
    sqe->reserved[0] = sqe->reserved[1] = sqe->reserved[2] = 0;
    ring->sq_next++;
}

/// The oldest unread completion, or NULL; `tw_uring_cq_advance` releases it.
static inline const tw_uring_cqe *tw_uring_peek(const tw_uring *ring) {
    unsigned head = *ring->cq_head;
    if (head == __atomic_load_n(ring->cq_tail, __ATOMIC_ACQUIRE)) return NULL;
    return &ring->cqes[head & ring->cq_mask];
}
static inline void tw_uring_cq_advance(tw_uring *ring) {
    __atomic_store_n(ring->cq_head, *ring->cq_head + 1, __ATOMIC_RELEASE);
}

// ---- wire structs (little-endian host, natural alignment, sizes checked) ----------

/// vhost-user message header.
typedef struct {
    uint32_t request;
    uint32_t flags;
    uint32_t size;
} tw_vu_header;

/// One memory region of SET_MEM_TABLE / ADD_MEM_REG / REM_MEM_REG.
typedef struct {
    uint64_t guest_phys_addr;
    uint64_t memory_size;
    uint64_t userspace_addr;
    uint64_t mmap_offset;
} tw_vu_region;

typedef struct {
    uint32_t index;
    uint32_t num;
} tw_vu_vring_state;

typedef struct {
    uint32_t index;
    uint32_t flags;
    uint64_t descriptor;
    uint64_t used;
    uint64_t available;
    uint64_t log;
} tw_vu_vring_addr;

typedef struct {
    uint32_t offset;
    uint32_t size;
    uint32_t flags;
} tw_vu_config_header;

/// Split-ring descriptor as the guest writes it.
typedef struct {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
} tw_vring_desc;

typedef struct {
    uint32_t id;
    uint32_t len;
} tw_vring_used_elem;

/// Packed-ring descriptor (VIRTIO_F_RING_PACKED), as the driver makes it available and the
/// device writes it back used.
typedef struct {
    uint64_t addr;
    uint32_t len;
    uint16_t id;
    uint16_t flags;
} tw_vring_packed_desc;

/// Packed-ring event suppression area (the driver's and the device's have this one layout).
typedef struct {
    uint16_t off_wrap;
    uint16_t flags;
} tw_vring_packed_event;

/// virtio-net header with num_buffers (VERSION_1 or MRG_RXBUF layout, 12 bytes).
typedef struct {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
    uint16_t num_buffers;
} tw_virtio_net_hdr;

_Static_assert(sizeof(tw_vu_header) == 12, "vhost-user header is 12 bytes");
_Static_assert(sizeof(tw_vu_region) == 32, "memory region is 32 bytes");
_Static_assert(sizeof(tw_vu_vring_state) == 8, "vring state is 8 bytes");
_Static_assert(sizeof(tw_vu_vring_addr) == 40, "vring addr is 40 bytes");
_Static_assert(sizeof(tw_vu_config_header) == 12, "config header is 12 bytes");
_Static_assert(sizeof(tw_vring_desc) == 16, "descriptor is 16 bytes");
_Static_assert(sizeof(tw_vring_used_elem) == 8, "used element is 8 bytes");
_Static_assert(sizeof(tw_vring_packed_desc) == 16, "packed descriptor is 16 bytes");
_Static_assert(offsetof(tw_vring_packed_desc, id) == 12, "packed descriptor id at 12");
_Static_assert(offsetof(tw_vring_packed_desc, flags) == 14, "packed descriptor flags at 14");
_Static_assert(sizeof(tw_vring_packed_event) == 4, "packed event suppression area is 4 bytes");
_Static_assert(sizeof(tw_virtio_net_hdr) == 12, "virtio-net header is 12 bytes");
_Static_assert(offsetof(tw_virtio_net_hdr, num_buffers) == 10, "num_buffers at 10");
_Static_assert(offsetof(tw_vu_vring_addr, descriptor) == 8, "descriptor address at 8");

#endif
