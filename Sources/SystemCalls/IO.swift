import Glibc
import CTapwire

/// Scatter/gather I/O for the packet path: no allocation, no error objects; results are a
/// byte count or `-errno`.
public enum VectorIO {
    @inline(__always)
    public static func readv(_ fd: Int32, _ vectors: UnsafePointer<iovec>, count: Int) -> Int {
        resultOrNegativeErrno { Glibc.readv(fd, vectors, Int32(count)) }
    }

    @inline(__always)
    public static func writev(_ fd: Int32, _ vectors: UnsafePointer<iovec>, count: Int) -> Int {
        resultOrNegativeErrno { Glibc.writev(fd, vectors, Int32(count)) }
    }

    @inline(__always)
    public static func read(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, count: Int) -> Int {
        resultOrNegativeErrno { Glibc.read(fd, buffer, count) }
    }

    @inline(__always)
    public static func write(_ fd: Int32, _ buffer: UnsafeRawPointer, count: Int) -> Int {
        resultOrNegativeErrno { Glibc.write(fd, buffer, count) }
    }
}

/// Largest iovec count one readv/writev takes.
public let maxIOVectors = Int(UIO_MAXIOV)

/// A shared mapping of a file (guest memory), unmapped when released.
public final class MemoryMapping: @unchecked Sendable {
    // @unchecked Sendable: immutable after init; the bytes are shared with the guest by design.
    public let base: UnsafeMutableRawPointer
    public let length: Int

    public init(descriptor: Int32, length: Int, offset: Int = 0, writable: Bool = true) throws(SystemError) {
        guard length > 0 else { throw SystemError("mmap (zero length)", errno: EINVAL) }
        let prot = PROT_READ | (writable ? PROT_WRITE : 0)
        let pointer = mmap(nil, length, prot, MAP_SHARED, descriptor, off_t(offset))
        guard let pointer, pointer != MAP_FAILED else { throw SystemError("mmap", errno: Glibc.errno) }
        base = pointer
        self.length = length
    }

    /// An anonymous private mapping (test helpers and scratch space).
    public init(anonymousLength length: Int) throws(SystemError) {
        let pointer = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let pointer, pointer != MAP_FAILED else { throw SystemError("mmap", errno: Glibc.errno) }
        base = pointer
        self.length = length
    }

    deinit {
        munmap(base, length)
    }
}

public enum MemFD {
    /// An anonymous file of `size` bytes, as a frontend uses for guest RAM. `sealed`: its size
    /// is then sealed (F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_SEAL), as QEMU seals its dirty log.
    public static func make(name: String, size: Int, sealed: Bool = false) throws(SystemError) -> Descriptor {
        let flags = UInt32(TW_MFD_CLOEXEC) | (sealed ? UInt32(TW_MFD_ALLOW_SEALING) : 0)
        let fd = Descriptor(taking: try retryingInterrupts("memfd_create") { tw_memfd_create(name, flags) })
        _ = try retryingInterrupts("ftruncate") { ftruncate(fd.raw, off_t(size)) }
        if sealed {
            _ = try retryingInterrupts("fcntl(F_ADD_SEALS)") { tw_fcntl_add_seals(fd.raw, Int32(TW_F_SEAL_SHRINK | TW_F_SEAL_GROW | TW_F_SEAL_SEAL)) }
        }
        return fd
    }

    /// Whether the file behind `fd` can never shrink (a memfd sealed with F_SEAL_SHRINK): only
    /// then can a mapping of it not fault when its owner truncates it.
    public static func cannotShrink(_ fd: Int32) -> Bool {
        let seals = tw_fcntl_get_seals(fd)
        return seals >= 0 && seals & Int32(TW_F_SEAL_SHRINK) != 0
    }
}

/// The scheduler's treatment of tapwire's threads.
public enum Scheduler {
    /// Asks for a time slice of `microseconds` for the calling thread and the threads it
    /// creates after (they inherit it). Under EEVDF (Linux 6.12+) a task with a shorter slice
    /// gets an earlier deadline, so when it wakes it preempts a thread running a long slice,
    /// such as a TCG vCPU, instead of waiting for it; older kernels ignore the request. The
    /// kernel clamps it to 0.1–100 ms.
    public static func requestSlice(microseconds: Int) throws(SystemError) {
        _ = try retryingInterrupts("sched_setattr") { tw_sched_set_slice(UInt64(microseconds) * 1000) }
    }
}
