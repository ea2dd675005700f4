import Glibc
import CTapwire

/// An io_uring used as a batch of readv/writev calls: fill several entries, then one
/// `io_uring_enter` submits them all and waits until they are done. On a stream that never
/// blocks (a non-blocking TAP) the kernel runs each one inline during that call, in order,
/// so a batch costs one syscall instead of one per frame.
///
/// Single-threaded: whoever owns it fills, submits and reaps on one thread.
public final class IOUring {
    // The C struct needs a stable address: the kernel's mapped pointers live in it.
    // @usableFromInline so the per-frame calls inline into the datapath's module (a call
    // across modules would retain the ring object around every frame).
    @usableFromInline let ring: UnsafeMutablePointer<tw_uring>
    public let entries: Int
    /// Descriptors registered as fixed files, kept open as long as the ring may use them.
    private let registered: [Descriptor]

    /// Sets up a ring of at least `entries` submission slots that can only readv and writev
    /// `fixedFiles` (fixed file i is `fixedFiles[i]`, which also saves a file lookup per entry);
    /// the ring holds them open until it is closed. Fails with ENOSYS where the kernel has no
    /// io_uring or no ring restrictions (before 5.10), EPERM where it is disabled
    /// (kernel.io_uring_disabled, or a seccomp filter such as a container runtime's default).
    public init(entries: Int, fixedFiles: [Descriptor]) throws(SystemError) {
        let ring = UnsafeMutablePointer<tw_uring>.allocate(capacity: 1)
        let fds = fixedFiles.map(\.raw)
        let result = fds.withUnsafeBufferPointer { tw_uring_open(ring, UInt32(entries), $0.baseAddress, UInt32($0.count)) }
        guard result == 0 else {
            ring.deallocate()
            throw SystemError("io_uring_setup", errno: -result)
        }
        self.ring = ring
        self.entries = Int(ring.pointee.sq_entries)
        registered = fixedFiles
    }

    deinit {
        tw_uring_close(ring)
        ring.deallocate()
    }

    /// Slots free for `prepare` before the next `submitAndWait`.
    @inlinable @inline(__always)
    public var freeSlots: Int { Int(tw_uring_sq_space(ring)) }

    /// Fills the next slot with a writev of `count` iovecs to fixed file `fileIndex`. The
    /// iovecs and the bytes they describe must stay valid until the completion is reaped.
    @inlinable @inline(__always)
    public func prepareWritev(fileIndex: Int32, _ vectors: UnsafePointer<iovec>, count: Int, tag: UInt64) {
        tw_uring_prep_rw(ring, UInt8(TW_IORING_OP_WRITEV), fileIndex, vectors, UInt32(count), tag)
    }

    /// Fills the next slot with a readv; see `prepareWritev`.
    @inlinable @inline(__always)
    public func prepareReadv(fileIndex: Int32, _ vectors: UnsafePointer<iovec>, count: Int, tag: UInt64) {
        tw_uring_prep_rw(ring, UInt8(TW_IORING_OP_READV), fileIndex, vectors, UInt32(count), tag)
    }

    /// Submits everything prepared and waits until `waitFor` completions are ready (a signal
    /// can end the wait early: reap what is there and call again for the rest). Returns the
    /// number submitted or -errno.
    @inlinable @inline(__always)
    public func submitAndWait(_ waitFor: Int) -> Int {
        Int(tw_uring_submit_and_wait(ring, UInt32(waitFor)))
    }

    /// Forgets entries prepared but not submitted (their iovecs are about to go stale).
    public func discardPrepared() {
        ring.pointee.sq_next = ring.pointee.sq_tail.pointee
    }

    /// The oldest completion not yet reaped: its tag and its result (bytes, or -errno).
    @inlinable @inline(__always)
    public func reap() -> (tag: UInt64, result: Int32)? {
        guard let completion = tw_uring_peek(ring) else { return nil }
        let reaped = (completion.pointee.user_data, completion.pointee.res)
        tw_uring_cq_advance(ring)
        return reaped
    }
}
